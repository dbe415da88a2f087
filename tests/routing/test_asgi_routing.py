"""CanaryRouter under real uvicorn, with a real Redis and a real canary process: every kind
of rule routes as configured, and a change in Redis flips routing within 1 s."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from canary_mw.sticky import bucket
from canary_mw.stores import Store, store_from_url
from tests.support.routers import TRUSTED_PROXY, client_from
from tests.support.servers import AppServer, RedisServer, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def store(redis_srv: RedisServer, router_prefix: str) -> Iterator[Store]:
    writer = store_from_url(redis_srv.url, prefix=router_prefix)
    yield writer
    writer.clear_rules()
    writer.set_mode("rules")
    for name in ("ips", "users", "vip", "office"):
        members = writer.members(name)
        if members:
            writer.remove_members(name, members)
    writer.close()


def cookie(**values: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in values.items())}


def served_by(response: httpx.Response) -> str:
    return response.headers["x-canary-version"]


def flips_within(check: object, seconds: float = 1.0) -> float:
    start = time.monotonic()
    wait_until(check, timeout=seconds, interval=0.01, what="routing to change")  # type: ignore[arg-type]
    return time.monotonic() - start


def test_stable_by_default_and_tagged(router: AppServer) -> None:
    with client_from("127.0.0.3") as client:
        response = client.get(f"{router.url}/hello")
    assert response.text == "This is version 1\n"
    assert served_by(response) == "stable"
    assert response.headers["x-decision"] == "no-match:None"  # the decision reached the app


def test_ip_set_rule_flips_within_1s(router: AppServer, store: Store) -> None:
    with client_from("127.0.0.21") as client:
        url = f"{router.url}/page"
        assert served_by(client.get(url)) == "stable"
        store.add_ips("ips", ["127.0.0.21"])
        flips_within(lambda: client.get(url).text == "This is version 2\n")
        assert served_by(client.get(url)) == "canary"
        store.remove_ips("ips", ["127.0.0.21"])
        flips_within(lambda: served_by(client.get(url)) == "stable")
    with client_from("127.0.0.22") as other:
        assert served_by(other.get(url)) == "stable"  # only that address moved


def test_cidr_and_ipv4_rules(router: AppServer, store: Store) -> None:
    store.set_rules({"rules": [{"id": "net", "when": {"ip": ["127.0.0.32/28"]}}]})
    with client_from("127.0.0.40") as inside, client_from("127.0.0.50") as outside:
        flips_within(lambda: served_by(inside.get(f"{router.url}/")) == "canary")
        assert served_by(outside.get(f"{router.url}/")) == "stable"


def test_cookie_header_and_user_set_rules(router: AppServer, store: Store) -> None:
    store.set_rules({"rules": [
        {"id": "beta-cookie", "when": {"cookie": "beta", "equals": "1"}},
        {"id": "tester", "when": {"header": "X-Tester", "one_of": ["alice", "bob"]}},
        {"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}},
    ]})  # fmt: skip
    store.add_members("vip", ["42"])
    url = f"{router.url}/x"
    with client_from("127.0.0.3") as client:
        flips_within(lambda: served_by(client.get(url, headers=cookie(beta="1"))) == "canary")
        assert served_by(client.get(url, headers=cookie(beta="0"))) == "stable"
        assert served_by(client.get(url, headers={"X-Tester": "bob"})) == "canary"
        assert served_by(client.get(url, headers={"X-Tester": "eve"})) == "stable"
        assert served_by(client.get(url, headers=cookie(uid="42"))) == "canary"
        assert served_by(client.get(url, headers=cookie(uid="43"))) == "stable"
        store.add_members("vip", ["43"])
        flips_within(lambda: served_by(client.get(url, headers=cookie(uid="43"))) == "canary")
        store.remove_members("vip", ["42"])
        flips_within(lambda: served_by(client.get(url, headers=cookie(uid="42"))) == "stable")


def test_sticky_percentage(router: AppServer, store: Store) -> None:
    store.set_rules(
        {"rules": [{"id": "pct", "when": {"percent": 30, "by": "cookie:uid", "salt": "t"}}]}
    )
    inside = [f"u{n}" for n in range(200) if bucket("t", f"u{n}") < 3000][:5]
    outside = [f"u{n}" for n in range(200) if bucket("t", f"u{n}") >= 3000][:5]
    url = f"{router.url}/"
    with client_from("127.0.0.3") as client:
        flips_within(lambda: served_by(client.get(url, headers=cookie(uid=inside[0]))) == "canary")
        for _ in range(3):  # sticky: the same answer every time
            assert {served_by(client.get(url, headers=cookie(uid=u))) for u in inside} == {"canary"}
            assert {served_by(client.get(url, headers=cookie(uid=u))) for u in outside} == {
                "stable"
            }


def test_overrides_and_modes(router: AppServer, store: Store) -> None:
    url = f"{router.url}/"
    with client_from("127.0.0.3") as client:
        assert served_by(client.get(url, headers={"X-Canary-Force": "always"})) == "canary"
        assert served_by(client.get(url, headers=cookie(canary_force="always"))) == "canary"
        store.set_mode("all")
        flips_within(lambda: served_by(client.get(url)) == "canary")
        assert served_by(client.get(url, headers={"X-Canary-Force": "never"})) == "stable"
        store.set_mode("rules")
        store.add_ips("ips", ["127.0.0.3"])
        flips_within(lambda: client.get(url).headers["x-canary-version"] == "canary")
        store.set_mode("off")  # the kill switch beats the rule that routes this client
        flips_within(lambda: served_by(client.get(url)) == "stable")
        assert client.get(url).headers["x-decision"] == "mode-off:None"
        store.set_mode("rules")
        flips_within(lambda: served_by(client.get(url)) == "canary")


def test_forwarded_for_only_from_a_trusted_proxy(router: AppServer, store: Store) -> None:
    store.add_ips("ips", ["203.0.113.77"])
    url = f"{router.url}/"
    spoof = {"X-Forwarded-For": "203.0.113.77", "X-Real-IP": "203.0.113.77",
             "Forwarded": "for=203.0.113.77"}  # fmt: skip
    with client_from("127.0.0.3") as untrusted, client_from(TRUSTED_PROXY) as proxy:
        flips_within(
            lambda: (
                served_by(proxy.get(url, headers={"X-Forwarded-For": "203.0.113.77"})) == "canary"
            )
        )
        for _ in range(5):
            assert served_by(untrusted.get(url, headers=spoof)) == "stable"
        # behind the trusted proxy, the rightmost untrusted hop is the client
        chained = {"X-Forwarded-For": "203.0.113.77, 198.51.100.1"}
        assert served_by(proxy.get(url, headers=chained)) == "stable"


def test_rule_to_an_unknown_upstream_serves_stable(router: AppServer, store: Store) -> None:
    store.set_rules({"rules": [{"id": "v9", "when": {"method": "GET"}, "target": "v9"}]})
    with client_from("127.0.0.3") as client:
        flips_within(lambda: client.get(f"{router.url}/").headers["x-decision"] == "no-upstream:v9")
        assert served_by(client.get(f"{router.url}/")) == "stable"
    assert "configured neither in code nor in the store" in router.output()
