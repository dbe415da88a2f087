"""The decision memo never changes an answer: over generated rule sets, requests, membership
answers arriving, expiring, being evicted and cleared, and snapshots replaced, the memo gives
exactly what ``decide`` gives, and notes for revalidation the stale answers it used."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from canary_mw import ASGIFacts, Overrides, Snapshot, decide, parse_rules
from canary_mw.clientip import ClientIPResolver
from canary_mw.engine.cache import MembershipCache
from canary_mw.engine.memo import DecisionMemo, memo_inputs
from canary_mw.ipmatch import IPMatcher, parse_network
from canary_mw.keys import IPKeyRef, SetRef
from canary_mw.stickycookie import StickyCookie

IPS = ["10.0.0.1", "10.0.0.2", "198.51.100.7", "2001:db8::1", "::ffff:10.0.0.1", "bogus"]
USERS = ["u1", "u2", "", "x" * 600]
PATHS = ["/", "/api/v1", "/api", "/static/a.css"]
HOSTS = ["example.org", "a.example.org", "EXAMPLE.org:8080", "other.net"]

LEAVES: list[dict[str, Any]] = [
    {"ip": ["10.0.0.0/8"]},
    {"ip": ["2001:db8::/32", "198.51.100.7"]},
    {"ip_in_set": "office"},
    {"legacy_ip_key": True},
    {"cookie": "uid", "in_set": "vip"},
    {"header": "X-User", "in_set": "vip"},
    {"cookie": "uid", "one_of": ["u1", "u3"]},
    {"cookie": "beta", "equals": "1"},
    {"header": "X-Beta", "present": True},
    {"header": "x-user", "matches": "^u[12]$"},
    {"query": "beta", "equals": "1"},
    {"host": ["example.org", "*.example.org"]},
    {"path_prefix": ["/api"]},
    {"path_matches": "^/static/"},
    {"method": ["POST"]},
    {"percent": 50, "by": "cookie:uid", "salt": "s"},
    {"percent": 30},
]


# Membership leaves are the ones whose answers come and go: draw them more often.
MEMBERSHIP = [leaf for leaf in LEAVES if "in_set" in leaf or "legacy_ip_key" in leaf]


def conditions() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.one_of(st.sampled_from(MEMBERSHIP), st.sampled_from(LEAVES))
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda x: {"not": x}, inner),
        ),
        max_leaves=5,
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    whens = draw(st.lists(conditions(), max_size=3))
    rules = [
        {"id": f"r{n}", "when": when, "target": draw(st.sampled_from(["canary", "stable", "b"])),
         "enabled": draw(st.booleans())}
        for n, when in enumerate(whens)
    ]  # fmt: skip
    office = draw(st.sampled_from([None, ["10.0.0.0/30"], ["198.51.100.0/24", "2001:db8::/64"]]))
    ip_sets = {} if office is None else {"office": IPMatcher([parse_network(n) for n in office])}
    mode = draw(st.sampled_from(["rules"] * 8 + ["off", "all"]))
    return Snapshot(mode=mode, ruleset=parse_rules({"rules": rules}), ip_sets=ip_sets)


# A stopped clock: the memo and decide, called a moment apart, set the same expiry.
_NOW = time.time()
STICKY = StickyCookie("placed", "a-secret-of-sixteen-or-more", clock=lambda: _NOW)


def sticky_values() -> st.SearchStrategy[str]:
    """Cookies the routers could have set, for the percentages LEAVES has (salt "s", and the
    rule ids a salt defaults to), at thresholds below, at and above theirs."""
    return st.builds(
        lambda salt, target, verdict, level: (
            STICKY.set_cookie(salt, target, verdict, level).decode().split(";")[0].split("=", 1)[1]
        ),
        st.sampled_from(["s", "r0", "r1", "r2"]),
        st.sampled_from(["canary", "b"]),
        st.booleans(),
        st.sampled_from([0, 3000, 5000, 9000]),
    )


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    headers = [(b"host", draw(st.sampled_from(HOSTS)).encode())]
    cookies = []
    for name, values in (("uid", USERS), ("beta", ["1", "0"]), ("force", ["always", "never"])):
        value = draw(st.sampled_from([None, *values]))
        if value is not None:
            cookies.append(f"{name}={value}")
    pin = draw(st.one_of(st.none(), st.sampled_from(["canary", "b.5000.x"]), sticky_values()))
    if pin is not None:
        cookies.append(f"{STICKY.name}={pin}")
    if cookies:
        headers.append((b"cookie", "; ".join(cookies).encode()))
    for name in (b"x-user", b"x-beta", b"x-force", b"x-forwarded-for"):
        value = draw(st.sampled_from([None, "u1", "u2", "1", "always", "10.0.0.2", "198.51.100.7"]))
        if value is not None:
            headers.append((name, value.encode()))
    peer = draw(st.sampled_from(IPS))
    return {
        "type": "http",
        "method": draw(st.sampled_from(["GET", "POST"])),
        "path": draw(st.sampled_from(PATHS)),
        "raw_path": b"/",
        "query_string": draw(st.sampled_from([b"", b"beta=1", b"beta=0&beta=1"])),
        "headers": headers,
        "client": (peer, 40000),
    }


PROBES = [(SetRef("vip"), user) for user in USERS[:2]] + [
    (IPKeyRef(None), ip) for ip in ("10.0.0.1", "10.0.0.2", "198.51.100.7")
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Operation = tuple[str, Any]


def operations() -> st.SearchStrategy[list[Operation]]:
    return st.lists(
        st.one_of(
            # A request, then (as the engine would) an answer for what it waited for, if any.
            st.tuples(st.just("request"), st.tuples(st.integers(0, 3), st.booleans())),
            st.tuples(st.just("request"), st.tuples(st.integers(0, 3), st.booleans())),
            st.tuples(st.just("request"), st.tuples(st.integers(0, 3), st.booleans())),
            st.tuples(st.just("request"), st.tuples(st.integers(0, 3), st.booleans())),
            st.tuples(st.just("answers"), st.dictionaries(st.sampled_from(PROBES), st.booleans())),
            # The set changing under answers already given out.
            st.tuples(st.just("flip"), st.none()),
            st.tuples(st.just("tick"), st.sampled_from([0.1, 0.3, 0.5, 0.7, 2.0])),
            st.tuples(st.just("clear"), st.none()),
            st.tuples(st.just("snapshot"), snapshots()),
        ),
        min_size=8,
        max_size=40,
    )


RESOLVERS = [ClientIPResolver(), ClientIPResolver(["10.0.0.0/8"], headers=["x-forwarded-for"])]


VIP_RULES = Snapshot(ruleset=parse_rules({"rules": [
    {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "canary"}]}))  # fmt: skip
U1 = {"type": "http", "headers": [(b"cookie", b"uid=u1")], "client": ("10.0.0.1", 1)}
U2 = {"type": "http", "headers": [(b"cookie", b"uid=u2")], "client": ("10.0.0.1", 1)}


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=snapshots(),
    requests=st.lists(scopes(), min_size=4, max_size=4),
    ops=operations(),
    overrides=st.sampled_from(
        [Overrides(), Overrides(header="X-Force", cookie="force"), Overrides(sticky=STICKY)]
    ),
    resolver=st.sampled_from(RESOLVERS),
    cache_size=st.sampled_from([1, 2, 100]),
    memo_size=st.sampled_from([1, 3, 4096]),
)
# The ways a remembered answer goes out of date, as fixed examples besides the generated ones.
@example(
    VIP_RULES,
    [U1, U2, U1, U2],
    [("request", (0, True)), ("request", (0, True)), ("clear", None), ("request", (0, True))],
    Overrides(),
    RESOLVERS[0],
    100,
    4096,
)
@example(
    VIP_RULES,
    [U1, U2, U1, U2],
    [
        ("request", (0, True)),
        ("request", (0, True)),
        ("tick", 0.5),
        ("request", (0, True)),
        ("tick", 2.0),
        ("request", (0, True)),
    ],
    Overrides(),
    RESOLVERS[0],
    100,
    4096,
)
@example(
    VIP_RULES,
    [U1, U2, U1, U2],
    [("request", (0, True)), ("request", (0, True)), ("flip", None), ("request", (0, True))],
    Overrides(),
    RESOLVERS[0],
    100,
    4096,
)
@example(
    VIP_RULES,
    [U1, U2, U1, U2],
    [
        ("request", (0, True)),
        ("request", (0, True)),
        ("request", (1, False)),
        ("request", (1, False)),
        ("request", (0, True)),
    ],
    Overrides(),
    RESOLVERS[0],
    1,
    4096,
)  # the cache holds one answer: u1's is evicted
def test_memo_on_and_off_decide_alike(
    first: Snapshot,
    requests: list[dict[str, Any]],
    ops: list[Operation],
    overrides: Overrides,
    resolver: ClientIPResolver,
    cache_size: int,
    memo_size: int,
) -> None:
    clock = Clock()
    # Two caches fed the same answers: one read through the memo, one by decide itself.
    with_memo = MembershipCache(maxsize=cache_size, ttl=0.5, stale=0.4, clock=clock)
    without = MembershipCache(maxsize=cache_size, ttl=0.5, stale=0.4, clock=clock)
    memo = DecisionMemo(with_memo, overrides, maxsize=memo_size)
    snapshot = first
    answered: dict[Any, bool] = {}
    for kind, arg in ops:
        fetched: dict[Any, bool] = {}
        if kind == "request":
            scope, answer = requests[arg[0]], arg[1]
            expected = decide(ASGIFacts(scope, resolver), snapshot, without, overrides)
            assert memo.decide(ASGIFacts(scope, resolver), snapshot) == expected
            # Stale answers the memo's decisions used are noted for revalidation as decide
            # notes them; one a remembered decision never needed (``any`` settled by another
            # operand before the answer came) is not, which changes no decision.
            assert with_memo.stale <= without.stale
            fetched = dict.fromkeys(expected.pending, answer)  # as the engine would look up
        elif kind == "answers":
            fetched = arg
        elif kind == "flip":
            fetched = {probe: not value for probe, value in answered.items()}
        elif kind == "tick":
            clock.now += arg
        elif kind == "clear":
            with_memo.clear()
            without.clear()
        else:
            snapshot = arg
        answered.update(fetched)
        for cache in (with_memo, without):
            cache.put_many(fetched, cache.generation)


def test_a_returning_request_is_answered_from_the_memo() -> None:
    snapshot = Snapshot(ruleset=parse_rules({"rules": [
        {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "canary"}]}))  # fmt: skip
    cache = MembershipCache(ttl=0.5, clock=Clock())
    cache.put_many({(SetRef("vip"), "u1"): True}, cache.generation)
    memo = DecisionMemo(cache, Overrides())
    scope = {"type": "http", "headers": [(b"cookie", b"uid=u1; other=x")], "client": ("a", 1)}
    first = memo.decide(ASGIFacts(scope), snapshot)
    assert first.target == "canary"
    cache._data.clear()  # were the rules walked again, the answer would now be missing
    assert memo.decide(ASGIFacts(scope), snapshot) is first


def test_inputs_are_what_the_rules_read() -> None:
    snapshot = Snapshot(ruleset=parse_rules({"rules": [
        {"id": "a", "when": {"all": [{"ip": ["10.0.0.0/8"]}, {"cookie": "uid", "in_set": "v"}]}},
        {"id": "b", "when": {"not": {"header": "X-Beta", "equals": "1"}}},
        {"id": "c", "when": {"percent": 5, "by": "query:u"}, "enabled": False},
    ]}))  # fmt: skip
    assert memo_inputs(snapshot, Overrides(cookie="force")) == (
        ("cookie", "force"), ("cookie", "uid"), ("header", "x-beta"), ("ip", ""),
    )  # fmt: skip
