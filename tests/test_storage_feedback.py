"""The metrics store's feedback table and measured-quality columns, on
SQLite and PostgreSQL (the same fixture as test_storage)."""

from __future__ import annotations

import dataclasses

import pytest
from test_storage import HOUR, NOW, backend, rec  # noqa: F401 (backend is a fixture)

from router.runtime.feedback import FeedbackRecord
from router.storage import open_store


def rating(qid: str, score: float, skill: str = "kimiK2", impl: str = "gemini-flash") -> FeedbackRecord:
    return FeedbackRecord(qid, NOW - 1, skill, impl, score, "legal", 6.0, "mid", "ab/top1")


async def test_ratings_are_kept_and_the_rated_row_says_its_quality_is_measured(backend) -> None:  # noqa: F811
    make, _ = backend
    store = await open_store(make(flush_interval_s=3600))
    await store.start()
    rows = [dataclasses.replace(rec(NOW - 10 - i, qid=f"q{i}", quality=0.9), declared_quality=0.9,
                                implementations=("gemini-flash", "trm-http")) for i in range(3)]
    rows.append(dataclasses.replace(rec(NOW - 20, qid="shadow"), shadow=True, arm="ab/all"))
    for r in rows:
        store.submit(r)
    store.submit_feedback([rating("q0", 0.0), rating("q0", 1.0, "trm", "trm-http")], 0.5)
    store.submit_feedback([rating("q1", 1.0)], 1.0)
    await store.flush()
    kept = await store.feedback(10)
    assert sorted((f.query_id, f.skill, f.score) for f in kept) == [("q0", "kimiK2", 0.0), ("q0", "trm", 1.0),
                                                                    ("q1", "kimiK2", 1.0)]
    assert all(f.arm == "ab/top1" and f.band == "mid" and f.timestamp == pytest.approx(NOW - 1) for f in kept)
    by = {r.query_id: r for r in await store.recent(10)}
    assert (by["q0"].quality_score, by["q0"].quality_source, by["q0"].declared_quality) == (0.5, "feedback", 0.9)
    assert (by["q2"].quality_score, by["q2"].quality_source) == (0.9, "declared")
    assert by["q0"].implementations == ("gemini-flash", "trm-http") and by["shadow"].shadow is True
    agg = await store.aggregate(HOUR, NOW)
    assert agg.queries == 3  # the shadow row is not a query of the window
    assert agg.rated == 2 and agg.avg_measured_quality == pytest.approx(0.75)
    assert agg.avg_declared_quality == pytest.approx(0.9)
    assert agg.avg_quality == pytest.approx((0.5 + 1.0 + 0.9) / 3)
    await store.aclose()
