"""Health of every canary backend URL: checked actively, ejected passively, shared through
the store, consulted with one set lookup per canary decision.

- policy.py   HealthCheck, the user's settings
- state.py    one backend's state and its transitions, pure (tests drive them with a clock)
- tracker.py  BackendHealth: this instance's table; what the request path asks and reports
- loop.py     one check round as a plan (check, update, share)
- runners.py  the plan's blocking (thread) and asyncio (task) runners
"""

from .loop import Backends, check_round
from .policy import HealthCheck
from .runners import AsyncChecker, BlockingChecker
from .state import BackendState, SharedState, read_shared
from .tracker import INSTANCE, BackendHealth

__all__ = [
    "INSTANCE",
    "AsyncChecker",
    "BackendHealth",
    "BackendState",
    "Backends",
    "BlockingChecker",
    "HealthCheck",
    "SharedState",
    "check_round",
    "read_shared",
]
