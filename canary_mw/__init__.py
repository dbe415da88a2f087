"""canary_mw: canary / gray-release routing inside Python web apps."""

from .asgi import DECISION_KEY, CanaryRouter
from .clientip import ClientIPResolver
from .config import CanaryConfig
from .decide import NO_OVERRIDES, Overrides, decide
from .decision import CANARY, STABLE, Decision
from .engine import EngineSettings
from .errors import CanaryError, ConfigurationError, RuleError, StoreError, UpstreamError
from .facts import ASGIFacts, RequestFacts, WSGIFacts
from .rules import DEFAULT_RULES, Rule, RuleSet, openresty_rules, parse_rules
from .snapshot import MODES, Snapshot
from .wsgi import DECISION_ENVIRON_KEY, CanaryWSGI

__version__ = "0.1.0"

__all__ = [
    "CANARY",
    "DECISION_ENVIRON_KEY",
    "DECISION_KEY",
    "DEFAULT_RULES",
    "MODES",
    "NO_OVERRIDES",
    "STABLE",
    "ASGIFacts",
    "CanaryConfig",
    "CanaryError",
    "CanaryRouter",
    "CanaryWSGI",
    "ClientIPResolver",
    "ConfigurationError",
    "Decision",
    "EngineSettings",
    "Overrides",
    "RequestFacts",
    "Rule",
    "RuleError",
    "RuleSet",
    "Snapshot",
    "StoreError",
    "UpstreamError",
    "WSGIFacts",
    "__version__",
    "decide",
    "openresty_rules",
    "parse_rules",
]
