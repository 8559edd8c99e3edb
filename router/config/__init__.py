"""The router's config: one YAML file, validated, turned into the core's
frozen types.

    cfg = load_config("skill-router.yaml")   # None: the bundled default.yaml
    cfg.skills            # tuple[SkillSpec, ...], configuration order
    cfg.policy            # RoutingPolicy
    cfg.server, cfg.admission, cfg.batching, cfg.telemetry, cfg.storage

The seed application's ``BRAIN_*`` environment variables override the file
(see ``ENV_VARS``). Every problem is a ``router.core.errors.ConfigError``
naming the file and line (or the variable), the key path and what is wrong.
The reference is docs/config.md.
"""

from .env import ENV_VARS, EnvOverride, EnvVar
from .loader import check_config, default_config_path, load_config, parse_config
from .model import BatchMode, ImplementationOptions, RouterConfig, SkillOptions
from .problems import ConfigIssue, InvalidConfig
from .schema import (
    AdaptiveLimitSettings,
    AdmissionSettings,
    BatchingSettings,
    BreakerSettings,
    CacheSettings,
    DynamicKSettings,
    ExperimentEntry,
    FeedbackSettings,
    RetrySettings,
    RoutingSettings,
    ServerSettings,
    StateSettings,
    StorageSettings,
    TelemetrySettings,
)

__all__ = [
    "ENV_VARS",
    "AdaptiveLimitSettings",
    "AdmissionSettings",
    "BatchMode",
    "BatchingSettings",
    "BreakerSettings",
    "CacheSettings",
    "ConfigIssue",
    "DynamicKSettings",
    "EnvOverride",
    "EnvVar",
    "ExperimentEntry",
    "FeedbackSettings",
    "ImplementationOptions",
    "InvalidConfig",
    "RetrySettings",
    "RouterConfig",
    "RoutingSettings",
    "ServerSettings",
    "SkillOptions",
    "StateSettings",
    "StorageSettings",
    "TelemetrySettings",
    "check_config",
    "default_config_path",
    "load_config",
    "parse_config",
]
