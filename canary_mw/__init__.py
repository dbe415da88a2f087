"""canary_mw: canary / gray-release routing inside Python web apps.

Every public name is importable from here (``from canary_mw import ...``); the submodules
are the implementation and may change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# ``decide`` is also a submodule's name: once anything imports canary_mw.decide, the import
# system binds the module to that name here, so the function is bound eagerly (after it).
from .decide import NO_OVERRIDES, Overrides, decide
from .version import __version__

if TYPE_CHECKING:  # for type checkers and the API reference; at run time see __getattr__
    from .admin.api import admin_app
    from .asgi import DECISION_KEY, CanaryRouter
    from .clientip import ClientIPResolver
    from .config import CanaryConfig
    from .engine import AsyncEngine, Engine, EngineSettings
    from .errors import CanaryError, ConfigurationError, RuleError, StoreError, UpstreamError
    from .facts import ASGIFacts, RequestFacts, WSGIFacts
    from .forward.pool import HTTP11Transport
    from .forward.sync_pool import HTTP11SyncTransport
    from .forward.transports import AiohttpTransport, HTTPCore2Transport
    from .health import HealthCheck
    from .metrics import Metrics, metrics_asgi_app, metrics_wsgi_app
    from .outcome import CANARY, STABLE, Decision
    from .rollout import Rollout, RolloutPlan, Thresholds, Verdict, Window
    from .rollout.judge import judge
    from .rules import DEFAULT_RULES, Rule, RuleSet, openresty_rules, parse_rules
    from .shadow.config import MirrorConfig, parse_mirror
    from .snapshot import MODES, Snapshot
    from .stores import AsyncStore, Change, Store, async_store_from_url, store_from_url
    from .wsgi import DECISION_ENVIRON_KEY, CanaryWSGI

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


#: Where each public name is defined. They are imported when first asked for (PEP 562), so
#: that a process needing one part (the ``canary-mw`` command line, a WSGI app) does not pay
#: for importing every other (httpx, redis.asyncio, the forwarders, the rollout agent); the
#: admin app is built on Starlette, which only it needs (the 'admin' extra), so `import
#: canary_mw` works without Starlette.
_WHERE = {
    "admin_app": ".admin.api",
    "DECISION_KEY": ".asgi",
    "CanaryRouter": ".asgi",
    "ClientIPResolver": ".clientip",
    "CanaryConfig": ".config",
    "AsyncEngine": ".engine",
    "Engine": ".engine",
    "EngineSettings": ".engine",
    "CanaryError": ".errors",
    "ConfigurationError": ".errors",
    "RuleError": ".errors",
    "StoreError": ".errors",
    "UpstreamError": ".errors",
    "ASGIFacts": ".facts",
    "RequestFacts": ".facts",
    "WSGIFacts": ".facts",
    "HTTP11Transport": ".forward.pool",
    "HTTP11SyncTransport": ".forward.sync_pool",
    "AiohttpTransport": ".forward.transports",
    "HTTPCore2Transport": ".forward.transports",
    "HealthCheck": ".health",
    "Metrics": ".metrics",
    "metrics_asgi_app": ".metrics",
    "metrics_wsgi_app": ".metrics",
    "CANARY": ".outcome",
    "STABLE": ".outcome",
    "Decision": ".outcome",
    "Rollout": ".rollout",
    "RolloutPlan": ".rollout",
    "Thresholds": ".rollout",
    "Verdict": ".rollout",
    "Window": ".rollout",
    "judge": ".rollout.judge",
    "DEFAULT_RULES": ".rules",
    "Rule": ".rules",
    "RuleSet": ".rules",
    "openresty_rules": ".rules",
    "parse_rules": ".rules",
    "MirrorConfig": ".shadow.config",
    "parse_mirror": ".shadow.config",
    "MODES": ".snapshot",
    "Snapshot": ".snapshot",
    "AsyncStore": ".stores",
    "Change": ".stores",
    "Store": ".stores",
    "async_store_from_url": ".stores",
    "store_from_url": ".stores",
    "DECISION_ENVIRON_KEY": ".wsgi",
    "CanaryWSGI": ".wsgi",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'canary_mw' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup finds it without calling this again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
