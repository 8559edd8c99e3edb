"""Readable terminal output for the CLI (rich tables)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from router.v1 import router_pb2 as pb

# Piped output gets a width that fits the tables, not rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)


def _reason(r: pb.Rejection) -> str:
    return pb.RejectionReason.Name(r.reason).removeprefix("REJECTION_REASON_").lower()


def _selection_table(resp: pb.RouteResponse | pb.ExecuteResponse) -> Table:
    t = Table(title=f"top-{resp.k} skills" if resp.moe_enabled else "every activated skill (MoE off)")
    for col in ("#", "skill", "score", "rank", "domain", "complexity", "text", "success", "implementation", "why"):
        t.add_column(col)
    for i, s in enumerate(resp.selections, 1):
        impl = s.implementation.implementation
        t.add_row(str(i), s.skill + (" (forced)" if s.forced else ""), f"{s.score:.3f}", f"{s.parts.rank_score:.3f}",
                  f"+{s.parts.domain_bonus:.1f}", f"+{s.parts.complexity_fit:.2f}", f"+{s.parts.text_term:.2f}",
                  f"×{s.parts.success_factor:.2f}", f"{impl.name} ({impl.model})", s.implementation.reason)
    return t


def _source(v: int) -> str:
    return pb.SignalSource.Name(v).removeprefix("SIGNAL_SOURCE_").lower()


def _signals(resp: pb.RouteResponse | pb.ExecuteResponse) -> None:
    if not resp.HasField("signals"):
        return
    s = resp.signals
    inferred = ", ".join(f"{d.domain} {d.score:.2f}" for d in s.domains[:3])
    console.print(f"signals ({s.method}): domain {s.domain or '-'} ({_source(s.domain_source)})"
                  + (f" (inferred: {inferred})" if inferred else "")
                  + f" · complexity {s.complexity:.1f} ({_source(s.complexity_source)})"
                  + (f" · [yellow]out of scope[/yellow] (best {s.best_relevance:.2f} < {s.out_of_scope_threshold:.2f})"
                     + (f" → {s.fallback_skill}" if s.fallback_skill else "") if s.out_of_scope else ""))


def _rejections(resp: pb.RouteResponse | pb.ExecuteResponse) -> None:
    for r in resp.rejections:
        console.print(f"  [dim]not chosen: {r.skill} — {_reason(r)}: {r.detail}[/dim]")


def render_route(resp: pb.RouteResponse) -> None:
    _signals(resp)
    console.print(_selection_table(resp))
    _rejections(resp)
    console.print(f"selection took {resp.selection_time_us} µs · query {resp.query_id}")


def render_execute(resp: pb.ExecuteResponse) -> None:
    _signals(resp)
    console.print(_selection_table(resp))
    _rejections(resp)
    t = Table(title="results")
    for col in ("skill", "implementation", "weight", "status", "cost $", "latency ms", "queue ms", "tries", "error"):
        t.add_column(col)
    for r in resp.results:
        status = pb.SkillStatus.Name(r.status).removeprefix("SKILL_STATUS_")
        if r.cached:
            status += f" (cached, {r.cache_age_ms / 1000:.0f}s old)"
        t.add_row(r.skill, r.implementation, f"{r.weight:.2f}", status,
                  f"{r.cost_usd:.4f}", f"{r.latency_ms:.0f}", f"{r.queue_wait_ms:.0f}", str(r.attempts), r.error)
    console.print(t)
    for s in resp.shed:
        why = pb.ShedReason.Name(s.reason).removeprefix("SHED_REASON_").lower()
        console.print(f"  [yellow]shed: {s.skill} ({why})" + (f" → {s.replaced_by} stepped in" if s.replaced_by else "")
                      + "[/yellow]")
    console.print(resp.text)
    c, tm = resp.cost, resp.timing
    console.print(f"cost ${c.actual_usd:.4f} vs all-skills ${c.baseline_usd:.4f} → saved ${c.saved_usd:.4f} "
                  f"({c.saved_fraction:.0%}) · quality {resp.quality:.2f}"
                  + (f" · cache saved ${c.cache_saved_usd:.4f}" if c.cache_saved_usd else ""))
    console.print(f"selection {tm.selection_us} µs · execution {tm.execution_us / 1000:.1f} ms · "
                  f"total {tm.total_us / 1000:.1f} ms · query {resp.query_id}"
                  + (f" · trace {resp.trace_id}" if resp.trace_id else ""))


def render_event(event: pb.ExecuteEvent) -> None:
    """One ExecuteStream event as it arrives (``done`` is ``render_execute``'s)."""
    kind = event.WhichOneof("event")
    at = f"[dim]{event.elapsed_ms:7.1f} ms[/dim]"
    if kind == "routed":
        r = event.routed
        console.print(f"{at} routed: {', '.join(s.skill for s in r.selections)} (k={r.k}) · query {r.query_id}")
    elif kind == "delta":
        d = event.delta
        console.print(f"{at} [cyan]{d.skill}[/cyan] {d.text!r}" + (f" (attempt {d.attempt})" if d.attempt > 1 else ""),
                      markup=True, highlight=False)
    elif kind == "skill_result":
        r = event.skill_result
        status = pb.SkillStatus.Name(r.status).removeprefix("SKILL_STATUS_")
        console.print(f"{at} [bold]{r.skill}[/bold] {status}" + (" (cached)" if r.cached else "")
                      + (f": {r.error}" if r.error else ""), highlight=False)
    elif kind == "shed":
        s = event.shed
        why = pb.ShedReason.Name(s.reason).removeprefix("SHED_REASON_").lower()
        console.print(f"{at} [yellow]shed: {s.skill} ({why})"
                      + (f" → {s.replaced_by} stepped in" if s.replaced_by else "") + "[/yellow]")


_BREAKER = {pb.BREAKER_STATE_CLOSED: "closed", pb.BREAKER_STATE_OPEN: "OPEN", pb.BREAKER_STATE_HALF_OPEN: "half-open"}


def render_stats(resp: pb.StatsResponse) -> None:
    # The live view (the seed's /api/brain/load-balancing) ...
    t = Table(title=f"live load (up {resp.uptime_seconds:.0f}s, MoE {'on' if resp.moe_enabled else 'off'}, "
                    f"config generation {resp.config_generation})")
    for col in ("skill", "in-flight", "util", "queued (low/normal/high)", "queue wait ms", "rejected", "shed",
                "timed out", "breakers"):
        t.add_column(col)
    for s in resp.skills:
        q = s.queue_depth_by_priority
        breakers = ", ".join(f"{i.name}: {_BREAKER.get(i.breaker_state, '?')}" for i in s.implementations
                             if i.breaker_state != pb.BREAKER_STATE_CLOSED) or "closed"
        t.add_row(s.skill, f"{s.in_flight}/{s.concurrency_limit}", f"{s.utilization:.0%}",
                  f"{s.queue_depth}/{s.queue_capacity} ({q.get('low', 0)}/{q.get('normal', 0)}/{q.get('high', 0)})",
                  f"{s.mean_queue_wait_ms:.0f}", str(s.rejected), str(s.shed), str(s.timed_out), breakers)
    console.print(t)
    c = Table(title="calls since start")
    for col in ("skill", "calls", "failures", "success", "p50 ms", "p99 ms", "batches", "mean batch", "coalesced"):
        c.add_column(col)
    for s in resp.skills:
        c.add_row(s.skill, str(s.calls), str(s.failures), f"{s.success_rate:.0%}", f"{s.latency_p50_ms:.0f}",
                  f"{s.latency_p99_ms:.0f}", str(s.batches), f"{s.mean_batch_size:.1f}" if s.batches else "-",
                  str(s.coalesced_calls))
    console.print(c)
    rated = [(s.skill, i) for s in resp.skills for i in s.implementations if i.ratings]
    if rated:  # measured quality (Feedback) next to declared
        qt = Table(title="quality: declared vs measured (feedback)")
        for col in ("skill", "implementation", "declared", "measured (95 %)", "ratings"):
            qt.add_column(col)
        for skill, i in rated:
            qt.add_row(skill, i.name, f"{i.declared_quality:.3f}",
                       f"{i.measured_quality:.3f} ({i.measured_quality_low:.2f}-{i.measured_quality_high:.2f})",
                       str(i.ratings))
        console.print(qt)
    if resp.experiments:
        et = Table(title="experiments")
        for col in ("experiment", "arm", "queries", "cost", "latency ms", "quality (95 %)", "ratings", "note"):
            et.add_column(col)
        for a in resp.experiments:
            note = (f"shadow, agreement {a.agreement:.0%}" if a.shadow
                    else f"k {a.current_k}" if a.current_k else "")
            et.add_row(a.experiment, a.arm, str(a.queries), f"${a.cost_usd:.4f}", f"{a.avg_latency_ms:.0f}",
                       f"{a.measured_quality:.3f} ({a.measured_quality_low:.2f}-{a.measured_quality_high:.2f})"
                       if a.ratings else "-", str(a.ratings), note)
        console.print(et)
    tt = resp.totals
    console.print(f"since start: queries {tt.queries} (failed {tt.failed_queries}) · routes {tt.routes} · "
                  f"skills/query {tt.avg_skills_per_query:.2f} · cost ${tt.cost_usd:.4f} · "
                  f"saved ${tt.cost_saved_usd:.4f} of ${tt.baseline_cost_usd:.4f}")
    st = resp.shared_state
    if st.backend:
        where = f"worker {st.worker + 1} of {st.workers}" if st.workers > 1 else "one process"
        if st.backend == "in_process":
            console.print(f"limits: in-process ({where}{', split among the workers' if st.workers > 1 else ''})")
        elif st.connected:
            console.print(f"limits: shared in {st.backend} ({where})"
                          + (f" · fallbacks {st.fallbacks}, reconnects {st.reconnects}" if st.fallbacks else ""))
        else:
            console.print(f"[bold]limits: {st.backend} unreachable, serving on local limits[/bold] ({where}; "
                          f"{st.detail}; fallbacks {st.fallbacks})")
    # ... and the dashboard over a window (the seed's /api/brain/moe-metrics).
    w = resp.window
    if not w.available:
        console.print("[dim]no metrics store configured: no figures over time[/dim]")
        return
    hours = (w.until.ToSeconds() - w.since.ToSeconds()) / 3600
    console.print(f"\nlast {hours:g} h ({w.store}): queries {w.queries} (errors {w.errors}) · "
                  f"skills/query {w.avg_skills_selected:.2f} · cost/query ${w.avg_cost_per_query_usd:.4f} · "
                  f"saved ${w.cost_saved_usd:.4f} · response {w.avg_response_ms:.0f} ms (p99 {w.p99_response_ms:.0f}) · "
                  f"quality {w.avg_quality:.3f}" + (f" · rows dropped {w.rows_dropped}" if w.rows_dropped else "")
                  + (f" · rated {w.rated_queries}: measured {w.avg_measured_quality:.3f}"
                     f" vs declared {w.avg_declared_quality:.3f}" if w.rated_queries else ""))
    if w.skill_distribution:
        dist = sorted(w.skill_distribution.items(), key=lambda kv: -kv[1])
        console.print("skill distribution: " + ", ".join(f"{k} {v}" for k, v in dist))
    if w.hourly:
        h = Table(title="hourly")
        for col in ("hour (UTC)", "queries", "cost/query", "response ms", "quality"):
            h.add_column(col)
        for x in w.hourly:
            h.add_row(x.hour.ToDatetime().strftime("%Y-%m-%d %H:00"), str(x.queries), f"${x.avg_cost_usd:.4f}",
                      f"{x.avg_response_ms:.0f}", f"{x.avg_quality:.3f}")
        console.print(h)


def render_demo(result: dict, n: int) -> None:
    from router.demo import MODES
    t = Table(title=f"every activated skill vs top-k routing ({n} queries each, emulated backends)")
    t.add_column("metric")
    for _, title, _, _ in MODES:
        t.add_column(title, justify="right")
    t.add_column("top-k vs before", justify="right")
    rows = [("avg response time", "avg_ms", "{:.0f} ms"), ("p99 latency", "p99_ms", "{:.0f} ms"),
            ("cost per query", "cost_per_query", "${:.4f}"), ("throughput", "throughput_qps", "{:.1f} qps"),
            ("skills per query", "skills_per_query", "{:.2f}"), ("quality", "quality", "{:.3f}"),
            ("skill utilization", "utilization", "{:.0%}"), ("peak utilization", "peak_utilization", "{:.0%}"),
            ("peak queue depth", "peak_queue_depth", "{:d}")]
    before, after = result[MODES[0][0]], result[MODES[-1][0]]
    for label, key, fmt in rows:
        a, m = before[key], after[key]
        change = f"{(m - a) / a:+.0%}" if a else "—"
        t.add_row(label, *(fmt.format(result[k][key]) for k, _, _, _ in MODES), change)
    console.print(t)
    console.print("[dim]skill utilization: in-flight calls / the skill's limit, averaged over the skills that took "
                  "calls, sampled every 0.1 s while the queries ran (the seed's getUtilization)[/dim]")
