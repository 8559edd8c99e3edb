"""Building backends from the config, and the pool that owns them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from router.backends._base import PooledBackend
from router.backends._http import HttpBackend
from router.backends._openai import OpenAIBackend
from router.backends._transport import TransportRegistry
from router.core.errors import BackendConnectionError, BackendError
from router.core.types import BackendKind, ImplementationSpec, SkillSpec
from router.runtime.ports import Backend, BackendFactory

logger = logging.getLogger("router.backends")

_KINDS: dict[BackendKind, type[PooledBackend]] = {BackendKind.OPENAI: OpenAIBackend, BackendKind.HTTP: HttpBackend}


def build_backend(implementation: ImplementationSpec, *, batch: bool = False, **options: Any) -> Backend:
    """The backend for ``implementation.backend`` ("openai" or "http").
    ``options`` go to ``PooledBackend`` (warm_path, warm_connections,
    warm_timeout_s, keepalive_expiry, trust_env, transports)."""
    cls = _KINDS[implementation.backend]
    return cls(implementation, batch=batch, **options)


Key = tuple[str, str]  # (skill name, implementation name)


class BackendPool:
    """One warm backend per (skill, implementation), built at start-up,
    warmed before the sidecar reports healthy, closed at shutdown."""

    def __init__(self, backends: Mapping[Key, Backend] | None = None, *,
                 transports: TransportRegistry | None = None) -> None:
        self._backends: dict[Key, Backend] = dict(backends or {})
        # The per-origin connection pools its backends share; a later set of
        # backends (a config reload) joins them with ``transports=``.
        self.transports = transports if transports is not None else TransportRegistry()

    @classmethod
    def from_skills(
        cls,
        skills: Iterable[SkillSpec],
        factory: BackendFactory | None = None,
        *,
        batch: bool | Callable[[SkillSpec, ImplementationSpec], bool] = False,
        max_response_bytes: Callable[[SkillSpec, ImplementationSpec], int] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> BackendPool:
        """A backend for every implementation of every skill. Without a
        ``factory``, ``build_backend`` is used with ``batch`` (a flag, or a
        function of the skill and implementation), ``max_response_bytes``
        (a function of the same; None: the default) and ``redact`` (applied
        to backend text in errors); the implementations
        that call one origin (scheme, host, port) share its connection pool."""
        pool = cls()
        transports = pool.transports
        for skill in skills:
            for impl in skill.implementations:
                if factory is not None:
                    backend = factory(impl)
                else:
                    wants_batch = batch(skill, impl) if callable(batch) else batch
                    options: dict[str, Any] = {"redact": redact, "transports": transports}
                    if max_response_bytes is not None:
                        options["max_response_bytes"] = max_response_bytes(skill, impl)
                    backend = build_backend(impl, batch=wants_batch, **options)
                pool.add(skill.name, backend)
        return pool

    def add(self, skill: str, backend: Backend) -> None:
        key = (skill, backend.implementation.name)
        if key in self._backends:
            raise ValueError(f"skill {skill!r} already has a backend for implementation {key[1]!r}")
        self._backends[key] = backend

    def get(self, skill: str, implementation: str) -> Backend:
        try:
            return self._backends[(skill, implementation)]
        except KeyError:
            raise KeyError(f"no backend for skill {skill!r}, implementation {implementation!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._backends

    def __len__(self) -> int:
        return len(self._backends)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._backends)

    def items(self) -> Iterable[tuple[Key, Backend]]:
        return self._backends.items()

    async def warm_all(self, *, concurrency: int = 16, strict: bool = True) -> dict[Key, BackendError]:
        """Warm every backend, at most ``concurrency`` at once. Backends
        that share a pool, warm path and credentials (``warm_key``) are
        warmed once, and share the outcome. Returns the failures; with
        ``strict`` (the default) raises one ``BackendConnectionError`` naming
        every backend that failed."""
        limit = asyncio.Semaphore(max(1, concurrency))
        failures: dict[Key, BackendError] = {}
        groups: dict[object, list[tuple[Key, Backend]]] = {}
        for key, backend in self._backends.items():
            shared = getattr(backend, "warm_key", None)
            groups.setdefault(key if shared is None else shared, []).append((key, backend))

        async def warm(members: list[tuple[Key, Backend]]) -> None:
            async with limit:
                try:
                    await members[0][1].warm()
                except BackendError as exc:
                    for key, _ in members:
                        failures[key] = exc

        async with asyncio.TaskGroup() as group:
            for members in groups.values():
                group.create_task(warm(members))
        for members in groups.values():  # one line per warm request that failed
            exc = failures.get(members[0][0])
            if exc is not None:
                names = ", ".join(f"{s}/{i}" for (s, i), _ in members[:3])
                more = f" (and {len(members) - 3} more on the same pool)" if len(members) > 3 else ""
                logger.warning("backend %s%s did not warm: %s", names, more, exc)
        if failures and strict:
            detail = "; ".join(f"{skill}/{impl}: {exc}" for (skill, impl), exc in failures.items())
            raise BackendConnectionError(
                f"{len(failures)} of {len(self._backends)} backend(s) failed to warm: {detail}"
            )
        return failures

    async def aclose(self) -> None:
        """Close every backend's client (idempotent; one failing close does
        not keep the others open)."""
        backends = list(self._backends.values())
        results = await asyncio.gather(*(b.aclose() for b in backends), return_exceptions=True)
        for backend, result in zip(backends, results):
            if isinstance(result, Exception):
                logger.warning("closing %r failed: %s", backend, result)

    def __repr__(self) -> str:
        return f"<BackendPool {len(self._backends)} backend(s)>"
