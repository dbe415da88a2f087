"""The sticky assignment cookie (``sticky_cookie=``): the decision it pins, the cookie it
sets, what overrides it, and that a client cannot write one itself."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary_mw import (
    ASGIFacts,
    CanaryConfig,
    CanaryRouter,
    CanaryWSGI,
    ConfigurationError,
    Overrides,
    Snapshot,
    decide,
    parse_rules,
)
from canary_mw.sticky import bucket
from canary_mw.stickycookie import StickyCookie

SECRET = "s3cret-s3cret-s3cret"
_NOW = time.time()  # a stopped clock: decisions a moment apart set the same expiry
STICKY = StickyCookie("canary_mw_version", SECRET, max_age=3600, clock=lambda: _NOW)
WITH_STICKY = Overrides(sticky=STICKY)
SALT = "rollout-7"


def percent_rules(percent: float, salt: str = SALT, *before: dict[str, Any]) -> Snapshot:
    rules = [*before, {"id": "pct", "target": "canary",
                       "when": {"percent": percent, "by": "cookie:uid", "salt": salt}}]  # fmt: skip
    return Snapshot(ruleset=parse_rules({"rules": rules}))


def facts(uid: str | None = None, sticky: str | None = None, ip: str = "198.51.100.1") -> ASGIFacts:
    cookies = []
    if uid is not None:
        cookies.append(f"uid={uid}")
    if sticky is not None:
        cookies.append(f"canary_mw_version={sticky}")
    headers = [(b"host", b"example.org")]
    if cookies:
        headers.append((b"cookie", "; ".join(cookies).encode()))
    return ASGIFacts({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                      "headers": headers, "client": (ip, 1234)})  # fmt: skip


def cookie_value(set_cookie: bytes | None) -> str:
    assert set_cookie is not None
    match = re.match(rb"canary_mw_version=([^;]+); Max-Age=3600; Path=/; HttpOnly; SameSite=Lax$",
                     set_cookie)  # fmt: skip
    assert match is not None, set_cookie
    return match.group(1).decode()


def users(percent: float, inside: bool, count: int = 5) -> list[str]:
    """User ids whose bucket is (or is not) admitted at ``percent`` under SALT."""
    found = [str(n) for n in range(10_000) if (bucket(SALT, str(n)) < percent * 100) == inside]
    return found[:count]


def test_the_first_answer_places_the_user_and_names_the_version() -> None:
    (canary_user,) = users(25, True, 1)
    (stable_user,) = users(25, False, 1)
    placed = decide(facts(canary_user), percent_rules(25), {}, WITH_STICKY)
    assert (placed.target, placed.reason) == ("canary", "rule")
    assert cookie_value(placed.set_cookie).startswith("canary.2500.")
    kept_out = decide(facts(stable_user), percent_rules(25), {}, WITH_STICKY)
    assert (kept_out.target, kept_out.reason) == ("stable", "no-match")
    assert cookie_value(kept_out.set_cookie).startswith("stable.2500.")


def test_a_placed_user_keeps_the_canary_when_the_percentage_falls_or_the_key_changes() -> None:
    (outside,) = users(25, False, 1)
    placed_at_25_only = [u for u in users(25, True, 50) if bucket(SALT, u) >= 500][:5]
    for user in placed_at_25_only:
        cookie = cookie_value(decide(facts(user), percent_rules(25), {}, WITH_STICKY).set_cookie)
        lowered = decide(facts(user, cookie), percent_rules(5), {}, WITH_STICKY)
        assert (lowered.target, lowered.set_cookie) == ("canary", None)  # kept, nothing new set
        logged_in = decide(facts(outside, cookie), percent_rules(25), {}, WITH_STICKY)
        assert logged_in.target == "canary"
        # Without the cookie the same requests are stable: the cookie did it.
        assert decide(facts(user), percent_rules(5), {}, WITH_STICKY).target == "stable"
        assert decide(facts(outside), percent_rules(25), {}).target == "stable"


def test_a_stable_user_stays_stable_until_the_percentage_rises() -> None:
    (inside_at_50,) = [u for u in users(25, False, 400) if bucket(SALT, u) < 5000][:1]
    (anonymous_inside,) = users(25, True, 1)
    cookie = cookie_value(
        decide(facts(inside_at_50), percent_rules(25), {}, WITH_STICKY).set_cookie
    )
    assert cookie.startswith("stable.2500.")
    # Logging in with a key that the hash would admit at 25 %: still stable.
    assert decide(facts(anonymous_inside, cookie), percent_rules(25), {}, WITH_STICKY).target == (
        "stable"
    )
    assert (
        decide(facts(inside_at_50, cookie), percent_rules(10), {}, WITH_STICKY).set_cookie is None
    )
    # The percentage rises past what the cookie recorded: the key decides again, and a new
    # cookie records the answer at the new threshold.
    risen = decide(facts(inside_at_50, cookie), percent_rules(50), {}, WITH_STICKY)
    assert risen.target == "canary"
    assert cookie_value(risen.set_cookie).startswith("canary.5000.")


def test_rollback_kill_switch_and_another_rollout_override_the_cookie() -> None:
    user = next(u for u in users(25, False, 50) if bucket("rollout-8", u) >= 2500)
    forged_by_server = STICKY.set_cookie(SALT, "canary", True, 2500)
    cookie = cookie_value(forged_by_server)
    assert decide(facts(user, cookie), percent_rules(25), {}, WITH_STICKY).target == "canary"
    no_rule = Snapshot(ruleset=parse_rules({"rules": []}))  # rolled back: the rule is gone
    assert decide(facts(user, cookie), no_rule, {}, WITH_STICKY).target == "stable"
    off = Snapshot(mode="off", ruleset=percent_rules(25).ruleset)  # the kill switch
    assert decide(facts(user, cookie), off, {}, WITH_STICKY).reason == "mode-off"
    # The next rollout has a new salt: the old cookie is ignored, and replaced.
    new_rollout = decide(facts(user, cookie), percent_rules(25, salt="rollout-8"), {}, WITH_STICKY)
    assert new_rollout.target == "stable"
    assert cookie_value(new_rollout.set_cookie).startswith("stable.2500.")


def test_an_earlier_rule_deciding_leaves_the_user_unplaced() -> None:
    office = {"id": "office", "target": "canary", "when": {"ip": ["198.51.100.0/24"]}}
    decision = decide(facts("1"), percent_rules(25, SALT, office), {}, WITH_STICKY)
    assert (decision.rule_id, decision.set_cookie) == ("office", None)


@pytest.mark.parametrize(
    "value",
    [
        "canary",  # what a client would write by hand
        "canary.2500.AAAAAAAAAAAAAAAAAAAAAA",
        "canary.0.{mac}",  # a real signature moved to another threshold
        "stable.2500.{mac}",  # ... or another version
        "canary.2500.{mac}x",
        "canary.99999999999999999999.{mac}",
        "canary.-1.{mac}",
        "canary.\xb2.{mac}",  # a digit to str.isdigit(), not to int()
        "canary..1800000000.{mac}",  # an empty threshold
        "canary.2500..{mac}",  # an empty expiry
        "canary.\u0662\u0665\u0660\u0660.{mac}",  # Arabic-Indic 2500
        "..",
        "",
    ],
)
def test_a_cookie_the_routers_did_not_sign_is_ignored(value: str) -> None:
    mac = cookie_value(STICKY.set_cookie(SALT, "canary", True, 2500)).rsplit(".", 1)[1]
    (user,) = users(25, False, 1)
    decision = decide(facts(user, value.format(mac=mac)), percent_rules(25), {}, WITH_STICKY)
    assert decision.target == "stable"
    assert cookie_value(decision.set_cookie).startswith("stable.2500.")  # and overwritten
    other_secret = StickyCookie("canary_mw_version", "another-secret-another", max_age=3600)
    minted = cookie_value(other_secret.set_cookie(SALT, "canary", True, 2500))
    assert decide(facts(user, minted), percent_rules(25), {}, WITH_STICKY).target == "stable"


# What a cookie value can be once a server has decoded the header (latin-1), dots and digit
# look-alikes drawn often.
COOKIE_TEXT = st.text(
    st.one_of(
        st.sampled_from(".0123456789\xb2\xb9canary"),
        st.characters(codec="latin-1", exclude_characters=";\x00"),
    ),
    max_size=60,
)
UID = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(uid=UID, cookie=st.one_of(st.none(), COOKIE_TEXT), percent=st.sampled_from([0, 5, 25, 100]))
def test_without_a_valid_cookie_the_decision_is_the_plain_one(
    uid: str, cookie: str | None, percent: float
) -> None:
    """Sticky on changes nothing for a request without a cookie the routers signed."""
    snapshot = percent_rules(percent)
    plain = decide(facts(uid), snapshot, {})
    sticky = decide(facts(uid, cookie), snapshot, {}, WITH_STICKY)
    assert (sticky.target, sticky.reason, sticky.rule_id) == (plain.target, plain.reason,
                                                               plain.rule_id)  # fmt: skip
    assert sticky.set_cookie is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sticky_cookie": "canary_mw_version"}, "sticky_cookie needs sticky_secret"),
        ({"sticky_cookie": "canary_mw_version", "sticky_secret": "short"}, "at least 16"),
        ({"sticky_cookie": "bad name", "sticky_secret": SECRET}, "must be a cookie name"),
        ({"sticky_secret": SECRET}, "sticky_cookie is not"),
        ({"sticky_cookie": "v", "sticky_secret": SECRET, "sticky_max_age": 0}, "sticky_max_age"),
    ],
)
def test_invalid_options_say_what_to_fix(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CanaryConfig(canary_url="http://canary:8000", **options)


def test_the_secret_is_not_in_the_config_repr() -> None:
    config = CanaryConfig(canary_url="http://canary:8000", sticky_cookie="v", sticky_secret=SECRET)
    assert SECRET not in repr(config)


# -- both routers set the cookie on stable and on canary responses -----------------------

RULES = {"rules": [{"id": "pct", "target": "canary",
                    "when": {"percent": 25, "by": "cookie:uid", "salt": SALT}}]}  # fmt: skip
OPTIONS: dict[str, Any] = {
    "canary_url": "http://canary.internal", "default_rules": RULES,
    "sticky_cookie": "canary_mw_version", "sticky_secret": SECRET, "sticky_max_age": 3600,
}  # fmt: skip


async def _stable_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"set-cookie", b"app=1")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"stable"})


def _canary(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text="canary", headers={"set-cookie": "canary_app=1"})


@pytest.mark.anyio
async def test_the_asgi_router_sets_and_honours_the_cookie() -> None:
    router = CanaryRouter(_stable_asgi, transport=httpx.MockTransport(_canary), **OPTIONS)
    (inside,) = users(25, True, 1)
    (outside,) = users(25, False, 1)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=router), base_url="http://t")
    async with client:
        first = await client.get("/", headers={"cookie": f"uid={inside}"})
        assert first.text == "canary"
        assert first.headers.get_list("set-cookie")[0] == "canary_app=1"  # the canary's own
        cookie = dict(first.cookies)["canary_mw_version"]
        assert cookie.startswith("canary.2500.")
        # Logged in as someone the percentage leaves out: the cookie keeps the canary.
        again = await client.get(
            "/", headers={"cookie": f"uid={outside}; canary_mw_version={cookie}"}
        )
        assert again.text == "canary"
        assert "canary_mw_version" not in again.headers.get("set-cookie", "")
        stable = await client.get("/", headers={"cookie": f"uid={outside}"})
        assert stable.text == "stable"
        assert [c.split("=")[0] for c in stable.headers.get_list("set-cookie")] == [
            "app", "canary_mw_version"]  # fmt: skip
    await router.aclose()


def test_the_wsgi_router_sets_and_honours_the_cookie() -> None:
    def stable_wsgi(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Set-Cookie", "app=1")])
        return [b"stable"]

    router = CanaryWSGI(stable_wsgi, transport=httpx.MockTransport(_canary), **OPTIONS)
    (inside,) = users(25, True, 1)
    (outside,) = users(25, False, 1)
    with httpx.Client(transport=httpx.WSGITransport(app=router), base_url="http://t") as client:
        first = client.get("/", headers={"cookie": f"uid={outside}"})
        assert first.text == "stable"
        assert dict(first.cookies)["canary_mw_version"].startswith("stable.2500.")
        placed = client.get("/", headers={"cookie": f"uid={inside}"})
        cookie = dict(placed.cookies)["canary_mw_version"]
        assert (placed.text, cookie[:12]) == ("canary", "canary.2500.")
        again = client.get("/", headers={"cookie": f"uid={outside}; canary_mw_version={cookie}"})
        assert again.text == "canary"
        assert again.headers.get_list("set-cookie") == ["canary_app=1"]
    router.close()


def _placement_cookie(response: httpx.Response) -> str:
    (cookie,) = [c for c in response.headers.get_list("set-cookie") if "canary_mw" in c]
    return cookie


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_over_https_the_cookie_is_secure_asgi(scheme: str) -> None:
    router = CanaryRouter(_stable_asgi, transport=httpx.MockTransport(_canary), **OPTIONS)
    transport = httpx.ASGITransport(app=router)
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://t") as client:
        for uid in (*users(25, True, 1), *users(25, False, 1)):  # forwarded, then stable
            response = await client.get("/", headers={"cookie": f"uid={uid}"})
            assert _placement_cookie(response).endswith("; Secure") is (scheme == "https")
    await router.aclose()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_over_https_the_cookie_is_secure_wsgi(scheme: str) -> None:
    def stable_wsgi(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"stable"]

    router = CanaryWSGI(stable_wsgi, transport=httpx.MockTransport(_canary), **OPTIONS)
    transport = httpx.WSGITransport(app=router)
    with httpx.Client(transport=transport, base_url=f"{scheme}://t") as client:
        for uid in (*users(25, True, 1), *users(25, False, 1)):
            response = client.get("/", headers={"cookie": f"uid={uid}"})
            assert _placement_cookie(response).endswith("; Secure") is (scheme == "https")
    router.close()


PART = st.one_of(
    st.sampled_from(["", "canary", "stable", "2500", "0", "10000", "99999", "1800000000"]),
    st.text(st.sampled_from("0123456789\xb2\u0662.-+ x"), max_size=8),
    st.text(st.characters(codec="latin-1", exclude_characters=";\x00"), max_size=8),
)


@settings(max_examples=1000, deadline=None)
@given(parts=st.lists(PART, min_size=1, max_size=6))
def test_any_cookie_value_is_read_without_raising(parts: list[str]) -> None:
    """Dot-separated pieces shaped like the real value (empty ones, digit look-alikes, signs):
    reading never raises, and nothing the routers did not sign places anyone."""
    value = ".".join(parts)
    signed = {
        STICKY._value(SALT, "canary", verdict, 2500, 1_800_000_000) for verdict in (True, False)
    }
    if value not in signed:
        assert STICKY.pinned(value, SALT, "canary", 2500) is None
