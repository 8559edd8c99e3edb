"""Shared state in Redis (or Valkey): the runtime's ``SharedState`` port
(``router.runtime.shared``) held across every replica and worker process."""

from .redis_cache import RedisCache
from .redis_state import RedisState, RedisStateSettings

__all__ = ["RedisCache", "RedisState", "RedisStateSettings"]
