"""The routing decision: one pure function shared by the ASGI and WSGI front ends.

``decide`` does no I/O. Store membership answers come in through ``answers`` (anything with
``get(probe)``); when one is missing the rule is *unknown*, the request stays on stable, and
the returned decision lists the probes a caller may look up before calling again.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

from .errors import ConfigurationError
from .facts import RequestFacts
from .keys import Answers, Probe
from .outcome import CANARY, STABLE, Decision
from .snapshot import Snapshot
from .sticky import BUCKETS
from .stickycookie import StickyCookie

__all__ = ["NO_OVERRIDES", "Overrides", "decide", "decide_or_stable"]

logger = logging.getLogger("canary_mw")

_FORCE = {"always": CANARY, "never": STABLE}


@dataclass(frozen=True, slots=True)
class Overrides:
    """What a request can carry that decides its route besides the rules.

    ``header`` / ``cookie``: a force header or cookie, value ``always`` → canary, ``never`` →
    stable. Off by default: anyone can send a header or cookie, so only turn these on when
    reaching the canary on demand is acceptable for every client. ``sticky``: the signed
    cookie that keeps a user where a percentage rule placed them (stickycookie.py).
    """

    header: str | None = None
    cookie: str | None = None
    sticky: StickyCookie | None = None

    def __post_init__(self) -> None:
        for what, name in (("force header", self.header), ("force cookie", self.cookie)):
            if name is not None and (not isinstance(name, str) or not name.strip()):
                raise ConfigurationError(f"the {what} name must be a non-empty string or None")
        if self.header is not None:
            object.__setattr__(self, "header", self.header.strip().lower())


NO_OVERRIDES = Overrides()

_HEADER_DECISIONS = {v: Decision(t, "override-header") for v, t in _FORCE.items()}
_COOKIE_DECISIONS = {v: Decision(t, "override-cookie") for v, t in _FORCE.items()}
_MODE_OFF = Decision(STABLE, "mode-off")
_MODE_ALL = Decision(CANARY, "mode-all")
_NO_MATCH = Decision(STABLE, "no-match")
_ERROR = Decision(STABLE, "error")
#: Failures already logged, by type and the line that raised (not by message: messages can
#: hold request bytes, and a client sending new ones must not fill this and silence the log).
_LOGGED: set[tuple[str, str, int]] = set()


def decide(
    facts: RequestFacts,
    snapshot: Snapshot,
    answers: Answers,
    overrides: Overrides = NO_OVERRIDES,
) -> Decision:
    """Route one request: overrides, then the global mode, then the rules in order."""
    if overrides.header is not None:
        value = facts.header(overrides.header)
        if value is not None and (forced := _HEADER_DECISIONS.get(value.strip().lower())):
            return forced
    if overrides.cookie is not None:
        value = facts.cookie(overrides.cookie)
        if value is not None and (forced := _COOKIE_DECISIONS.get(value.strip().lower())):
            return forced
    mode = snapshot.mode
    if mode == "off":
        return _MODE_OFF
    if mode == "all":
        return _MODE_ALL
    if overrides.sticky is not None and snapshot.ruleset.pinned is not None:
        return _decide_sticky(facts, snapshot, answers, overrides.sticky)
    return _first_rule(facts, snapshot, answers)[1]


def _first_rule(facts: RequestFacts, snapshot: Snapshot, answers: Answers) -> tuple[int, Decision]:
    """The rules in order: the position and decision of the first that matches, or of the
    first that is unknown (stable, with the probes that would settle it); no match, the
    number of rules and stable."""
    for index, rule in enumerate(snapshot.rules):
        verdict = rule.condition.evaluate(facts, snapshot, answers, None)
        if verdict:
            return index, rule.decision
        if verdict is None:
            # Evaluate once more, collecting the probes, only on this (rare) path.
            pending: list[Probe] = []
            rule.condition.evaluate(facts, snapshot, answers, pending)
            return index, Decision(STABLE, "unknown", rule.id, tuple(pending))
    return len(snapshot.rules), _NO_MATCH


def _decide_sticky(
    facts: RequestFacts, snapshot: Snapshot, answers: Answers, sticky: StickyCookie
) -> Decision:
    """The rules, with the first sticky percentage answered by the request's cookie when it
    carries a valid one; otherwise the decision says which cookie to set, once the walk has
    reached that percentage (an earlier rule deciding, or a request without the key, leaves
    the user unplaced)."""
    pinned = snapshot.ruleset.pinned
    assert pinned is not None
    position, node, target, negated = pinned
    # The rule's share in buckets: under ``not``, the node admits the users the rule leaves.
    share = BUCKETS - node.threshold if negated else node.threshold
    placed = sticky.pinned(facts.cookie(sticky.name), node.salt, target, share)
    facts.pin = None if placed is None else (node, placed is not negated)
    index, decision = _first_rule(facts, snapshot, answers)
    unknown = decision.reason == "unknown"
    if unknown or index < position or placed is not None or not node.read(facts):
        return decision
    inside = bool(node.evaluate(facts, snapshot, answers, None)) is not negated
    cookie = sticky.set_cookie(node.salt, target, inside, share)
    return Decision(decision.target, decision.reason, decision.rule_id, (), cookie)


def decide_or_stable(
    facts: RequestFacts,
    snapshot: Snapshot,
    answers: Answers,
    overrides: Overrides = NO_OVERRIDES,
) -> Decision:
    """``decide``, or stable (reason ``error``) if it raises: whatever a request or the
    store's data hits in the rules, the request is served, never a 500. Each place that
    raises is logged once, with the frames that led there."""
    try:
        return decide(facts, snapshot, answers, overrides)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = (type(exc).__name__, frames[-1].filename, frames[-1].lineno or 0)
        if where not in _LOGGED:
            _LOGGED.add(where)  # bounded by the lines of code that can raise
            # The frames and the type, not the message: it may quote the request's bytes.
            logger.error(
                "canary_mw: deciding a request raised %s; it is served by stable (reason "
                "'error'). Where:\n%s", type(exc).__name__,
                "".join(traceback.format_list(frames)).rstrip(),
            )  # fmt: skip
        return _ERROR
