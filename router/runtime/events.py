"""What a streaming caller is told while one query runs (ExecuteStream).

The pipeline takes an optional ``QueryEvents``; the unary Execute passes
none and nothing changes. The same run (routing, admission, deadline,
fallback, accounting, the one record) serves both: the events only report
what the run does, in the order it does it:

    routed        the routing decision, at once (before any call)
    delta         a piece of one skill's answer, as its backend streams it
                  (``attempt`` > 1: a retry started the answer over)
    skill_result  one skill's whole result (answered, failed, timed out;
                  from a backend that cannot stream, from the cache)
    shed          a skill dropped (refused or failed) and who stepped in

The last word (synthesis, ledger, timing, quality) is the ``ExecuteOutcome``
that ``Pipeline.execute`` returns, exactly as for Execute.

A sink must not block and must not raise: it is called inside the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from router.core.routing import RoutePlan
    from router.core.synthesis import SkillOutcome

    from .pipeline import ShedSkill

__all__ = ["QueryEvents"]


class QueryEvents(Protocol):
    def routed(self, query_id: str, trace_id: str, plan: RoutePlan) -> None: ...

    def delta(self, skill: str, implementation: str, text: str, attempt: int) -> None: ...

    def skill_result(self, outcome: SkillOutcome) -> None: ...

    def shed(self, shed: ShedSkill) -> None: ...
