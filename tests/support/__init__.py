"""Test support: real servers tests talk to (an OTLP receiver, ...)."""
