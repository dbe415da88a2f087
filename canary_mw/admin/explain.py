"""``explain``: the decision for a described request as the routers would make it now.

Reads the store as a router's refresher does (the same snapshot builder), looks up every set
membership the rules ask about (as a router's lookups would), then hands the request to
:func:`canary_mw.trace.explain_decision`. Used by ``canary-mw explain`` and ``POST /explain``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from .. import conditions as c
from ..decide import NO_OVERRIDES, Overrides
from ..engine.builder import SnapshotBuilder
from ..errors import ConfigurationError
from ..facts import ASGIFacts, RequestFacts
from ..ipmatch import parse_ip
from ..keys import Probe
from ..rules import DEFAULT_RULES
from ..snapshot import Snapshot
from ..stores import Store
from ..trace import ConditionTrace, Explanation, explain_decision
from ..upstreams import Upstream, parse_upstreams

__all__ = ["RequestDescription", "explain_lines", "explain_request"]

#: Lookup rounds at most: each settles the probes one more level of conditions needs.
MAX_ROUNDS = 8


@dataclass(frozen=True)
class RequestDescription:
    """A request as an operator describes it: the client address the routers would resolve
    (after trusted proxies), headers, cookies, host, path (with an optional ``?query``)."""

    ip: str | None = None
    host: str = "localhost"
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)

    def facts(self) -> RequestFacts:
        if self.ip is not None and parse_ip(self.ip) is None:
            raise ConfigurationError(f"ip: {self.ip!r} is not an IP address")
        if not self.path.startswith("/"):
            raise ConfigurationError(f"path: {self.path!r} must start with '/'")
        path, _, query = self.path.partition("?")
        pairs = [(b"host", _wire(self.host, "host"))]
        for name, value in self.headers.items():
            if name.lower() in ("host", "cookie"):
                raise ConfigurationError(f"header {name!r}: give it as the host / cookies")
            pairs.append(
                (_wire(name.lower(), f"header {name!r}"), _wire(value, f"header {name!r}"))
            )
        if self.cookies:
            cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
            pairs.append((b"cookie", _wire(cookie, "cookies")))
        scope = {
            # As servers hand a request over: the path percent-decoded, the raw bytes encoded.
            "type": "http", "method": self.method.upper(), "path": unquote(path),
            "raw_path": quote(unquote(path), safe=_PATH_SAFE).encode("ascii"),
            "query_string": quote(query, safe=_QUERY_SAFE).encode("ascii"),
            "headers": pairs, "client": (self.ip, 0) if self.ip is not None else None,
        }  # fmt: skip
        return ASGIFacts(scope)


_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?%"


def _wire(text: str, what: str) -> bytes:
    """A header as a server hands it to the router: HTTP/1.1 carries bytes, which ASGI servers
    give as latin-1."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{what}: {text!r} cannot be sent in HTTP/1.1 as it is; percent-encode it"
        ) from None


def current_snapshot(store: Store) -> Snapshot:
    """The snapshot a router would hold after reading the store now (its default rules
    taken as canary_mw's: routers given other ``default_rules`` differ while none are stored)."""
    builder = SnapshotBuilder(DEFAULT_RULES)
    for _ in range(2):  # as Engine.refresh: read again when the rules name sets not yet read
        sets, lists = builder.wants()
        state = store.read_state(sets, lists)
        builder.update(state)
        if builder.covers(state):
            break
    return builder.current


def _nodes(node: c.Node) -> Iterator[c.Node]:
    yield node
    if isinstance(node, (c.All, c.Any)):
        for child in node.children:
            yield from _nodes(child)
    elif isinstance(node, c.Not):
        yield from _nodes(node.child)


def _answers(store: Store, facts: RequestFacts, snapshot: Snapshot) -> dict[Probe, bool]:
    """Every membership any condition of the rules asks about for this request, looked up in
    the store: also those behind a condition that decides first (``all`` stops at the first
    false), so the trace shows every condition's value, not "unknown"."""
    answers: dict[Probe, bool] = {}
    for _ in range(MAX_ROUNDS):
        pending: list[Probe] = []
        for rule in snapshot.ruleset.rules:
            for node in _nodes(rule.condition):
                node.evaluate(facts, snapshot, answers, pending)
        wanted = [probe for probe in dict.fromkeys(pending) if probe not in answers]
        if not wanted:
            break
        answers.update(store.lookup(wanted, within_budget=False))
    return answers


def explain_request(
    store: Store,
    request: RequestDescription,
    *,
    overrides: Overrides = NO_OVERRIDES,
    upstreams: Mapping[str, str] | None = None,
) -> Explanation:
    """The routers' decision for ``request`` now. ``overrides`` and ``upstreams`` are the
    routers' own (their force_header / force_cookie and canary_url / upstreams options),
    which the store does not hold."""
    facts = request.facts()
    snapshot = current_snapshot(store)
    own: dict[str, Upstream] = parse_upstreams(None, dict(upstreams or {}))
    return explain_decision(
        facts, snapshot, _answers(store, facts, snapshot), overrides=overrides, upstreams=own
    )


def _condition_lines(trace: ConditionTrace, depth: int) -> list[str]:
    pad = "     " + "  " * depth
    value = "unknown" if trace.value is None else str(trace.value).lower()
    head = json.dumps(dict(trace.condition), separators=(",", ":"))
    if trace.children:
        head = next(iter(trace.condition))
    lines = [f"{pad}{head}: {value} ({trace.why})"]
    for child in trace.children:
        lines += _condition_lines(child, depth + 1)
    return lines


def explain_lines(explanation: Explanation, request: RequestDescription) -> list[str]:
    """What ``canary-mw explain`` prints."""
    decision = explanation.decision
    because = {
        "rule": f"rule {decision.rule_id!r}", "no-match": "no rule matched",
        "unknown": f"rule {decision.rule_id!r} is unknown (a store answer is missing)",
        "mode-off": "mode off (kill switch)", "mode-all": "mode all",
        "override-header": "the force header", "override-cookie": "the force cookie",
        "no-upstream": f"rule {decision.rule_id!r} chose {explanation.ruled.target!r}, which "
                       "has no URL here (give the routers' own with --upstream NAME=URL)",
        "ejected": f"{explanation.ruled.target!r} is ejected (unhealthy)",
    }.get(decision.reason, decision.reason)  # fmt: skip
    where = explanation.upstream or "served by the app itself"
    lines = [
        f"decision  {decision.target}: {because}",
        f"upstream  {where}",
        f"request   {request.method.upper()} {request.host}{request.path} from "
        f"{request.ip or 'no address'}",
        f"mode      {explanation.mode}  (store version {explanation.version})",
    ]
    lines += [f"override  {line}" for line in explanation.overrides]
    lines.append("rules")
    for position, rule in enumerate(explanation.rules, 1):
        lines.append(f"  {position}. {rule.id} -> {rule.target}: {rule.outcome}")
        if rule.condition is not None:
            lines += _condition_lines(rule.condition, 0)
    if not explanation.rules:
        lines.append("  (none)")
    return lines
