"""The routing core: pure decisions, standard library only. Time and
randomness are passed in; nothing here does I/O or touches an event loop."""
