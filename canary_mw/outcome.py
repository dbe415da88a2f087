"""The outcome of routing one request: a Decision (where it goes and why), and the names
of the two targets every router knows (``decide.py`` makes decisions; this is what they are)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .keys import Probe

__all__ = ["CANARY", "STABLE", "Decision", "Reason"]

STABLE = "stable"
#: The upstream name used by ``mode all``, force overrides and ``canary_url=`` shorthand.
CANARY = "canary"

Reason = Literal[
    "override-header",
    "override-cookie",
    "mode-off",
    "mode-all",
    "rule",
    "no-match",
    "unknown",
    "no-upstream",  # the rules chose an upstream this router has no URL for: served stable
    "fallback",  # the upstream was unreachable and the request was served by stable instead
    "ejected",  # the upstream is marked unhealthy: served stable until it recovers
    "error",  # deciding raised (a bug): served stable, logged (decide.decide_or_stable)
]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why.

    ``target`` is ``"stable"`` or an upstream name; ``reason`` says what decided, with
    ``rule_id`` naming the rule for ``rule`` and ``unknown``. ``unknown`` means a rule needed a
    store answer that was not available, so the request stays on stable; ``pending`` then
    lists the membership probes that would settle it. ``set_cookie`` is the sticky cookie
    the response records the user's placement with (``sticky_cookie=``), or None.
    """

    target: str
    reason: Reason
    rule_id: str | None = None
    pending: tuple[Probe, ...] = ()
    set_cookie: bytes | None = None

    @property
    def is_stable(self) -> bool:
        return self.target == STABLE
