"""The project's error hierarchy. Third-party exceptions (httpx, grpc,
psycopg) are wrapped at the edges into these; one interceptor in
``router.service`` maps them to gRPC status codes.

::

    RouterError
    ├── InvalidArgument          bad request field      → INVALID_ARGUMENT
    │   ├── UnknownSkill         a skill name not configured → NOT_FOUND
    │   ├── UnknownQuery         Feedback for a query id not remembered (unknown or expired) → NOT_FOUND
    │   └── AlreadyRated         a second Feedback for the same query (and skill) → ALREADY_EXISTS
    ├── Overloaded               every candidate saturated → RESOURCE_EXHAUSTED (+ RetryInfo)
    ├── AllSkillsFailed          every chosen skill failed → UNAVAILABLE
    ├── NoSkillActivated         no skill's activation rule matches → FAILED_PRECONDITION
    ├── ShuttingDown             the sidecar is draining  → UNAVAILABLE
    ├── DeadlineExceeded         the caller's deadline passed → DEADLINE_EXCEEDED
    ├── ConfigError              bad config file (start-up, check-config)
    ├── StartupError             the config is valid but serving cannot start (key named)
    └── BackendError             one backend call failed (kept in the skill's result)
        ├── BackendTimeout       the implementation's own timeout passed
        ├── CallerDeadline       the caller's deadline cut the call short (not the backend's fault)
        ├── BackendConnectionError
        ├── BackendStatusError   non-2xx answer (status_code, retry_after_s)
        └── BackendProtocolError answer not in the expected shape
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""


class InvalidArgument(RouterError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class UnknownSkill(InvalidArgument):
    def __init__(self, field: str, name: str, known: list[str]) -> None:
        shown = ", ".join(known[:20]) + (f", … ({len(known)} in all)" if len(known) > 20 else "")
        quoted = repr(name) if len(name) <= 40 else f"{name[:40]!r}… ({len(name)} chars)"
        super().__init__(field, f"unknown skill {quoted} (configured: {shown})")
        self.name = name


class UnknownQuery(InvalidArgument):
    """Feedback names a query id the sidecar does not remember (never issued,
    or older than ``feedback.memory_ttl_s`` / pushed out of the bounded memory)."""


class AlreadyRated(InvalidArgument):
    """Feedback for a query (skill) that already has a rating: refused, the
    first rating stands."""


class Overloaded(RouterError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AllSkillsFailed(RouterError):
    def __init__(self, errors: dict[str, str]) -> None:
        detail = "; ".join(f"{skill}: {err}" for skill, err in errors.items())
        super().__init__(f"every chosen skill failed: {detail}" if errors else "no skill could answer")
        self.errors = dict(errors)


class NoSkillActivated(RouterError):
    def __init__(self, domain: str, complexity: float, reasons: dict[str, str]) -> None:
        detail = "; ".join(f"{skill}: {why}" for skill, why in reasons.items())
        super().__init__(f"no skill is activated by this query (domain {domain!r}, complexity {complexity:g})"
                         + (f": {detail}" if detail else ""))
        self.reasons = dict(reasons)


class ShuttingDown(RouterError):
    def __init__(self) -> None:
        super().__init__("the sidecar is shutting down; retry on another replica")


class DeadlineExceeded(RouterError):
    pass


class ConfigError(RouterError):
    """A config problem: ``source`` is the file (or env var), ``path`` the key path."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


class StartupError(RouterError):
    """Serving cannot start: ``key`` is the config key (or environment
    variable) at fault, e.g. ``server.listen`` or ``storage.sqlite_path``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class BackendError(RouterError):
    """One backend call failed. ``retryable`` says whether trying again may help."""

    kind = "error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BackendTimeout(BackendError):
    kind = "timeout"
    retryable = False  # the deadline is spent; a retry could not finish in time


class CallerDeadline(BackendError):
    """The caller's deadline, not the implementation's timeout, ended the
    call: it says nothing about the backend's health, so no breaker counts it."""

    kind = "deadline"
    retryable = False


class BackendConnectionError(BackendError):
    kind = "connection"
    retryable = True


class BackendStatusError(BackendError):
    kind = "status"

    def __init__(self, status_code: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status_code == 429 or self.status_code >= 500


class BackendProtocolError(BackendError):
    kind = "protocol"
