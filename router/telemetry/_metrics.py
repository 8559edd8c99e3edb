"""The router's OpenTelemetry instruments, created once per meter.

Names follow the OpenTelemetry conventions: durations in seconds, the GenAI
client metrics (``gen_ai.client.operation.duration``,
``gen_ai.client.token.usage``) for skill calls, and ``router.*`` for the
rest. Money has no UCUM unit, so it is the annotation ``{USD}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

log = logging.getLogger(__name__)

# (skill, in_flight, utilization 0..1, queue_depth)
LiveStat = tuple[str, int, float, int]
LiveStats = Callable[[], Iterable[LiveStat]]
# reason ("overloaded", "unauthenticated", "undecodable") → calls refused since start
RefusedCounts = Callable[[], Mapping[str, int]]

# Selection is pure CPU work measured in microseconds.
SELECTION_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# The GenAI conventions' advice for operation durations.
GENAI_DURATION_BUCKETS_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


class Instruments:
    __slots__ = (
        "_gauges",
        "_live_stats",
        "_refused",
        "batch_size",
        "cost",
        "cost_saved",
        "genai_duration",
        "genai_tokens",
        "queries",
        "query_duration",
        "selection_duration",
        "skill_calls",
        "skill_duration",
    )

    def __init__(self, meter: Meter) -> None:
        self._live_stats: LiveStats | None = None
        self._refused: RefusedCounts | None = None
        self.selection_duration = meter.create_histogram(
            "router.selection.duration", "s", "Time to score, select and choose implementations for one query.",
            explicit_bucket_boundaries_advisory=SELECTION_BUCKETS_S)
        self.skill_duration = meter.create_histogram(
            "router.skill.duration", "s", "Time of one skill execution (the backend call, retries included).",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS_S)
        self.query_duration = meter.create_histogram(
            "router.query.duration", "s", "Time from a query's arrival to its answer.",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS_S)
        self.genai_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration.",
            explicit_bucket_boundaries_advisory=GENAI_DURATION_BUCKETS_S)
        self.genai_tokens = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.batch_size = meter.create_histogram(
            "router.batch.size", "{query}", "Queries carried by one batched backend request.",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS)
        self.queries = meter.create_counter("router.queries", "{query}", "Queries answered, by RPC and status.")
        self.skill_calls = meter.create_counter("router.skill.calls", "{call}", "Skill executions, by skill, implementation and status.")
        self.cost = meter.create_counter("router.cost", "{USD}", "Cost of the skill executions.")
        # Saving can be negative (a pricier implementation than the baseline's
        # default), so it is an up-down counter.
        self.cost_saved = meter.create_up_down_counter(
            "router.cost.saved", "{USD}", "Cost saved against firing every activated skill.")
        self._gauges = (
            meter.create_observable_gauge("router.skill.in_flight", [self._observe(1)], "{call}",
                                          "Calls currently executing per skill."),
            meter.create_observable_gauge("router.skill.utilization", [self._observe(2)], "1",
                                          "In-flight calls over the skill's concurrency limit."),
            meter.create_observable_gauge("router.skill.queue_depth", [self._observe(3)], "{query}",
                                          "Queries waiting for a skill's gate."),
            meter.create_observable_counter("router.rpc.refused", [self._observe_refused], "{call}",
                                            "Calls the server's front door refused, by reason."),
        )

    def set_refused(self, refused: RefusedCounts | None) -> None:
        self._refused = refused

    def _observe_refused(self, options: CallbackOptions) -> Iterable[Observation]:
        fn = self._refused
        if fn is None:
            return []
        try:
            return [Observation(n, {"router.reason": reason}) for reason, n in fn().items()]
        except Exception:  # a broken callback must not stop the export
            log.exception("refused-counts callback failed")
            return []

    def set_live_stats(self, live_stats: LiveStats | None) -> None:
        self._live_stats = live_stats

    def _observe(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            fn = self._live_stats
            if fn is None:
                return []
            try:
                return [Observation(row[index], {"router.skill": row[0]}) for row in fn()]
            except Exception:  # a broken callback must not stop the export
                log.exception("live_stats callback failed")
                return []
        return callback
