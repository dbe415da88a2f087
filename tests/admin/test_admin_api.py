"""The admin API: every endpoint without a token, with a wrong one, with the right one, and
with invalid bodies; the OpenAPI document is served, valid, and lists every route."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from canary_mw import ConfigurationError, RolloutPlan
from canary_mw.admin.api import admin_app
from canary_mw.admin.openapi import OPENAPI
from canary_mw.stores import Store, store_from_url
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    yield handle
    handle.close()


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = admin_app(store, tokens={"deploy": TOKEN})
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client


# (method, path, a valid body or None, [(invalid body, expected error location)])
ENDPOINTS: list[tuple[str, str, Any, list[tuple[Any, list[Any]]]]] = [
    ("GET", "/status", None, []),
    ("GET", "/mode", None, []),
    ("PUT", "/mode", {"mode": "off"}, [
        ({}, ["body", "mode"]), ({"mode": "sometimes"}, ["body", "mode"]),
        ({"mode": 1}, ["body", "mode"]), ({"mode": "off", "x": 1}, ["body", "x"]),
        ([1], ["body"]),
    ]),
    ("GET", "/rules", None, []),
    ("PUT", "/rules", {"rules": [{"id": "qa", "when": {"header": "X-QA", "present": True}}]}, [
        ({}, ["body", "rules"]), ({"rules": {}}, ["body", "rules"]),
        ({"rules": [{"id": "x", "when": {"ip": ["nope"]}}]}, ["body", "rules", "x", "when", "ip", "0"]),
    ]),
    ("POST", "/rules", {"rule": {"id": "extra", "when": {"method": "GET"}}, "position": 0}, [
        ({"rule": {"id": "x", "when": {"method": 5}}}, ["body", "rules", "x", "when", "method"]),
        ({"rule": "x"}, ["body", "rule"]), ({"rule": {"id": "y", "when": {"method": "GET"}}, "position": "0"}, ["body", "position"]),
    ]),
    ("GET", "/rules/ips", None, []),
    ("DELETE", "/rules/ips", None, []),
    ("GET", "/sets/ips", None, []),
    ("POST", "/sets/ips/add", {"members": ["203.0.113.7", "10.0.0.0/8"], "ip": True}, [
        ({"members": ["10.0.0.1/8"], "ip": True}, ["body"]), ({"members": [""]}, ["body", "members", 0]),
        ({"members": "x"}, ["body", "members"]), ({}, ["body", "members"]),
    ]),
    ("POST", "/sets/users/remove", {"members": ["alice"]}, [({"members": [1]}, ["body", "members", 0])]),
    ("PUT", "/percent", {"percent": 10, "by": "cookie:uid"}, [
        ({"percent": 101}, ["body", "rules", "percent", "when", "percent"]),
        ({"percent": "10"}, ["body", "percent"]), ({"percent": True}, ["body", "percent"]),
    ]),
    ("GET", "/upstreams", None, []),
    ("PUT", "/upstreams/canary", {"url": "http://canary-b:8000", "host": "shop.example.com"}, [
        ({"url": "ftp://x"}, ["body"]), ({}, ["body", "url"]),
    ]),
    ("DELETE", "/upstreams/canary?host=shop.example.com", None, []),
    ("GET", "/history?limit=5", None, []),
    ("POST", "/rollback", {"version": 0}, [({"version": "1"}, ["body", "version"]), ({"version": 999}, ["body"])]),
    ("GET", "/mirror", None, []),
    ("PUT", "/mirror", {"upstream": "http://canary-b:8000", "compare": {"body": "json"}}, [
        ({"upstream": "ftp://x"}, ["body"]), ({}, ["body"]), ({"upstream": "http://c:1", "queue": 0}, ["body"]),
    ]),
    ("DELETE", "/mirror", None, []),
    ("GET", "/mirror/report", None, []),
    ("GET", "/rollout", None, []),
    ("POST", "/rollout", {"by": "cookie:uid", "steps": [5, 50], "hold": "10m"}, [
        ({"steps": [50, 5]}, ["body"]), ({"hold": "soon"}, ["body"]), ({"nope": 1}, ["body"]),
    ]),
    ("POST", "/rollout/pause", None, []),
    ("POST", "/explain", {"ip": "203.0.113.7", "cookies": {"uid": "42"}}, [
        ({"ip": "nope"}, ["body", "ip"]), ({"path": "cart"}, ["body", "path"]),
        ({"headers": {"X-QA": 1}}, ["body", "headers", "X-QA"]), ({"ipp": "1"}, ["body", "ipp"]),
    ]),
]  # fmt: skip
IDS = [f"{method} {path}" for method, path, _, _ in ENDPOINTS]


async def call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if body is None:
        return await client.request(method, path, headers=headers)
    content = body.encode() if isinstance(body, str) else None
    return await client.request(
        method, path, headers=headers, json=None if content else body, content=content
    )


@pytest.mark.fault(
    "admin API",
    "no token, wrong token, invalid bodies",
    "401, 403, 422 with the field; nothing written",
)
@pytest.mark.parametrize(("method", "path", "body", "invalid"), ENDPOINTS, ids=IDS)
async def test_endpoint(
    api: httpx.AsyncClient, store: Store, method: str, path: str, body: Any, invalid: list[Any]
) -> None:
    store.add_members("users", ["alice"])
    store.set_upstream("canary", "http://canary-a:8000", host="shop.example.com")
    if path.startswith("/rollout/"):  # a command needs a rollout to act on
        store.start_rollout(RolloutPlan(), actor="setup")
    if (method, path) == ("DELETE", "/mirror"):  # stopping needs a mirror to stop
        store.set_mirror({"upstream": "http://canary-a:8000"}, actor="setup")
    before = store.get_config().version

    missing = await call(api, method, path, body, {})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await call(api, method, path, body, {"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 403
    for bad_body, location in invalid:
        rejected = await call(api, method, path, bad_body, GOOD)
        assert rejected.status_code == 422, rejected.text
        assert rejected.json()["detail"][0]["loc"] == location
    assert store.get_config().version == before  # nothing written by any of those

    response = await call(api, method, path, body, GOOD)
    assert response.status_code == 200, response.text
    data = response.json()
    if path == "/explain":  # the one POST that writes nothing
        assert (data["target"], data["version"]) == ("stable", before)
    elif method != "GET":
        assert data["changed"] is True
        assert data["version"] == before + 1
        entry = store.history(1)[0]
        assert entry.actor == "api:deploy@10.1.2.3"  # the token's name and the client


async def test_reads_return_what_is_stored(api: httpx.AsyncClient, store: Store) -> None:
    store.set_mode("all")
    store.add_ips("ips", ["203.0.113.7"])
    assert (await api.get("/mode", headers=GOOD)).json() == {"mode": "all", "version": 2}
    assert (await api.get("/sets/ips", headers=GOOD)).json() == {
        "name": "ips",
        "size": 1,
        "members": ["203.0.113.7"],
    }
    status = (await api.get("/status", headers=GOOD)).json()
    assert (status["mode"], status["sets"]["ips"], status["rules_source"]) == ("all", 1, "defaults")
    assert (await api.get("/rules/absent", headers=GOOD)).status_code == 404
    assert (await api.get("/history?limit=0", headers=GOOD)).status_code == 422


@pytest.mark.fault("admin API", "oversized body", "413; nothing written")
async def test_oversized_bodies_are_refused(store: Store) -> None:
    app = admin_app(store, token=TOKEN, max_body=1000)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a"
    ) as client:
        big = {"members": [f"user-{n}" for n in range(1000)]}
        response = await client.post("/sets/users/add", json=big, headers=GOOD)
        assert response.status_code == 413
    assert store.members("users") == set()


async def test_store_down_is_503_not_500() -> None:
    app = admin_app(store_from_url("redis://127.0.0.1:9/0"), token=TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a"
    ) as client:
        response = await client.put("/mode", json={"mode": "off"}, headers=GOOD)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("store unavailable")


def test_refuses_to_start_without_a_token(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="needs a token"):
        admin_app(store)
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        admin_app(store, token="short")


async def test_without_auth_only_loopback_clients(store: Store) -> None:
    app = admin_app(store, allow_unauthenticated=True)
    for client_address, expected in (("127.0.0.1", 200), ("::1", 200), ("10.0.0.5", 403)):
        transport = httpx.ASGITransport(app=app, client=(client_address, 1))
        # A loopback Host too: without a token, any other name is refused (DNS rebinding).
        base_url = "http://127.0.0.1:8080"
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            assert (await client.get("/mode")).status_code == expected


async def test_openapi_is_served_valid_and_complete(api: httpx.AsyncClient) -> None:
    served = (await api.get("/openapi.json")).json()
    assert served == OPENAPI
    validate(served)
    documented = {(method.upper(), path) for path, item in served["paths"].items()
                  for method in item if method != "parameters"}  # fmt: skip
    routes = {("GET", "/status"), ("GET", "/mode"), ("PUT", "/mode"), ("GET", "/rules"),
              ("PUT", "/rules"), ("POST", "/rules"), ("GET", "/rules/{rule_id}"),
              ("DELETE", "/rules/{rule_id}"), ("GET", "/sets/{name}"),
              ("POST", "/sets/{name}/{action}"), ("PUT", "/percent"), ("GET", "/upstreams"),
              ("PUT", "/upstreams/{name}"), ("DELETE", "/upstreams/{name}"),
              ("GET", "/history"), ("POST", "/rollback"), ("POST", "/explain")}  # fmt: skip
    routes |= {("GET", "/mirror"), ("PUT", "/mirror"), ("DELETE", "/mirror"),
               ("GET", "/mirror/report")}  # fmt: skip
    routes |= {("GET", "/rollout"), ("POST", "/rollout"), ("POST", "/rollout/{command}")}
    assert documented == routes

    def template(method: str, path: str) -> tuple[str, str]:
        concrete = path.split("?", maxsplit=1)[0]
        for route_method, route in routes:
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", route)
            if route_method == method and re.fullmatch(pattern, concrete):
                return route_method, route
        raise AssertionError(f"{method} {path} matches no route")

    tested = {template(method, path) for method, path, _, _ in ENDPOINTS}
    assert tested == routes  # every route is in the endpoint table above


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"token": "short"}, "token="), ({"tokens": {"bob": "short"}}, "tokens['bob']")],
    ids=["token", "tokens"],
)
def test_a_short_token_is_named_as_the_caller_passed_it(
    kwargs: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        admin_app("memory://", **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{named} must be a string of at least 16 characters")
