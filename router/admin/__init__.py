"""The admin HTTP surface (an edge): a live dashboard page, its figures as
JSON, and Prometheus ``/metrics``, all read from the live snapshot and the
metrics store's window at request time. Imports core, runtime, aiohttp and
prometheus-client; the composition root hands it its sources."""

from ._dashboard import WindowResult, dashboard, skill_breaker
from ._history import History, Sample
from ._metrics import PREFIX, SnapshotCollector
from ._server import DEFAULT_WINDOW_S, AdminError, AdminServer, split_listen

__all__ = [
    "DEFAULT_WINDOW_S",
    "PREFIX",
    "AdminError",
    "AdminServer",
    "History",
    "Sample",
    "SnapshotCollector",
    "WindowResult",
    "dashboard",
    "skill_breaker",
    "split_listen",
]
