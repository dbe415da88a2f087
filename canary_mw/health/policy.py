"""HealthCheck: how the backends of canary upstreams are checked (validated once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = ["HealthCheck"]

#: The shortest time a shared health record stays valid without being renewed, in seconds.
MIN_TTL = 30.0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How to check the backends of canary upstreams: every URL an upstream name can resolve
    to (its default URL and each per-host URL), each on its own.

    ``path`` is requested every ``interval`` seconds with a ``timeout``; a status below 500
    counts as healthy. ``unhealthy_after`` failed checks in a row eject the backend,
    ``healthy_after`` good ones restore it. ``passive_after`` real requests in a row that
    could not connect eject it too (None: only active checks).

    >>> CanaryRouter(app, canary_url=..., health=HealthCheck(path="/healthz", interval=1))
    """

    path: str = "/"
    interval: float = 2.0
    timeout: float = 1.0
    unhealthy_after: int = 2
    healthy_after: int = 2
    passive_after: int | None = 3

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigurationError(f"health path must start with '/', got {self.path!r}")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"health {name} must be a positive number of seconds")
        for name in ("unhealthy_after", "healthy_after", "passive_after"):
            value = getattr(self, name)
            if value is None and name == "passive_after":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"health {name} must be a positive integer")

    @property
    def ttl(self) -> float:
        """How long a verdict holds without a check confirming it: the shared record's
        lifetime (renewed at half of it) and a local ejection's. Many intervals long, so a
        slow check or a missed round never lets an ejection lapse; bounded, so an ejection
        made by an instance that is gone does not outlive it by much."""
        return max(MIN_TTL, 10 * self.interval)
