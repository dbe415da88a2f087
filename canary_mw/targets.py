"""From a decision's target to the upstream that serves it (shared by ASGI and WSGI)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from .outcome import STABLE, Decision
from .snapshot import Snapshot
from .upstreams import Upstream

__all__ = ["Targets", "placement_cookie"]

logger = logging.getLogger("canary_mw")


def placement_cookie(decision: Decision, secure: bool) -> bytes | None:
    """The Set-Cookie value placing the user (``sticky_cookie``), ``Secure`` over TLS, or None
    when the decision placed nobody."""
    cookie = decision.set_cookie
    if cookie is None or not secure:
        return cookie
    return cookie + b"; Secure"


class Targets:
    """Resolves targets against the code's upstreams, the store's overrides (per name, per
    host) and the health of the backend URL each resolves to; builds each target's response
    tag once."""

    def __init__(self, upstreams: Mapping[str, Upstream], tag_header: bytes | None):
        self.upstreams = dict(upstreams)
        self._tag_header = tag_header
        self._tags: dict[str, list[tuple[bytes, bytes]]] = {}
        self._unknown: set[str] = set()

    def tag(self, target: str) -> list[tuple[bytes, bytes]]:
        """The response tag for a target (empty when tagging is off)."""
        tag = self._tags.get(target)
        if tag is None:
            tag = [] if self._tag_header is None else [(self._tag_header, target.encode("ascii"))]
            self._tags[target] = tag
        return tag

    def response_headers(
        self, decision: Decision, secure: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """The headers a response to ``decision`` gets: the tag, and the sticky cookie when
        the decision placed the user (``Secure`` when the request came over TLS)."""
        tag = self.tag(decision.target)
        cookie = placement_cookie(decision, secure)
        return tag if cookie is None else [*tag, (b"set-cookie", cookie)]

    def names(self, snapshot: Snapshot) -> set[str]:
        """Every upstream name known to the code or the store."""
        return set(self.upstreams) | set(snapshot.upstreams)

    def backends(self, snapshot: Snapshot) -> dict[str, Upstream]:
        """Every backend URL an upstream name can resolve to (per host included), by key:
        the ones the store names, and the code's for names the store does not route for
        every host."""
        found: dict[str, Upstream] = {}
        for name in sorted(self.names(snapshot)):
            route = snapshot.upstreams.get(name)
            candidates = route.all() if route is not None else []
            if route is None or route.default is None:
                candidates += [self.upstreams[name]] if name in self.upstreams else []
            for upstream in candidates:
                found.setdefault(upstream.key, upstream)
        return found

    def resolve(
        self,
        decision: Decision,
        snapshot: Snapshot,
        host: str,
        ejected: AbstractSet[str] = frozenset(),
    ) -> tuple[Decision, Upstream | None]:
        """The decision to record and the upstream to forward to (None: serve stable).
        ``ejected``: backend URLs out of service (Upstream.key); only a request whose own
        backend is among them is served by stable."""
        target = decision.target
        if target == STABLE:
            return decision, None
        route = snapshot.upstreams.get(target)
        upstream = route.pick(host) if route is not None else None
        if upstream is None:
            upstream = self.upstreams.get(target)
        if upstream is None:
            if target not in self._unknown:
                self._unknown.add(target)
                logger.warning(
                    "canary_mw: rule %r routes to upstream %r, which is configured neither "
                    "in code nor in the store; serving stable. Known upstreams: %s",
                    decision.rule_id, target, sorted(self.names(snapshot)),
                )  # fmt: skip
            return Decision(STABLE, "no-upstream", decision.rule_id), None
        if upstream.key in ejected:
            return Decision(STABLE, "ejected", decision.rule_id), None
        return decision, upstream
