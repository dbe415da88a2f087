"""Health per backend URL, without I/O: the state machine driven by tables and a fake clock,
the shared records, the check round as a plan (driven by hand and by both runners over a
mock transport), the router's view of it, the store commands and what ``status`` shows."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import httpx
import pytest

from canary_mw.admin.backends import health_lines, health_view
from canary_mw.engine.builder import SnapshotBuilder
from canary_mw.errors import StoreError
from canary_mw.health import (
    AsyncChecker,
    BackendHealth,
    Backends,
    BackendState,
    BlockingChecker,
    HealthCheck,
    SharedState,
    check_round,
    read_shared,
)
from canary_mw.health.loop import Probe, Share
from canary_mw.health.state import after_check, after_request, is_ejected, to_share
from canary_mw.outcome import CANARY, STABLE, Decision
from canary_mw.rules import DEFAULT_RULES
from canary_mw.snapshot import Snapshot
from canary_mw.stores.layout import Layout, StoreState
from canary_mw.targets import Targets
from canary_mw.upstreams import parse_upstream_document, parse_upstreams

POLICY = HealthCheck(interval=1, unhealthy_after=2, healthy_after=2, passive_after=3)
TTL = POLICY.ttl
A, B = "http://canary-a:8000", "http://canary-b:8000"


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the state machine ---------------------------------------------------------------------
# Events: "ok" / "fail" (active checks), "refused" / "connected" (forwarded requests); each
# one second after the previous. Expected: the verdict and the counters after the last one.
TRANSITIONS = [
    ("one good check decides nothing", ["ok"], None, 0, 1, 0),
    ("healthy_after good checks: healthy", ["ok", "ok"], True, 0, 2, 0),
    ("one failure decides nothing", ["fail"], None, 1, 0, 0),
    ("unhealthy_after failures: ejected", ["fail", "fail"], False, 2, 0, 0),
    ("a success between failures resets them", ["fail", "ok", "fail"], None, 1, 0, 0),
    ("ejected, then one good check: still ejected", ["fail", "fail", "ok"], False, 0, 1, 0),
    ("ejected, then healthy_after good: restored", ["fail", "fail", "ok", "ok"], True, 0, 2, 0),
    ("healthy, one failure: still healthy", ["ok", "ok", "fail"], True, 1, 0, 0),
    ("passive_after refused requests: ejected", ["refused"] * 3, False, 0, 0, 0),
    ("a connected request resets refusals", ["refused", "refused", "connected", "refused"],
     None, 0, 0, 1),
    ("passive ejection needs fresh good checks", ["ok", "ok", "refused", "refused", "refused",
                                                  "ok"], False, 0, 1, 0),
    ("...and healthy_after of them restore", ["ok", "ok", "refused", "refused", "refused", "ok",
                                              "ok"], True, 0, 2, 0),
    ("refusals while ejected keep it ejected", ["fail", "fail", "refused"], False, 2, 0, 1),
]  # fmt: skip


def play(
    events: Sequence[str], policy: HealthCheck = POLICY, start: float = 1000.0
) -> BackendState:
    state = BackendState()
    for second, event in enumerate(events):
        now = start + second
        if event in ("ok", "fail"):
            state = after_check(state, event == "ok", f"saw {event}", now, policy)
        else:
            state = after_request(state, event == "refused", now, policy)
    return state


@pytest.mark.parametrize(
    ("events", "healthy", "failures", "successes", "refused"),
    [case[1:] for case in TRANSITIONS], ids=[case[0] for case in TRANSITIONS],
)  # fmt: skip
def test_transitions(
    events: list[str], healthy: bool | None, failures: int, successes: int, refused: int
) -> None:
    state = play(events)
    assert (state.healthy, state.failures, state.successes, state.refused) == (
        healthy, failures, successes, refused,
    )  # fmt: skip


def test_a_verdict_change_is_unshared_until_the_store_takes_it() -> None:
    state = play(["fail", "fail"])
    assert (state.shared, state.since, state.reason) == (False, 1001.0, "2 checks failed: saw fail")
    assert play(["fail"]).shared is True  # no verdict change, nothing to write


def test_passive_checks_can_be_turned_off() -> None:
    policy = replace(POLICY, passive_after=None)
    assert play(["refused"] * 10, policy).healthy is None


def test_an_ejection_holds_for_ttl_after_the_last_failed_check() -> None:
    state = play(["fail", "fail"])  # ejected at 1001
    assert is_ejected(state, 1001 + TTL - 0.1)
    assert not is_ejected(state, 1001 + TTL)  # nobody confirmed it: it lapses here
    state = after_check(state, False, "still down", 1050.0, POLICY)
    assert state.until == 1050 + TTL  # every failed check holds it on
    assert not is_ejected(play(["ok", "ok"]), 1002)


# -- what an instance writes to the store ------------------------------------------------
EJECTED = play(["fail", "fail"])  # since 1001, unshared
EJECTED_SHARED = replace(EJECTED, shared=True)
HEALTHY_SHARED = replace(play(["ok", "ok"]), shared=True)
NOW = 1010.0


def record(healthy: bool, until: float, by: str = "other:1") -> SharedState:
    return SharedState(healthy, 900.0, until, "theirs", by)


SHARE = [
    ("no verdict yet: nothing", BackendState(), None, None),
    ("own change: written", EJECTED, record(True, NOW + TTL), (False, 1001.0, NOW + TTL)),
    ("no record in the store: written", HEALTHY_SHARED, None, (True, 1001.0, NOW + TTL)),
    ("agreeing record, young: nothing", EJECTED_SHARED, record(False, NOW + TTL * 0.9), None),
    ("agreeing record, past half its life: renewed", EJECTED_SHARED,
     record(False, NOW + TTL * 0.4), (False, 900.0, NOW + TTL)),
    ("another instance's verdict, no change of ours: kept", HEALTHY_SHARED,
     record(False, NOW + TTL * 0.4), None),
    ("a record written by hand never lapses: nothing", EJECTED_SHARED,
     record(False, math.inf), None),
    ("...nor is it overwritten, even by a change of ours", replace(HEALTHY_SHARED, shared=False),
     record(False, math.inf), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "stored", "expected"), [case[1:] for case in SHARE], ids=[c[0] for c in SHARE]
)
def test_to_share(
    state: BackendState, stored: SharedState | None, expected: tuple[bool, float, float] | None
) -> None:
    written = to_share(state, stored, NOW, POLICY, "me:1")
    if expected is None:
        assert written is None
    else:
        assert written is not None
        assert (written.healthy, written.since, written.until, written.by) == (*expected, "me:1")


DECODE = [
    ("ours", '{"healthy":false,"since":1,"until":2,"reason":"r","by":"h:1"}',
     SharedState(False, 1.0, 2.0, "r", "h:1")),
    ("by hand, no until", '{"healthy": false}', SharedState(False, 0.0, math.inf)),
    ("not JSON", "\xff not json", None),
    ("not an object", "[1]", None),
    ("healthy is not a boolean", '{"healthy": "no"}', None),
    ("until is not a number", '{"healthy": false, "until": "soon"}', None),
    ("until is NaN", '{"healthy": false, "until": NaN}', None),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in DECODE], ids=[c[0] for c in DECODE])
def test_decode(raw: str, expected: SharedState | None) -> None:
    assert SharedState.decode(raw) == expected


def test_encode_decode_round_trip() -> None:
    state = SharedState(True, 1.5, 2.5, "HTTP 200", "host:7")
    assert SharedState.decode(state.encode()) == state


def test_read_shared_ignores_lapsed_and_unreadable_records() -> None:
    raw = {
        A.encode(): record(False, NOW + 1).encode().encode(),
        B.encode(): record(False, NOW).encode().encode(),  # lapses exactly now
        b"http://c": b"garbage",
    }
    records, lapsed = read_shared(raw, NOW)
    assert list(records) == [A]
    assert lapsed == {B}


# -- BackendHealth: what the request path asks -------------------------------------------
def test_the_request_path_merges_own_ejections_with_the_store() -> None:
    clock = Clock()
    health = BackendHealth(POLICY, clock=clock)
    shared = frozenset({B})
    assert health.ejected(shared) is shared  # nothing of ours: the store's set, no copy
    woken: list[bool] = []
    health.wake = lambda: woken.append(True)
    for _ in range(3):
        health.request_result(A, refused=True)
    assert woken == [True]  # the loop is told at once, once
    merged = health.ejected(shared)
    assert merged == {A, B}
    assert health.ejected(shared) is merged  # cached while neither side changes
    clock.now += TTL + 1  # nobody confirmed our ejection: it lapses at the next round
    health.checked([])
    assert health.ejected(shared) is shared


def test_connected_requests_to_a_backend_without_refusals_change_nothing() -> None:
    health = BackendHealth(POLICY, clock=Clock())
    health.request_result(A, refused=False)
    assert health.states() == {}  # not even an entry: the common case costs one lookup


def test_backends_no_longer_configured_are_forgotten() -> None:
    health = BackendHealth(POLICY, clock=Clock())
    health.checked([(A, False, "x"), (A, False, "x"), (B, True, "y")])
    assert health.ejected(frozenset()) == {A}
    health.keep_only([B])
    assert set(health.states()) == {B}
    assert health.ejected(frozenset()) == frozenset()


# -- the check round as a plan --------------------------------------------------------------
def backends(shared: dict[str, SharedState] | None = None, lapsed: frozenset[str] = frozenset()
             ) -> Backends:  # fmt: skip
    return Backends({A: httpx.URL(A + "/healthz"), B: httpx.URL(B + "/healthz")},
                    shared or {}, lapsed)  # fmt: skip


def test_a_round_checks_every_backend_and_shares_verdict_changes() -> None:
    health = BackendHealth(POLICY, clock=Clock(), by="me:1")
    results = [(False, "refused"), (True, "HTTP 200")]
    plan = check_round(health, backends(lapsed=frozenset({"http://gone"})))
    assert next(plan) == Probe((httpx.URL(A + "/healthz"), httpx.URL(B + "/healthz")))
    with pytest.raises(StopIteration):  # one result each decides nothing: no write
        plan.send(results)
    plan = check_round(health, backends(lapsed=frozenset({"http://gone"})))
    next(plan)
    share = plan.send(results)
    assert isinstance(share, Share)
    assert {url: json.loads(raw)["healthy"] for url, raw in share.records.items()} == {
        A: False, B: True,
    }  # fmt: skip
    assert share.lapsed == ("http://gone",)  # deleted while writing anyway
    with pytest.raises(StopIteration) as done:
        plan.send(True)
    assert set(done.value.value) == {A, B}
    assert all(state.shared for state in health.states().values())


def test_a_write_the_store_refused_is_retried_next_round() -> None:
    health = BackendHealth(POLICY, clock=Clock(), by="me:1")
    health.checked([(A, False, "x"), (A, False, "x")])
    plan = check_round(health, backends())
    next(plan)
    share = plan.send([(False, "x"), (True, "y")])
    assert isinstance(share, Share)
    assert A in share.records
    with pytest.raises(StopIteration):
        plan.send(False)  # the store is down
    assert health.states()[A].shared is False
    plan = check_round(health, backends())
    next(plan)
    share = plan.send([(False, "x"), (True, "y")])
    assert isinstance(share, Share)
    assert A in share.records


def test_renewals_alone_are_written_without_an_announcement() -> None:
    """An announcement makes every router re-read and empty its membership cache: only a
    verdict that changes is worth that."""
    clock = Clock()
    health = BackendHealth(POLICY, clock=clock, by="me:1")
    health.checked([(A, False, "x"), (A, False, "x")])
    health.shared_ok({A: record(False, clock.now + TTL)})
    old = {A: record(False, clock.now + TTL * 0.4)}  # agreeing, past half its life
    plan = check_round(health, Backends({A: httpx.URL(A)}, old))
    next(plan)
    share = plan.send([(False, "x")])
    assert isinstance(share, Share)
    assert (list(share.records), share.announce) == ([A], False)
    plan = check_round(health, Backends({A: httpx.URL(A)}, {}))  # no record: a new one
    next(plan)
    share = plan.send([(False, "x")])
    assert isinstance(share, Share)
    assert share.announce is True


def test_a_round_with_nothing_to_share_writes_nothing() -> None:
    clock = Clock()
    health = BackendHealth(POLICY, clock=clock, by="me:1")
    health.checked([(A, True, "y"), (A, True, "y"), (B, True, "y"), (B, True, "y")])
    health.shared_ok({A: record(True, NOW + TTL), B: record(True, NOW + TTL)})
    young = {url: record(True, clock.now + TTL) for url in (A, B)}
    plan = check_round(health, backends(young))
    next(plan)
    with pytest.raises(StopIteration):
        plan.send([(True, "HTTP 200"), (True, "HTTP 200")])


def mock_backend(request: httpx.Request) -> httpx.Response:
    if request.url.host == "canary-a":
        raise httpx.ConnectError("refused", request=request)
    assert request.headers["x-canary-forwarded"] == "1"  # a router behind would not forward
    return httpx.Response(200)


def test_the_blocking_runner_drives_the_plan() -> None:
    health = BackendHealth(POLICY, clock=Clock(), by="me:1")
    writes: list[tuple[dict[str, str], list[str]]] = []
    rounds: list[BackendHealth] = []
    checker = BlockingChecker(
        health, backends, lambda records, lapsed, _: writes.append((dict(records), list(lapsed))),
        headers=[(b"x-canary-forwarded", b"1")], after_round=rounds.append,
    )  # fmt: skip
    with httpx.Client(transport=httpx.MockTransport(mock_backend),
                      headers={"x-canary-forwarded": "1"}) as client:  # fmt: skip
        assert checker.run_round(client) == {}
        taken = checker.run_round(client)
    assert {url: r.healthy for url, r in taken.items()} == {A: False, B: True}
    assert [sorted(records) for records, _ in writes] == [[A, B]]
    assert "ConnectError: refused" in health.states()[A].last_reason
    assert len(rounds) == 2


@pytest.mark.anyio
async def test_the_async_runner_drives_the_same_plan() -> None:
    health = BackendHealth(POLICY, clock=Clock(), by="me:1")
    writes: list[dict[str, str]] = []

    async def share(records: object, lapsed: object, announce: bool) -> None:
        writes.append(dict(records))  # type: ignore[call-overload]

    checker = AsyncChecker(health, backends, share)
    transport = httpx.MockTransport(mock_backend)
    async with httpx.AsyncClient(transport=transport,
                                 headers={"x-canary-forwarded": "1"}) as client:  # fmt: skip
        await checker.run_round(client)
        taken = await checker.run_round(client)
    assert {url: r.healthy for url, r in taken.items()} == {A: False, B: True}
    assert [sorted(records) for records in writes] == [[A, B]]


# -- the router's view: per host, per URL --------------------------------------------------
ROUTES = parse_upstream_document(
    {"canary": {"url": "http://canary-default:8000/", "hosts": {"a.example": A, "b.example": B}}}
)
CODE = parse_upstreams("http://canary-code:8000", {"v2": B})  # v2 shares a backend with b


def test_backends_are_every_url_a_name_resolves_to() -> None:
    targets = Targets(CODE, None)
    snapshot = Snapshot(upstreams=ROUTES)
    assert sorted(targets.backends(snapshot)) == [A, B, "http://canary-default:8000"]
    # Without a stored default, the code's URL serves the hosts the store does not name:
    routes = parse_upstream_document({"canary": {"hosts": {"a.example": A}}})
    assert sorted(targets.backends(Snapshot(upstreams=routes))) == [
        A, B, "http://canary-code:8000",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("host", "ejected", "target", "reason"),
    [
        ("a.example", {A}, STABLE, "ejected"),
        ("b.example", {A}, CANARY, "rule"),
        ("other.example", {A}, CANARY, "rule"),
        ("b.example", {B}, STABLE, "ejected"),
        ("a.example", {"canary"}, CANARY, "rule"),  # a name is no backend
    ],
)
def test_only_a_request_whose_own_backend_is_ejected_goes_to_stable(
    host: str, ejected: set[str], target: str, reason: str
) -> None:
    targets = Targets(CODE, None)
    decision, upstream = targets.resolve(
        Decision(CANARY, "rule", "r1"), Snapshot(upstreams=ROUTES), host, frozenset(ejected)
    )
    assert (decision.target, decision.reason) == (target, reason)
    assert (upstream is None) == (target == STABLE)


def test_snapshots_carry_valid_records_and_keep_the_ejected_set_while_it_holds() -> None:
    builder = SnapshotBuilder(DEFAULT_RULES)
    raw = {A.encode(): record(False, NOW + 5).encode().encode(),
           B.encode(): record(False, NOW - 1).encode().encode()}  # fmt: skip
    first = builder.update(StoreState({}, health=raw), now=NOW)
    assert first.ejected == {A}
    assert first.health_lapsed == {B}
    second = builder.update(StoreState({}, health=raw), now=NOW + 1)
    assert second.ejected is first.ejected  # routers' merged view stays cached
    unreadable = StoreState({}, health=RuntimeError("WRONGTYPE"))
    assert builder.update(unreadable, now=NOW + 2).ejected == {A}  # kept while it holds
    assert builder.update(unreadable, now=NOW + 5).ejected == frozenset()  # then it lapses
    assert builder.update(StoreState({}, health=raw), now=NOW + 5).ejected == frozenset()


# -- the store and status -----------------------------------------------------------------
def test_one_write_holds_every_record_and_deletes_the_lapsed() -> None:
    commands = Layout("p:").set_health({B: "b", A: "a"}, ["http://gone"])
    assert [args for _, args in commands] == [
        ("HSET", "p:health", A, "a", B, "b"),
        ("HDEL", "p:health", "http://gone"),
        ("PUBLISH", "p:changes", '{"what":"health","name":null}'),
    ]


def test_a_write_without_announcement_publishes_nothing() -> None:
    commands = Layout("p:").set_health({A: "a"}, announce=False)
    assert [args for _, args in commands] == [("HSET", "p:health", A, "a")]


def test_status_shows_every_url_with_its_routes_and_state() -> None:
    upstreams = {"canary": {"url": "http://canary-default:8000/",
                            "hosts": {"a.example": A, "b.example": B}}}  # fmt: skip
    raw = {
        A.encode(): SharedState(False, NOW, NOW + 30, "2 checks failed: refused", "h:1").encode(),
        B.encode(): SharedState(True, NOW, NOW + 30, "HTTP 200", "h:1").encode(),
        b"http://code-only:9000": SharedState(True, NOW, NOW - 1, "HTTP 200", "h:2").encode(),
    }
    view = health_view({k: v.encode() for k, v in raw.items()}, upstreams, now=NOW)
    assert {url: (entry["state"], entry["routes"]) for url, entry in view.items()} == {
        A: ("ejected", ["canary@a.example"]),
        B: ("healthy", ["canary@b.example"]),
        "http://canary-default:8000": ("not checked", ["canary"]),
        "http://code-only:9000": ("lapsed", []),
    }
    lines = "\n".join(health_lines(view))
    assert f"{A}  EJECTED  (canary@a.example): 2 checks failed: refused" in lines
    assert f"{B}  healthy  (canary@b.example): HTTP 200" in lines
    assert "http://code-only:9000  lapsed  (not in the store's upstreams)" in lines
    assert "canary-default" not in lines  # listed under upstreams; nothing to add here
    assert health_lines(health_view({}, upstreams, now=NOW)) == ["health", "  (no checks reported)"]


def test_a_store_outage_is_logged_once_and_the_verdict_written_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = BackendHealth(POLICY, clock=Clock(), by="me:1")
    health.checked([(A, False, "x")])  # one more failure in the round ejects A
    outage = [True, True, False]

    def share(records: object, lapsed: object, announce: bool) -> None:
        if outage.pop(0):
            raise StoreError("Redis is down")

    checker = BlockingChecker(health, backends, share)
    with httpx.Client(transport=httpx.MockTransport(mock_backend),
                      headers={"x-canary-forwarded": "1"}) as client:  # fmt: skip
        for _ in range(3):
            checker.run_round(client)
    messages = [r.getMessage() for r in caplog.records if r.name == "canary_mw.health"]
    assert sum("cannot share backend health" in m for m in messages) == 1, messages
    assert sum("shared again" in m for m in messages) == 1, messages
    assert health.states()[A].shared is True
    assert outage == []  # every round tried: the verdict was kept until the store took it
