"""canary_mw: canary / gray-release routing inside Python web apps.

Every public name is importable from here (``from canary_mw import ...``); the submodules
are the implementation and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .asgi import DECISION_KEY, CanaryRouter
from .clientip import ClientIPResolver
from .config import CanaryConfig
from .decide import NO_OVERRIDES, Overrides, decide
from .engine import AsyncEngine, Engine, EngineSettings
from .errors import CanaryError, ConfigurationError, RuleError, StoreError, UpstreamError
from .facts import ASGIFacts, RequestFacts, WSGIFacts
from .forward.pool import HTTP11Transport
from .forward.sync_pool import HTTP11SyncTransport
from .forward.transports import AiohttpTransport, HTTPCore2Transport
from .health import HealthCheck
from .metrics import Metrics, metrics_asgi_app, metrics_wsgi_app
from .outcome import CANARY, STABLE, Decision
from .rollout import Rollout, RolloutPlan, Thresholds, Verdict, Window, judge
from .rules import DEFAULT_RULES, Rule, RuleSet, openresty_rules, parse_rules
from .shadow.config import MirrorConfig, parse_mirror
from .snapshot import MODES, Snapshot
from .stores import AsyncStore, Change, Store, async_store_from_url, store_from_url
from .version import __version__
from .wsgi import DECISION_ENVIRON_KEY, CanaryWSGI

if TYPE_CHECKING:  # for type checkers and the API reference; at run time see __getattr__
    from .admin.api import admin_app

__all__ = [
    "CANARY",
    "DECISION_ENVIRON_KEY",
    "DECISION_KEY",
    "DEFAULT_RULES",
    "MODES",
    "NO_OVERRIDES",
    "STABLE",
    "ASGIFacts",
    "AiohttpTransport",
    "AsyncEngine",
    "AsyncStore",
    "CanaryConfig",
    "CanaryError",
    "CanaryRouter",
    "CanaryWSGI",
    "Change",
    "ClientIPResolver",
    "ConfigurationError",
    "Decision",
    "Engine",
    "EngineSettings",
    "HTTP11SyncTransport",
    "HTTP11Transport",
    "HTTPCore2Transport",
    "HealthCheck",
    "Metrics",
    "MirrorConfig",
    "Overrides",
    "RequestFacts",
    "Rollout",
    "RolloutPlan",
    "Rule",
    "RuleError",
    "RuleSet",
    "Snapshot",
    "Store",
    "StoreError",
    "Thresholds",
    "UpstreamError",
    "Verdict",
    "WSGIFacts",
    "Window",
    "__version__",
    "admin_app",
    "async_store_from_url",
    "decide",
    "judge",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "openresty_rules",
    "parse_mirror",
    "parse_rules",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    # The admin app is built on Starlette, which only it needs (the 'admin' extra): it is
    # imported when asked for, so that `import canary_mw` works without Starlette.
    if name == "admin_app":
        from .admin.api import admin_app  # noqa: PLC0415 - Starlette is optional (see above)

        return admin_app
    raise AttributeError(f"module 'canary_mw' has no attribute {name!r}")
