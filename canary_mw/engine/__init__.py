"""Engines: a store snapshot kept current in the background, and the decide loop around it."""

from .aio import AsyncEngine
from .breaker import CircuitBreaker
from .cache import MembershipCache
from .settings import ENGINE_OPTIONS, EngineSettings
from .sync import Engine

__all__ = [
    "ENGINE_OPTIONS",
    "AsyncEngine",
    "CircuitBreaker",
    "Engine",
    "EngineSettings",
    "MembershipCache",
]
