"""Shared state in Redis (or Valkey): the runtime's ``SharedState`` port
(``router.runtime.shared``) held across every replica and worker process."""

from .redis_state import RedisState, RedisStateSettings

__all__ = ["RedisState", "RedisStateSettings"]
