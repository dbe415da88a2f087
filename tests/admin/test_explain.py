"""``explain``: the decision and its trace for fixed cases (CLI, admin API), and agreement with
a real router (uvicorn, real Redis, a canary behind it) over generated requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary_mw import Overrides
from canary_mw.admin.api import admin_app
from canary_mw.admin.cli import main
from canary_mw.admin.explain import RequestDescription, explain_request
from canary_mw.stores import Store, store_from_url
from tests.support.routers import TRUSTED_PROXY, client_from
from tests.support.servers import AppServer, RedisServer, wait_until

TOKEN = "explain-token-for-tests"

RULES = {
    "rules": [
        {"id": "qa", "when": {"all": [{"header": "X-QA", "present": True},
                                      {"not": {"path_prefix": "/admin"}}]}},
        {"id": "off-rule", "when": {"method": "DELETE"}, "enabled": False},
        {"id": "office", "when": {"ip": ["10.1.0.0/16"]}, "target": "stable"},
        {"id": "ips", "when": {"ip_in_set": "ips"}},
        {"id": "vip", "when": {"any": [{"cookie": "uid", "in_set": "vip"},
                                       {"all": [{"method": "POST"}, {"path_prefix": "/cart"}]}]}},
        {"id": "percent", "when": {"percent": 30, "by": "cookie:uid"}},
    ]
}  # fmt: skip


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    handle.set_rules(RULES)
    handle.add_ips("ips", ["203.0.113.7"])
    handle.add_members("vip", ["42"])
    yield handle
    handle.close()


def rule(explanation: Any, rule_id: str) -> Any:
    return next(item for item in explanation.rules if item.id == rule_id)


CASES = [
    # (request, target, reason, deciding rule)
    (RequestDescription(ip="203.0.113.7"), "canary", "rule", "ips"),
    (RequestDescription(ip="10.1.2.3"), "stable", "rule", "office"),
    (RequestDescription(ip="198.51.100.1", headers={"X-QA": "1"}), "canary", "rule", "qa"),
    (RequestDescription(ip="198.51.100.1", headers={"X-QA": "1"}, path="/admin/x"),
     "stable", "no-match", None),
    (RequestDescription(ip="198.51.100.1", cookies={"uid": "42"}), "canary", "rule", "vip"),
    (RequestDescription(ip="198.51.100.1", method="post", path="/cart?step=2"),
     "canary", "rule", "vip"),
    (RequestDescription(ip="198.51.100.1", headers={"X-Force": "always"}),
     "canary", "override-header", None),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "target", "reason", "rule_id"), CASES)
def test_fixed_cases(
    store: Store, request_: RequestDescription, target: str, reason: str, rule_id: str | None
) -> None:
    explanation = explain_request(
        store, request_, overrides=Overrides(header="X-Force"),
        upstreams={"canary": "http://canary.internal:8000"},
    )  # fmt: skip
    decision = explanation.decision
    assert (decision.target, decision.reason, decision.rule_id) == (target, reason, rule_id)
    assert explanation.upstream == ("http://canary.internal:8000" if target == "canary" else None)
    assert rule(explanation, "off-rule").outcome == "disabled"
    if reason == "rule":
        assert rule(explanation, rule_id).outcome == "matched"
        later = [item.outcome for item in explanation.rules][
            [item.id for item in explanation.rules].index(rule_id) + 1 :
        ]
        assert set(later) <= {"not reached", "disabled"}
    if reason.startswith("override"):
        assert {item.outcome for item in explanation.rules} <= {"not reached", "disabled"}


@pytest.mark.parametrize("typed", ["/shop/中?q=中", "/shop/%E4%B8%AD?q=%E4%B8%AD"])
def test_a_path_is_read_as_servers_hand_it_over(typed: str) -> None:
    facts = RequestDescription(path=typed).facts()
    assert facts.path == "/shop/中"  # decoded, as rules see it
    assert facts.query("q") == "中"
    assert not facts.authority_conflict


def test_each_condition_says_its_value_and_what_it_read(store: Store) -> None:
    explanation = explain_request(
        store, RequestDescription(ip="198.51.100.1", cookies={"uid": "7"}, path="/admin")
    )
    qa = rule(explanation, "qa").condition
    assert qa.value is False
    assert [child.value for child in qa.children] == [False, False]
    assert "header X-QA is absent" in qa.children[0].why
    assert qa.children[1].children[0].why == "path is '/admin'"
    vip = rule(explanation, "vip").condition
    assert "cookie uid is '7', is not in the set 'vip'" in vip.children[0].why
    # A condition the evaluation never reaches (all stops at the first false) still has its
    # value, looked up in the store.
    store.add_members("beta", ["42"])
    when = {"all": [{"method": "DELETE"}, {"cookie": "uid", "in_set": "beta"}]}
    store.add_rule({"id": "beta", "when": when}, position=0)
    behind = explain_request(store, RequestDescription(cookies={"uid": "42"}))
    assert [child.value for child in rule(behind, "beta").condition.children] == [False, True]
    percent = rule(explanation, "percent").condition
    assert "in bucket" in percent.why
    assert "(30%)" in percent.why


def test_mode_and_store_upstreams_and_health(store: Store) -> None:
    store.set_upstream("canary", "http://10.0.0.8:8000", host="shop.example.com")
    request = RequestDescription(ip="203.0.113.7", host="shop.example.com")
    explanation = explain_request(store, request, upstreams={"canary": "http://10.0.0.7:8000"})
    assert explanation.upstream == "http://10.0.0.8:8000"  # the store's, for this host
    other = explain_request(store, RequestDescription(ip="203.0.113.7"),
                            upstreams={"canary": "http://10.0.0.7:8000"})  # fmt: skip
    assert other.upstream == "http://10.0.0.7:8000"  # the router's own, for other hosts
    unknown = explain_request(store, RequestDescription(ip="203.0.113.7"))
    assert (unknown.decision.target, unknown.decision.reason) == ("stable", "no-upstream")
    assert unknown.ruled.target == "canary"
    store.set_mode("off")
    off = explain_request(store, request)
    assert (off.decision.target, off.decision.reason) == ("stable", "mode-off")
    assert {item.outcome for item in off.rules} <= {"not reached", "disabled"}


def test_an_unhealthy_upstream_is_served_by_stable(store: Store, redis_srv: RedisServer,
                                                   prefix: str) -> None:  # fmt: skip
    record = {"healthy": False, "since": 1.0, "until": 9e12, "reason": "test", "by": "t"}
    redis_srv.client().hset(f"{prefix}health", "http://10.0.0.7:8000", json.dumps(record))
    explanation = explain_request(store, RequestDescription(ip="203.0.113.7"),
                                  upstreams={"canary": "http://10.0.0.7:8000"})  # fmt: skip
    assert (explanation.decision.target, explanation.decision.reason) == ("stable", "ejected")
    assert explanation.upstream is None


def test_cli_explain(store: Store, redis_srv: RedisServer, prefix: str) -> None:
    url = f"{redis_srv.url}?prefix={prefix}"
    args = ["--store", url, "explain", "--ip", "198.51.100.1", "--cookie", "uid=42",
            "--header", "X-QA: 1", "--path", "/admin", "--upstream", "canary=http://c:8000"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "decision  canary: rule 'vip'"
    assert lines[1] == "upstream  http://c:8000"
    assert "  1. qa -> canary: no match" in lines
    assert "  2. off-rule -> canary: disabled" in lines
    assert "  6. percent -> canary: not reached" in lines
    result = CliRunner().invoke(main, [*args, "--json"])
    data = json.loads(result.output)
    assert (data["target"], data["rule"], data["upstream"]) == ("canary", "vip", "http://c:8000")
    refused = CliRunner().invoke(main, ["--store", url, "explain", "--header", "X-QA"])
    assert refused.exit_code == 1
    assert "expected NAME:VALUE" in refused.output


@pytest.mark.anyio
async def test_api_explain(store: Store) -> None:
    app = admin_app(store, token=TOKEN, upstreams={"canary": "http://c:8000"})
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4000))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        body = {"ip": "198.51.100.1", "cookies": {"uid": "42"}, "path": "/cart"}
        answer = await client.post("/explain", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert (data["target"], data["rule"], data["upstream"]) == (
            "canary",
            "vip",
            "http://c:8000",
        )
        vip = next(item for item in data["rules"] if item["id"] == "vip")
        assert vip["outcome"] == "matched"
        assert vip["condition"]["value"] == "true"
        assert vip["condition"]["children"][0]["value"] == "true"
        bad = await client.post("/explain", json={"ip": "nope"}, headers=headers)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "ip"]
        extra = await client.post("/explain", json={"ipp": "1.2.3.4"}, headers=headers)
        assert extra.status_code == 422
        unsendable = await client.post("/explain", json={"headers": {"X-N": "中"}}, headers=headers)
        assert unsendable.status_code == 422, unsendable.text
        assert unsendable.json()["detail"][0]["loc"] == ["body", "headers"]
        refused = await client.post("/explain", json=body)
        assert refused.status_code == 401
    assert store.history(5)[0].action != "explain"  # it writes nothing


# -- agreement with a real router ------------------------------------------------------------
@pytest.fixture(scope="module")
def live(redis_srv: RedisServer, router: AppServer, router_prefix: str,
         canary_server: AppServer) -> Iterator[tuple[Store, AppServer, str, httpx.Client]]:  # fmt: skip
    store = store_from_url(redis_srv.url, prefix=router_prefix)
    store.set_rules(RULES)
    store.add_ips("ips", ["203.0.113.7"])
    store.add_members("vip", ["42"])
    with client_from(TRUSTED_PROXY) as proxy:
        wait_until(
            lambda: proxy.get(router.url, headers={"X-Forwarded-For": "10.1.0.1"})
            .headers.get("x-decision") == "rule:office" or None,
            timeout=10, what="the router to read the rules",
        )  # fmt: skip
        yield store, router, canary_server.url, proxy  # one client: examples stay quick
    store.clear_rules()
    store.close()


requests = st.builds(
    RequestDescription,
    ip=st.sampled_from(["203.0.113.7", "10.1.9.9", "198.51.100.1", "198.51.100.2", "2001:db8::1"]),
    path=st.sampled_from(["/", "/cart", "/cart/items", "/admin", "/admin/x", "/shop/%E4%B8%AD"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    headers=st.fixed_dictionaries({}, optional={
        "X-QA": st.sampled_from(["1", ""]),
        # Mostly values that force nothing, so the rules decide most requests.
        "X-Canary-Force": st.sampled_from(["always", "never", "maybe", "", "yes", "0"]),
    }),
    cookies=st.fixed_dictionaries({}, optional={
        "uid": st.sampled_from(["42", "7", "1001", "abc"]),
        "canary_force": st.sampled_from(["always", "never", "x", "", "1", "no"]),
    }),
)  # fmt: skip


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request_=requests)
def test_explain_agrees_with_the_router(live: tuple[Store, AppServer, str, httpx.Client],
                                        request_: RequestDescription) -> None:  # fmt: skip
    store, router, canary_url, proxy = live
    explanation = explain_request(
        store, request_, overrides=Overrides(header="X-Canary-Force", cookie="canary_force"),
        upstreams={"canary": canary_url},
    )  # fmt: skip
    cookie = "; ".join(f"{name}={value}" for name, value in request_.cookies.items())
    headers = {**request_.headers, "X-Forwarded-For": str(request_.ip)}
    if cookie:
        headers["Cookie"] = cookie
    answer = proxy.request(request_.method, router.url + request_.path, headers=headers)
    served = answer.headers["x-canary-version"]
    decision = explanation.decision
    assert served == decision.target, (request_, explanation.to_json())
    if served == "stable":
        assert answer.headers["x-decision"] == f"{decision.reason}:{decision.rule_id}"
    else:
        assert explanation.upstream == canary_url
