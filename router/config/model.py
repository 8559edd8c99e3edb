"""``RouterConfig``: the validated config as the rest of the router sees it.

Skills are the core's frozen ``SkillSpec``s; the global sections are frozen
typed settings; what the core does not need per skill or per implementation
(batch capability, queue-timeout and batching overrides, expected tokens) is
in ``SkillOptions`` / ``ImplementationOptions``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError

from router.core.types import DynamicKRule, RoutingPolicy, SkillSpec

from .env import EnvOverride
from .problems import ConfigIssue, InvalidConfig, format_path, translate
from .schema import (
    AdmissionSettings,
    BatchingSettings,
    CacheSettings,
    ExperimentEntry,
    FeedbackSettings,
    RoutingSettings,
    ServerSettings,
    StateSettings,
    StorageSettings,
    TelemetrySettings,
    UnderstandingSettings,
    check_url,
)

__all__ = ["BatchMode", "ImplementationOptions", "RouterConfig", "SkillOptions"]

BatchMode = Literal["none", "openai_completions", "http_batch"]


@dataclass(frozen=True, slots=True)
class SkillOptions:
    """Per-skill settings beyond ``SkillSpec``, resolved against the global sections."""

    skill: str
    queue_timeout_s: float
    batching_enabled: bool
    batch_window_ms: float
    max_batch_size: int
    # Whether the skill's own value stands (else admission.default_* applies:
    # the file set none, or BRAIN_MOE_MAX_CONCURRENT_PER_SKILL /
    # BRAIN_MAX_QUEUE_DEPTH replaced it).
    concurrency_limit_set: bool = False
    queue_depth_set: bool = False
    # Settings the BRAIN_* variables leave alone in this skill (``pinned``).
    pinned: tuple[str, ...] = ()
    cache_enabled: bool = False  # the response cache (``cache:`` and the skill's own ``cache:``)
    cache_ttl_s: float = 300.0


@dataclass(frozen=True, slots=True)
class ImplementationOptions:
    """Per-implementation settings beyond ``ImplementationSpec``."""

    skill: str
    implementation: str
    batch: BatchMode = "none"
    expected_input_tokens: int | None = None
    expected_output_tokens: int | None = None
    cost_derived: bool = False  # cost_per_query was computed from per-token prices
    max_response_bytes: int = 4 * 1024 * 1024
    rpm: int | None = None  # the provider's rate limit (rate_limit.rpm / tpm)
    tpm: int | None = None

    @property
    def expected_tokens(self) -> int:
        return (self.expected_input_tokens or 0) + (self.expected_output_tokens or 0)

    @property
    def can_batch(self) -> bool:
        return self.batch != "none"


@dataclass(frozen=True)
class RouterConfig:
    skills: tuple[SkillSpec, ...]  # configuration order
    policy: RoutingPolicy
    routing: RoutingSettings  # the policy's source, plus success_window
    server: ServerSettings
    admission: AdmissionSettings
    batching: BatchingSettings
    telemetry: TelemetrySettings
    storage: StorageSettings
    source: str
    state: StateSettings = StateSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    experiments: Mapping[str, ExperimentEntry] = field(default_factory=dict)
    env_overrides: tuple[EnvOverride, ...] = ()
    skill_opts: Mapping[str, SkillOptions] = field(default_factory=dict, repr=False)
    implementation_opts: Mapping[tuple[str, str], ImplementationOptions] = field(default_factory=dict, repr=False)
    # Query understanding: its settings and the examples (inline and from
    # examples_file, read at load time) by skill and by domain.
    understanding: UnderstandingSettings = UnderstandingSettings()
    skill_examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    domain_examples: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    base_dir: str = "."  # the config file's directory: relative paths (examples, cache) start here
    cache: CacheSettings = field(default_factory=CacheSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "skill_opts", MappingProxyType(dict(self.skill_opts)))
        object.__setattr__(self, "implementation_opts", MappingProxyType(dict(self.implementation_opts)))
        object.__setattr__(self, "skill_examples", MappingProxyType(dict(self.skill_examples)))
        object.__setattr__(self, "domain_examples", MappingProxyType(dict(self.domain_examples)))

    def __repr__(self) -> str:
        k = "dynamic" if self.policy.top_k is None else self.policy.top_k
        return (
            f"<RouterConfig {self.source} [{len(self.skills)} skills | k={k} | "
            f"moe {'on' if self.policy.moe_enabled else 'off'}]>"
        )

    # --- look-ups ------------------------------------------------------------

    @property
    def skill_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.skills)

    def skill(self, name: str) -> SkillSpec:
        for s in self.skills:
            if s.name == name:
                return s
        raise KeyError(f"unknown skill {name!r} (configured: {', '.join(self.skill_names)})")

    def skill_options(self, name: str) -> SkillOptions:
        try:
            return self.skill_opts[name]
        except KeyError:
            raise KeyError(f"unknown skill {name!r} (configured: {', '.join(self.skill_names)})") from None

    def implementation_options(self, skill: str, impl: str) -> ImplementationOptions:
        try:
            return self.implementation_opts[(skill, impl)]
        except KeyError:
            known = [i.name for i in self.skill(skill).implementations]
            raise KeyError(f"skill {skill!r} has no implementation {impl!r} (configured: {', '.join(known)})") from None

    def all_skills_cost(self) -> float:
        """What firing every enabled skill's default implementation costs."""
        return sum(s.default_implementation.cost_per_query for s in self.skills if s.enabled)

    # --- copies --------------------------------------------------------------

    def with_admin_listen(self, admin_listen: str | None) -> RouterConfig:
        """A copy whose admin endpoint listens on ``admin_listen`` ("" or None: off)."""
        from .schema import _admin_listen
        try:
            value = _admin_listen(admin_listen)
        except ValueError as exc:
            raise InvalidConfig([ConfigIssue("--admin-listen", "server.admin_listen", str(exc))]) from None
        return dataclasses.replace(self, server=self.server.model_copy(update={"admin_listen": value}))

    def with_urls(self, url: str) -> RouterConfig:
        """A copy whose every implementation calls ``url`` (``--demo`` points
        the bundled config at the emulated backend this way). API keys are
        dropped: a provider's key must never be sent to another server."""
        try:
            check_url(url)
        except ValueError as exc:
            raise InvalidConfig([ConfigIssue("with_urls", "url", str(exc))]) from None
        skills = tuple(
            dataclasses.replace(s, implementations=tuple(dataclasses.replace(i, url=url, api_key_env=None) for i in s.implementations))
            for s in self.skills
        )
        return dataclasses.replace(self, skills=skills)

    def with_overrides(self, **routing_fields: Any) -> RouterConfig:
        """A copy with routing settings changed, validated like the file's
        (e.g. ``with_overrides(moe_enabled=False)`` for the comparison demo).
        Accepts every key of the ``routing`` section; ``dynamic_k`` may be a
        ``DynamicKRule`` or a mapping."""
        data = self.routing.model_dump()
        for key, value in routing_fields.items():
            if isinstance(value, DynamicKRule):
                value = {"threshold": value.threshold, "high_k": value.high_k, "low_k": value.low_k}
            data[key] = value
        try:
            routing = RoutingSettings.model_validate(data)
        except ValidationError as exc:
            issues = []
            for err in exc.errors():
                loc, problem = translate(err, RoutingSettings)
                issues.append(ConfigIssue("with_overrides", format_path(("routing", *loc)), problem))
            raise InvalidConfig(issues) from None
        return dataclasses.replace(self, routing=routing, policy=routing.to_policy())

    # --- human summary -------------------------------------------------------

    def _exposure(self, env: Mapping[str, str] | None) -> str:
        sv = self.server
        tls = "off" if sv.tls is None else ("mTLS" if sv.tls.client_ca_file else "on")
        token = "none"
        if sv.auth.token_env:
            state = "" if env is None else (" (set)" if env.get(sv.auth.token_env) else " (NOT SET)")
            token = f"${sv.auth.token_env}{state}"
        reflection = {None: "on loopback only", True: "on", False: "off"}[sv.reflection]
        return f"TLS {tls}; token {token}; reflection {reflection}"

    def _understanding_line(self) -> str:
        u = self.understanding
        enc = u.encoder if u.encoder != "embeddings" or u.embeddings is None else f"embeddings ({u.embeddings.model})"
        n_sk = sum(len(v) for v in self.skill_examples.values())
        n_dom = sum(len(v) for v in self.domain_examples.values())
        thr = "calibrated (0.5)" if u.out_of_scope_threshold is None else f"{u.out_of_scope_threshold:g}"
        return (f"understanding: encoder {enc}; {n_sk} examples for {len(self.skill_examples)} skills, "
                f"{n_dom} for {len(self.domain_examples)} domains; out-of-scope threshold {thr}; fallback "
                f"{self.routing.fallback_skill or 'none'}; complexity {'estimated' if u.estimate_complexity else 'default'}")

    def summary(self, env: Mapping[str, str] | None = None) -> str:
        """What ``skill-router check-config`` prints. ``env`` (when given) is
        used to say whether each api_key_env variable is set; no value is shown."""
        p, r, a, b, st = self.policy, self.routing, self.admission, self.batching, self.storage
        k_rule = (
            f"fixed k = {p.top_k}"
            if p.top_k is not None
            else f"dynamic k: complexity > {p.dynamic_k.threshold:g} → {p.dynamic_k.high_k}, else {p.dynamic_k.low_k}"
        )
        floor = "strict" if p.strict_quality_floor else "soft"
        lines = [
            f"config: {self.source}",
            "env overrides: none" if not self.env_overrides else "env overrides:",
        ]
        lines += [f"  {o}" for o in self.env_overrides]
        lines += [
            (
                f"routing: MoE {'on' if p.moe_enabled else 'off (every activated skill runs)'}; {k_rule}; "
                f"implementation choice {'dynamic' if p.dynamic_routing_enabled else 'default only'}; "
                f"quality threshold {p.quality_threshold:g} ({floor} floor); "
                f"defaults: complexity {p.default_complexity:g}, success rate {p.default_success_rate:g} "
                f"over the last {r.success_window} calls"
            ),
            self._understanding_line(),
            (
                f"server: listen {self.server.listen}; default deadline {self.server.default_deadline_s:g}s; "
                f"grace {self.server.grace_period_s:g}s; max concurrent RPCs "
                f"{self.server.max_concurrent_rpcs or 'unlimited'}; admin endpoint "
                f"{self.server.admin_listen or 'off'}; {self._exposure(env)}"
            ),
            (
                f"admission: {'on' if a.enabled else 'off'}; default limit {a.default_concurrency_limit}, "
                f"queue {a.default_queue_depth}, queue timeout {a.queue_timeout_s:g}s; breaker opens after "
                f"{a.breaker.failure_threshold} failures in a row or {a.breaker.failure_rate:.0%} of the last "
                f"{a.breaker.window} calls (min {a.breaker.min_calls}), cooldown {a.breaker.cooldown_s:g}s; "
                f"retry {a.retry.max_attempts} attempts (budget {a.retry.budget_ratio:.0%}); "
                f"adaptive limit {a.adaptive_limit.algorithm if a.adaptive_limit.enabled else 'off'}"
            ),
            (
                f"batching: {'on' if b.enabled else 'off'}; window {b.window_ms:g} ms, max {b.max_batch_size}, "
                f"key {b.key}, priority bypass {'on' if b.priority_bypass else 'off'}"
            ),
            (
                f"cache: {'on' if self.cache.enabled else 'off'} by default, "
                f"{sum(o.cache_enabled for o in self.skill_opts.values())} skills opted in; "
                f"ttl {self.cache.ttl_s:g}s, max {self.cache.max_entries} entries (in-process)"
            ),
            (
                f"storage: sqlite {st.sqlite_path or 'off'}; postgres {'on' if st.postgres_dsn else 'off'}; "
                f"retention {f'{st.retention_days} days' if st.retention_days else 'forever'}"
            ),
            (
                f"telemetry: service {self.telemetry.service_name}; query text "
                f"{'recorded' if self.telemetry.record_query_text else 'not recorded'}"
            ),
            f"skills ({len(self.skills)}, {sum(s.enabled for s in self.skills)} enabled):",
        ]
        for s in self.skills:
            o = self.skill_opts[s.name]
            act = s.activation
            domains = ",".join(sorted(act.domains)) or "any"
            preferred = ",".join(sorted(s.preferred_domains)) or "-"
            kw = f"; keywords {', '.join(act.keywords)}" if act.keywords else ""
            lines.append(
                f"  {s.name}{'' if s.enabled else ' (disabled)'}: priority {s.priority}; "
                f"limit {s.concurrency_limit}{'' if o.concurrency_limit_set else ' (default)'}, "
                f"queue {s.queue_depth}{'' if o.queue_depth_set else ' (default)'}; "
                + (f"pinned {', '.join(o.pinned)}; " if o.pinned else "") +
                f"batching {f'{o.batch_window_ms:g} ms' if o.batching_enabled else 'off'}; "
                f"activates on domains {domains}, complexity {act.min_complexity:g}-{act.max_complexity:g}{kw}; "
                f"prefers {preferred}; optimal complexity {s.optimal_complexity:g}"
            )
            for idx, i in enumerate(s.implementations):
                io = self.implementation_opts[(s.name, i.name)]
                mark = "*" if idx == s.default_index else " "
                key = ""
                if i.api_key_env:
                    state = "" if env is None else (" (set)" if env.get(i.api_key_env) else " (NOT SET)")
                    key = f"; key ${i.api_key_env}{state}"
                model = f" {i.model}" if i.model else ""
                cost = f"${i.cost_per_query:.4f}{' (from token prices)' if io.cost_derived else ''}"
                batch = f"; batch {io.batch}" if io.can_batch else ""
                lines.append(
                    f"    {mark} {i.name}: {i.backend}{model} at {i.url}; quality {i.quality:g}, {cost}, "
                    f"{i.expected_latency_ms:g} ms, optimal complexity {i.optimal_complexity:g}; "
                    f"timeout {i.timeout_s:g}s, {i.max_connections} connections{batch}{key}"
                )
        lines.append(
            f"all enabled skills at their default implementations (* above): ${self.all_skills_cost():.4f} per query"
        )
        return "\n".join(lines)
