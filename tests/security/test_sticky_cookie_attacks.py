"""Hostile review of the sticky assignment cookie (``sticky_cookie=``): a client trying to
reach the canary (or pin itself) without having been placed, requests trying to make the
decision raise or cost more than linear time, Set-Cookie going where it should not, the memo
disagreeing with ``decide``, and the operator-facing promises of docs/rollouts.md, in process
and through real servers (uvicorn for CanaryRouter, gunicorn for CanaryWSGI)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from canary_mw import (
    ASGIFacts,
    CanaryRouter,
    Overrides,
    Snapshot,
    WSGIFacts,
    decide,
    parse_rules,
    store_from_url,
)
from canary_mw.asgi import DECISION_KEY
from canary_mw.engine.cache import MembershipCache
from canary_mw.engine.memo import DecisionMemo
from canary_mw.sticky import bucket
from canary_mw.stickycookie import StickyCookie
from tests.support.routers import start_router
from tests.support.servers import AppServer, RedisServer, free_port, uvicorn_command, wait_until

NAME = "canary_mw_version"
SECRET = "hostile-review-secret-0123456789"
# A stopped clock, so that two decisions a moment apart set the same expiry (values stay
# valid on the real servers below for the hour after the import).
_NOW = time.time()
STICKY = StickyCookie(NAME, SECRET, max_age=3600, clock=lambda: _NOW)
WITH_STICKY = Overrides(sticky=STICKY)
SALT = "attack-salt"
CANARY_BODY = "This is version 2\n"
STABLE_BODY = "This is version 1\n"


def rules(percent: float, target: str = "canary", salt: str = SALT, *before: Any) -> Snapshot:
    pct = {"id": "pct", "target": target,
           "when": {"percent": percent, "by": "cookie:uid", "salt": salt}}  # fmt: skip
    return Snapshot(ruleset=parse_rules({"rules": [*before, pct]}))


def scope(cookie: str | None = None, *extra: tuple[bytes, bytes]) -> dict[str, Any]:
    headers = [(b"host", b"example.org"), *extra]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    return {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"",
            "headers": headers, "client": ("198.51.100.1", 1234)}  # fmt: skip


def facts(uid: str | None, sticky: str | None = None) -> ASGIFacts:
    cookies = [] if uid is None else [f"uid={uid}"]
    if sticky is not None:
        cookies.append(f"{NAME}={sticky}")
    return ASGIFacts(scope("; ".join(cookies) if cookies else None))


def value_of(set_cookie: bytes | None) -> str:
    assert set_cookie is not None
    head = set_cookie.decode("latin-1").split(";")[0]
    name, _, value = head.partition("=")
    assert name == NAME
    return value


def minted(salt: str, target: str, verdict: bool, level: int, sticky: StickyCookie = STICKY) -> str:
    return value_of(sticky.set_cookie(salt, target, verdict, level))


def uid_with(salt: str, low: int, high: int, skip: int = 0) -> str:
    """A user id whose bucket under ``salt`` is in [low, high)."""
    found = (str(n) for n in range(100_000) if low <= bucket(salt, str(n)) < high)
    for _ in range(skip):
        next(found)
    return next(found)


OUT = uid_with(SALT, 9000, 10_000)  # stable at every percentage below 90
IN_25 = uid_with(SALT, 500, 2500)  # canary at 25 %, stable at 5 %


# -- a client without a placement ---------------------------------------------------------

REAL = minted(SALT, "canary", True, 2500)
MAC = REAL.rsplit(".", 1)[1]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(minted("other-salt", "canary", True, 2500), id="other-salt"),
        pytest.param(minted("", "canary", True, 2500), id="empty-salt"),
        pytest.param(minted(SALT, "beta", True, 2500), id="other-target"),
        pytest.param(
            minted(SALT, "canary", True, 2500, StickyCookie(NAME, "x" * 16)), id="other-secret"
        ),
        pytest.param(REAL[:-1], id="truncated-mac"),
        pytest.param(REAL + "=", id="padded-mac"),
        pytest.param(REAL + "A", id="longer-mac"),
        pytest.param(f"canary.2500.{MAC.swapcase()}", id="case-flipped-mac"),
        pytest.param(f"Canary.2500.{MAC}", id="version-case"),
        pytest.param(f"canary.02500.{MAC}", id="leading-zero"),
        pytest.param(f"canary.+2500.{MAC}", id="plus-sign"),
        pytest.param(f"canary. 2500.{MAC}", id="space-in-threshold"),
        pytest.param(f"canary.2500.{MAC}\x00", id="nul"),
        pytest.param(f"canary.2500.{MAC[:-1]}\xe9", id="latin1-mac"),
        pytest.param(f"canary.10001.{MAC}", id="above-buckets"),
        pytest.param(f"canary.2500.{MAC}" + "A" * 100_000, id="very-long"),
        pytest.param("canary." * 3, id="dots"),
        pytest.param(f"stable.2500.{MAC}", id="mac-moved-to-stable"),
    ],
)
def test_a_cookie_the_routers_did_not_sign_for_this_rule_gives_no_canary(value: str) -> None:
    decision = decide(facts(OUT, value), rules(25), {}, WITH_STICKY)
    assert decision.target == "stable"
    assert value_of(decision.set_cookie).startswith("stable.2500.")  # and it is overwritten


def test_the_cookie_really_is_what_routes_those_requests() -> None:
    """The control for the test above: the genuine value does give the canary to OUT."""
    assert decide(facts(OUT, REAL), rules(25), {}, WITH_STICKY).target == "canary"
    assert decide(facts(OUT, f'"{REAL}"'), rules(25), {}, WITH_STICKY).target == "canary"


def test_a_canary_cookie_does_not_follow_the_user_to_another_upstream_or_rollout() -> None:
    assert decide(facts(OUT, REAL), rules(25, target="beta"), {}, WITH_STICKY).target == "stable"
    assert decide(facts(OUT, REAL), rules(25, salt="next"), {}, WITH_STICKY).target == "stable"


def test_a_stable_cookie_cannot_be_replayed_past_a_rise() -> None:
    """A user kept out at 5 % and placed afresh once the percentage passes what it recorded."""
    out_at_5 = minted(SALT, "canary", False, 500)
    kept = decide(facts(IN_25, out_at_5), rules(5), {}, WITH_STICKY)
    assert (kept.target, kept.set_cookie) == ("stable", None)
    risen = decide(facts(IN_25, out_at_5), rules(25), {}, WITH_STICKY)
    assert risen.target == "canary"
    assert value_of(risen.set_cookie).startswith("canary.2500.")


def test_the_first_of_repeated_cookies_counts_and_a_forged_one_first_wins_nothing() -> None:
    forged = f"canary.2500.{'A' * 22}"
    header = f"uid={OUT}; {NAME}={forged}; {NAME}={REAL}"
    assert decide(ASGIFacts(scope(header)), rules(25), {}, WITH_STICKY).target == "stable"
    # Two Cookie header lines are joined as one: the same rule.
    two = ASGIFacts(scope(None, (b"cookie", f"uid={OUT}; {NAME}={forged}".encode()),
                          (b"cookie", f"{NAME}={REAL}".encode())))  # fmt: skip
    assert decide(two, rules(25), {}, WITH_STICKY).target == "stable"
    # A name that merely ends or starts with the sticky name is another cookie.
    for other in (f"x{NAME}", f"{NAME}x", f"{NAME}[0]"):
        spoof = ASGIFacts(scope(f"uid={OUT}; {other}={REAL}"))
        assert decide(spoof, rules(25), {}, WITH_STICKY).target == "stable"


def test_a_threshold_lookalike_never_raises_in_either_facts() -> None:
    weird = ["\xb2", "\u0662\u0665\u0660\u0660", "\uff12\uff15", "2\u200b5", "-0", "1e3"]
    for level in weird:
        value = f"canary.{level}.{MAC}"
        for made in (
            facts(OUT, value.encode("utf-8").decode("latin-1")),
            WSGIFacts({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": "example.org",
                       "REMOTE_ADDR": "198.51.100.1",
                       "HTTP_COOKIE": f"uid={OUT}; {NAME}={value}".encode().decode("latin-1")}),
        ):  # fmt: skip
            assert decide(made, rules(25), {}, WITH_STICKY).target == "stable"


def test_many_thresholds_cost_no_memory_and_time_stays_linear() -> None:
    """Made-up thresholds and megabyte headers: each request costs at most one HMAC and a
    scan of its own header."""
    for level in range(0, 10_001, 7):
        decide(facts(OUT, f"canary.{level}.{MAC}"), rules(25), {}, WITH_STICKY)
    assert len(STICKY._signatures) <= 256

    def cost(size: int) -> float:
        header = f"uid={OUT}; " + f"{NAME}x=canary.2500.{MAC}; " * size + f"{NAME}={'.' * size}"
        started = time.perf_counter()
        for _ in range(3):
            decide(ASGIFacts(scope(header)), rules(25), {}, WITH_STICKY)
        return time.perf_counter() - started

    small, large = cost(2_000), cost(40_000)
    assert large < 2.0
    assert large < small * 20 * 4 + 0.05  # 20x the input: far from 400x


# -- who gets a Set-Cookie ----------------------------------------------------------------


def test_no_cookie_when_an_earlier_rule_the_kill_switch_or_mode_all_decides() -> None:
    office = {"id": "office", "target": "canary", "when": {"header": "X-Office", "equals": "1"}}
    by_office = decide(
        ASGIFacts(scope(f"uid={OUT}", (b"x-office", b"1"))), rules(25, "canary", SALT, office),
        {}, WITH_STICKY,
    )  # fmt: skip
    assert (by_office.rule_id, by_office.set_cookie) == ("office", None)
    for mode in ("off", "all"):
        snapshot = Snapshot(mode=mode, ruleset=rules(25).ruleset)
        assert decide(facts(IN_25), snapshot, {}, WITH_STICKY).set_cookie is None
        assert decide(facts(OUT, REAL), snapshot, {}, WITH_STICKY).set_cookie is None
    stable_first = {"id": "hold", "target": "stable",
                    "when": {"percent": 100, "by": "cookie:uid", "salt": "h"}}  # fmt: skip
    held = decide(facts(IN_25), rules(25, "canary", SALT, stable_first), {}, WITH_STICKY)
    assert (held.rule_id, held.set_cookie) == ("hold", None)


def test_a_pending_lookup_before_the_percentage_sets_no_cookie_until_settled() -> None:
    vip = {"id": "vip", "target": "canary", "when": {"cookie": "uid", "in_set": "vip"}}
    snapshot = rules(25, "canary", SALT, vip)
    unknown = decide(facts(IN_25), snapshot, {}, WITH_STICKY)
    assert (unknown.reason, unknown.set_cookie) == ("unknown", None)
    (probe,) = unknown.pending
    settled = decide(facts(IN_25), snapshot, {probe: False}, WITH_STICKY)
    assert settled.target == "canary"
    assert value_of(settled.set_cookie).startswith("canary.2500.")


def test_the_memo_gives_what_decide_gives_over_nested_and_disabled_percentages() -> None:
    doc = {"rules": [
        {"id": "off", "target": "canary", "enabled": False,
         "when": {"percent": 90, "by": "cookie:uid", "salt": "d"}},
        {"id": "hold", "target": "stable", "when": {"percent": 10, "by": "cookie:uid", "salt": "h"}},
        {"id": "mix", "target": "canary", "when": {"all": [
            {"any": [{"percent": 30, "by": "cookie:uid", "salt": "a"},
                     {"not": {"percent": 60, "by": "cookie:uid", "salt": "b"}}]},
            {"not": {"cookie": "uid", "in_set": "blocked"}}]}},
        {"id": "late", "target": "b", "when": {"percent": 50, "by": "cookie:uid", "salt": "a"}},
    ]}  # fmt: skip
    snapshot = Snapshot(ruleset=parse_rules(doc))
    pinned = snapshot.ruleset.pinned
    assert pinned is not None
    assert pinned[1].salt == "a"
    cookies: list[str | None] = [None, "junk", REAL]
    for salt in ("a", "b", "d"):
        for target in ("canary", "b"):
            for verdict in (True, False):
                for level in (0, 3000, 9000):
                    cookies.append(minted(salt, target, verdict, level))
    users = [None, "", *map(str, range(40))]
    for answers_given in ({}, "all-false"):
        cache = MembershipCache(ttl=1000)
        plain_cache = MembershipCache(ttl=1000)
        memo = DecisionMemo(cache, WITH_STICKY)
        for _ in range(2):  # the second round is answered from the memo
            for uid in users:
                for cookie in cookies:
                    expected = decide(facts(uid, cookie), snapshot, plain_cache, WITH_STICKY)
                    assert memo.decide(facts(uid, cookie), snapshot) == expected
                    if answers_given and expected.pending:
                        fetched = dict.fromkeys(expected.pending, False)
                        cache.put_many(fetched, cache.generation)
                        plain_cache.put_many(fetched, plain_cache.generation)


# -- what the cookie promises (docs/rollouts.md#sticky-assignment) ------------------------


def test_a_dotted_upstream_name_keeps_its_placed_users() -> None:
    placed = decide(facts(IN_25), rules(25, target="canary.v2"), {}, WITH_STICKY)
    assert placed.target == "canary.v2"
    cookie = value_of(placed.set_cookie)
    assert cookie.startswith("canary.v2.2500.")
    lowered = decide(facts(IN_25, cookie), rules(5, target="canary.v2"), {}, WITH_STICKY)
    assert (lowered.target, lowered.set_cookie) == ("canary.v2", None)


NOT_RULES = {"id": "pct", "target": "canary",
             "when": {"not": {"percent": 75, "by": "cookie:uid", "salt": SALT}}}  # fmt: skip


def not_rules(percent: float) -> Snapshot:
    doc = {**NOT_RULES, "when": {"not": {**NOT_RULES["when"]["not"], "percent": percent}}}
    return Snapshot(ruleset=parse_rules({"rules": [doc]}))


def test_the_cookie_names_the_version_served_under_not() -> None:
    served_canary = uid_with(SALT, 8000, 10_000)
    decision = decide(facts(served_canary), not_rules(75), {}, WITH_STICKY)
    assert decision.target == "canary"
    assert value_of(decision.set_cookie).startswith("canary.")


def test_under_not_a_canary_user_keeps_canary_and_stable_users_follow_the_rule() -> None:
    served_canary = uid_with(SALT, 8000, 9000)
    cookie = value_of(decide(facts(served_canary), not_rules(75), {}, WITH_STICKY).set_cookie)
    shrunk = decide(facts(served_canary, cookie), not_rules(90), {}, WITH_STICKY)  # 10 % canary
    served_stable = uid_with(SALT, 0, 7500)
    kept_out = value_of(decide(facts(served_stable), not_rules(75), {}, WITH_STICKY).set_cookie)
    everyone = decide(facts(served_stable, kept_out), not_rules(0), {}, WITH_STICKY)
    assert (shrunk.target, everyone.target) == ("canary", "canary")


@pytest.mark.anyio
async def test_a_websocket_handshake_follows_the_cookie_and_sets_none() -> None:
    """As docs/rollouts.md says: a placed user's socket goes where their pages go."""
    seen: list[Any] = []

    async def stable(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get(DECISION_KEY))
        await send({"type": "websocket.close", "code": 1000})

    doc = rules(25).ruleset.to_document()
    router = CanaryRouter(
        stable, canary_url=f"http://127.0.0.1:{free_port()}", default_rules=doc,
        sticky_cookie=NAME, sticky_secret=SECRET, timeout=1,
    )  # fmt: skip
    kept_out = minted(SALT, "canary", False, 2500)
    ws = {**scope(f"uid={IN_25}; {NAME}={kept_out}"), "type": "websocket", "scheme": "ws",
          "subprotocols": []}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    try:
        await router(ws, receive, send)
    finally:
        await router.aclose()
    # The key alone would send it to the canary; the stable placement keeps it on stable,
    # and a handshake places nobody.
    assert [decision.target for decision in seen] == ["stable"]
    assert seen[0].set_cookie is None
    assert not any(b"set-cookie" in dict(m.get("headers", ())) for m in sent)


