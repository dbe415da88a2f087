"""An immutable view of everything the decision reads from the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .health.state import SharedState
from .ipmatch import IPMatcher
from .keys import IPListRef
from .rules import DEFAULT_RULES, Rule, RuleSet
from .shadow.config import MirrorConfig
from .upstreams import UpstreamRoute

__all__ = ["MODES", "Mode", "Snapshot"]

Mode = Literal["off", "rules", "all"]
#: ``off``: everyone stable (kill switch); ``rules``: normal; ``all``: everyone to the canary.
MODES: tuple[Mode, ...] = ("off", "rules", "all")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Mode, rules and the whole-loaded IP sets, as of one store read.

    ``ip_sets`` / ``ip_lists`` only hold what was loaded; a rule referring to a set that is
    missing from them evaluates as unknown (stable), never as "not a member".
    """

    mode: Mode = "rules"
    ruleset: RuleSet = DEFAULT_RULES
    ip_sets: Mapping[str, IPMatcher] = field(default_factory=dict)
    ip_lists: Mapping[IPListRef, IPMatcher] = field(default_factory=dict)
    version: int = 0
    loaded: bool = False
    #: Upstream URLs set in the store (``upstream set``), overriding the code's.
    upstreams: Mapping[str, UpstreamRoute] = field(default_factory=dict)
    #: Backend URLs (Upstream.key) the store marks ejected: their traffic goes to stable.
    ejected: frozenset[str] = frozenset()
    #: The store's valid health records by backend URL, and the fields that have lapsed.
    health: Mapping[str, SharedState] = field(default_factory=dict)
    health_lapsed: frozenset[str] = frozenset()
    #: The mirror document in force (shadow traffic), None when mirroring is off.
    mirror: MirrorConfig | None = None
    rules: tuple[Rule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", self.ruleset.active)