# -- real servers -------------------------------------------------------------------------

RULE_DOC = {"rules": [
    {"id": "office", "target": "canary", "when": {"header": "X-Office", "equals": "1"}},
    {"id": "pct", "target": "canary", "when": {"percent": 25, "by": "cookie:uid", "salt": SALT}},
]}  # fmt: skip


def gunicorn() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "2",
            "-b", "127.0.0.1:{port}", "--log-level", "warning",
            "tests.support.wsgi_apps:make_app()"]  # fmt: skip


def asgi() -> list[str]:
    return uvicorn_command("tests.support.apps:make_router_app", factory=True)


@pytest.fixture(scope="module")
def canary() -> Iterator[AppServer]:
    server = AppServer(uvicorn_command("tests.support.apps:canary_app")).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def real(
    request: pytest.FixtureRequest, redis_srv: RedisServer, canary: AppServer
) -> Iterator[tuple[AppServer, str]]:
    store = f"{redis_srv.url}?prefix=sticky{free_port()}:"
    server = start_router(
        store, command=asgi() if request.param == "uvicorn" else gunicorn(),
        upstreams={"canary": canary.url}, default_rules=RULE_DOC,
        sticky_cookie=NAME, sticky_secret=SECRET, sticky_max_age=3600,
    )  # fmt: skip
    yield server, store
    server.cleanup()


def sticky_cookies(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{NAME}=")]


def get(server: AppServer, *headers: tuple[str, str], method: str = "GET") -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.request(method, server.url + "/", headers=list(headers))


@pytest.mark.slow
def test_real_servers_place_honour_and_refuse(real: tuple[AppServer, str]) -> None:
    server, _ = real
    first = get(server, ("Cookie", f"uid={IN_25}"))
    assert first.text == CANARY_BODY
    (placed,) = sticky_cookies(first)
    value = placed.split(";")[0].split("=", 1)[1]
    # Signed with the shared secret for this rule (the server's clock set its own expiry).
    assert value.startswith("canary.2500.")
    assert STICKY.pinned(value, SALT, "canary", 2500) is True
    out = get(server, ("Cookie", f"uid={OUT}"))
    assert out.text == STABLE_BODY
    (kept_out,) = [c.split(";")[0].split("=", 1)[1] for c in sticky_cookies(out)]
    assert kept_out.startswith("stable.2500.")
    assert STICKY.pinned(kept_out, SALT, "canary", 2500) is False
    kept = get(server, ("Cookie", f"uid={OUT}; {NAME}={REAL}"))
    assert (kept.text, sticky_cookies(kept)) == (CANARY_BODY, [])
    head = get(server, ("Cookie", f"uid={OUT}"), method="HEAD")
    assert (head.status_code, len(sticky_cookies(head))) == (200, 1)
    # Forgeries through the wire, one and two Cookie lines, a forged one first.
    forged = f"canary.2500.{'A' * 22}"
    for headers in (
        [("Cookie", f"uid={OUT}; {NAME}={forged}")],
        [("Cookie", f"uid={OUT}; {NAME}={minted('x', 'canary', True, 2500)}")],
        [("Cookie", f"uid={OUT}; {NAME}={forged}"), ("Cookie", f"{NAME}={REAL}")],
        [("Cookie", f"uid={OUT}; {NAME}={REAL[:-2]}")],
        [("Cookie", f"uid={OUT}; {NAME}=" + "canary.2500." + "A" * 6000)],
    ):
        response = get(server, *headers)
        assert response.status_code == 200
        assert response.text == STABLE_BODY
    # An earlier rule decides: no placement.
    office = get(server, ("Cookie", f"uid={OUT}"), ("X-Office", "1"))
    assert (office.text, sticky_cookies(office)) == (CANARY_BODY, [])


@pytest.mark.slow
def test_real_servers_kill_switch_and_rule_removal_override_and_set_nothing(
    real: tuple[AppServer, str],
) -> None:
    server, url = real
    store = store_from_url(url)
    try:
        store.set_mode("off")
        wait_until(lambda: get(server, ("Cookie", f"uid={IN_25}")).text == STABLE_BODY,
                   timeout=10, what="the kill switch")  # fmt: skip
        for cookie in (f"uid={IN_25}", f"uid={OUT}; {NAME}={REAL}"):
            response = get(server, ("Cookie", cookie))
            assert (response.text, sticky_cookies(response)) == (STABLE_BODY, [])
        store.set_mode("rules")
        store.set_rules({"rules": [RULE_DOC["rules"][0]]})  # the percentage rule is gone
        wait_until(lambda: get(server, ("Cookie", f"uid={IN_25}")).text == STABLE_BODY
                   and get(server, ("X-Office", "1")).text == CANARY_BODY,
                   timeout=10, what="the rules without the percentage")  # fmt: skip
        gone = get(server, ("Cookie", f"uid={OUT}; {NAME}={REAL}"))
        assert (gone.text, sticky_cookies(gone)) == (STABLE_BODY, [])
    finally:
        store.set_mode("rules")
        store.set_rules(RULE_DOC)
        store.close()


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def dead_canary(request: pytest.FixtureRequest) -> Iterator[AppServer]:
    server = start_router(
        "memory://", command=asgi() if request.param == "uvicorn" else gunicorn(),
        upstreams={"canary": f"http://127.0.0.1:{free_port()}"}, default_rules=RULE_DOC,
        sticky_cookie=NAME, sticky_secret=SECRET, fallback=True,
        timeout={"connect": 1, "read": 2, "write": 2, "pool": 1},
    )  # fmt: skip
    yield server
    server.cleanup()


@pytest.mark.slow
def test_real_servers_falling_back_to_stable_place_nobody(dead_canary: AppServer) -> None:
    response = get(dead_canary, ("Cookie", f"uid={IN_25}"))
    assert response.text == STABLE_BODY
    assert sticky_cookies(response) == []
    # A stable answer the percentage gave is still recorded.
    assert len(sticky_cookies(get(dead_canary, ("Cookie", f"uid={OUT}")))) == 1


# -- careless operators ---------------------------------------------------------------------


class _Nobody:
    """Membership answers: nobody is in any set (the default rules' ips / users)."""

    def get(self, probe: Any, /) -> bool:
        return False


NOBODY = _Nobody()


def _snapshot_of(store: Any) -> Snapshot:
    ruleset = store.get_rules()
    assert ruleset is not None
    return Snapshot(ruleset=ruleset)


def test_the_next_release_through_percent_set_does_not_inherit_old_canary_cookies() -> None:
    store = store_from_url(f"memory://sticky-operator-{free_port()}")
    try:
        store.set_rules({"rules": []})
        store.set_percent(50, by="cookie:uid")  # release 2: half the users
        wide = uid_with("percent", 100, 5000)  # in at 50 %, out at 1 %
        placed = decide(facts(wide), _snapshot_of(store), NOBODY, WITH_STICKY)
        assert placed.target == "canary"
        cookie = value_of(placed.set_cookie)
        store.remove_rule("percent")  # release 2 promoted or rolled back: the rule is gone
        assert decide(facts(wide, cookie), Snapshot(ruleset=parse_rules({"rules": []})), {},
                      WITH_STICKY).target == "stable"  # fmt: skip
        # Release 3, carefully, at 1 % with a new salt as docs/rollouts.md says to: the old
        # placement is another rule's. (With the old salt it would be honoured until it
        # expires, as the docs also say.)
        store.set_percent(1, by="cookie:uid", salt="release-3")
        again = decide(facts(wide, cookie), _snapshot_of(store), NOBODY, WITH_STICKY)
        assert again.target == "stable"
        store.set_percent(1, by="cookie:uid", salt="percent")
        same_salt = decide(facts(wide, cookie), _snapshot_of(store), NOBODY, WITH_STICKY)
        assert same_salt.target == "canary"
    finally:
        store.close()


def test_a_keyless_visit_at_100_percent_does_not_pin_stable_forever() -> None:
    anonymous = decide(facts(None), rules(100), {}, WITH_STICKY)
    cookie = None if anonymous.set_cookie is None else value_of(anonymous.set_cookie)
    logged_in = decide(facts(OUT, cookie), rules(100), {}, WITH_STICKY)
    assert logged_in.target == "canary"


@pytest.mark.anyio
async def test_a_reused_start_message_does_not_carry_one_users_cookie_to_another() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
    body = {"type": "http.response.body", "body": b"stable"}

    async def stable(scope: Any, receive: Any, send: Any) -> None:
        await send(start)  # a constant: legal ASGI, the server only reads it
        await send(body)

    hold = {"id": "hold", "target": "stable", "when": {"header": "X-Hold", "equals": "1"}}
    doc = rules(25, "canary", SALT, hold).ruleset.to_document()
    router = CanaryRouter(
        stable, canary_url=f"http://127.0.0.1:{free_port()}", default_rules=doc,
        sticky_cookie=NAME, sticky_secret=SECRET,
    )  # fmt: skip
    transport = httpx.ASGITransport(app=router)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            placed = await client.get("/", headers={"cookie": f"uid={OUT}"})
            assert len(sticky_cookies(placed)) == 1
            # Someone else, whom an earlier rule decides: never placed, so no cookie at all.
            unplaced = await client.get("/", headers={"cookie": f"uid={IN_25}", "x-hold": "1"})
            assert sticky_cookies(unplaced) == []
    finally:
        await router.aclose()


def test_the_documented_example_never_invents_a_per_process_secret() -> None:
    from pathlib import Path

    text = Path(__file__).resolve().parents[2].joinpath("docs", "rollouts.md").read_text()
    section = text.split("## Sticky assignment", 1)[1].split("\n## ", 1)[0]
    assert 'setdefault("CANARY_MW_STICKY_SECRET", secrets.token_urlsafe' not in section


def test_a_canary_cookie_kept_past_its_max_age_is_refused() -> None:
    now = [1_800_000_000.0]
    short = StickyCookie(NAME, SECRET, max_age=60, clock=lambda: now[0])
    value = minted(SALT, "canary", True, 2500, short)
    assert decide(facts(OUT, value), rules(25), {}, Overrides(sticky=short)).target == "canary"
    now[0] += 3600
    decision = decide(facts(OUT, value), rules(25), {}, Overrides(sticky=short))
    assert decision.target == "stable"
