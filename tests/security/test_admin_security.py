"""The admin API against a web page in the operator's browser: without a token it answers only
requests whose Host (and Origin, when sent) is this machine, so cross-site requests and DNS
rebinding are refused; write bodies must be declared JSON; malformed, too deep or too large
JSON is a 4xx, never a 500. Run against a real ``canary-mw admin --insecure-no-auth``."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from canary_mw.admin.api import admin_app
from canary_mw.stores import Store, store_from_url
from tests.support.servers import AppServer, RedisServer

CANARY_MW = str(Path(sys.executable).with_name("canary-mw"))
PREFIX = "admin-security:"
TOKEN = "s3cret-token-for-tests"
EVERYONE = {"members": ["0.0.0.0/0"], "ip": True}  # what an attacking page would add
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def admin(redis_srv: RedisServer) -> Iterator[AppServer]:
    server = AppServer(
        [CANARY_MW, "--store", f"{redis_srv.url}?prefix={PREFIX}", "admin",
         "--insecure-no-auth", "--host", "127.0.0.1", "--port", "{port}"],
    )  # fmt: skip
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def store(redis_srv: RedisServer, admin: AppServer) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=PREFIX)
    handle.remove_ips("ips", ["0.0.0.0/0", "203.0.113.7"])
    yield handle
    handle.close()


def post(server: AppServer, path: str, **options: Any) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
        return client.post(path, **options)


def nothing_written(store: Store, version: int) -> None:
    assert store.members("ips") == set()
    assert store.get_config().version == version


# -- cross-site requests and DNS rebinding -----------------------------------------------------
REFUSED = [
    # A form / no-preflight fetch from another site: text/plain, foreign Origin.
    pytest.param({"Origin": EVIL, "Content-Type": "text/plain"}, 403, id="cross-site text/plain"),
    # Either defence alone is enough.
    pytest.param({"Origin": EVIL, "Content-Type": "application/json"}, 403, id="cross-site json"),
    pytest.param({"Origin": "null", "Content-Type": "application/json"}, 403, id="opaque origin"),
    pytest.param({"Content-Type": "text/plain"}, 415, id="text/plain, no origin"),
    pytest.param({"Content-Type": "application/x-www-form-urlencoded"}, 415, id="form"),
    pytest.param({}, 415, id="no content type"),
    # DNS rebinding: the page's own name now resolves to 127.0.0.1, so it is "same origin".
    pytest.param(
        {"Host": "evil.example", "Content-Type": "application/json"}, 403, id="rebound host"
    ),
    pytest.param(
        {
            "Host": "evil.example:8080",
            "Origin": "http://evil.example:8080",
            "Content-Type": "application/json",
        },
        403,
        id="rebound host and origin",
    ),
    pytest.param(
        {"Host": "127.0.0.1.evil.example", "Content-Type": "application/json"},
        403,
        id="lookalike host",
    ),
    pytest.param(
        {"Origin": "http://localhost.evil.example", "Content-Type": "application/json"},
        403,
        id="lookalike origin",
    ),
]


@pytest.mark.parametrize(("headers", "status"), REFUSED)
def test_browser_borne_writes_are_refused(
    admin: AppServer, store: Store, headers: dict[str, str], status: int
) -> None:
    version = store.get_config().version
    response = post(admin, "/sets/ips/add", content=json.dumps(EVERYONE), headers=headers)
    assert response.status_code == status, response.text
    assert "detail" in response.json()  # says why, as JSON
    nothing_written(store, version)


def test_rebound_host_cannot_read_either(admin: AppServer, store: Store) -> None:
    with httpx.Client(base_url=admin.url, timeout=30, trust_env=False) as client:
        assert client.get("/rules", headers={"Host": "evil.example"}).status_code == 403
        assert client.get("/rules").status_code == 200


ALLOWED = [
    pytest.param({}, id="no origin"),  # curl, the CLI, scripts: Host is 127.0.0.1:port
    pytest.param({"Origin": "http://127.0.0.1:{port}"}, id="same origin"),
    pytest.param({"Origin": "http://localhost:3000", "Host": "localhost:{port}"}, id="localhost"),
    pytest.param({"Host": "[::1]:{port}"}, id="ipv6 loopback host"),
    pytest.param({"Host": "127.1.2.3"}, id="127/8 without port"),
]


@pytest.mark.parametrize("headers", ALLOWED)
def test_loopback_json_writes_work(admin: AppServer, store: Store, headers: dict[str, str]) -> None:
    version = store.get_config().version
    sent = {name: value.format(port=admin.port) for name, value in headers.items()}
    body = {"members": ["203.0.113.7"], "ip": True}
    response = post(admin, "/sets/ips/add", json=body, headers=sent)
    assert response.status_code == 200, response.text
    assert store.members("ips") == {"203.0.113.7"}
    assert store.get_config().version == version + 1


# -- bodies that are not acceptable JSON ---------------------------------------------------------
BAD_BODIES = [
    pytest.param(b"[" * 200_000, 400, "nested too deeply", id="200k-deep"),
    pytest.param(b'{"members": [' * 50_000, 400, "nested too deeply", id="50k-deep objects"),
    pytest.param(b"{nope", 400, "not valid JSON", id="malformed"),
    pytest.param(b"\xff\xfe{", 400, "not valid JSON", id="not text"),
    pytest.param(b" " * (1 << 20) + b"{}", 413, "over", id="over 1 MiB"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_bad_json_is_4xx_not_500(
    admin: AppServer, store: Store, body: bytes, status: int, message: str
) -> None:
    version = store.get_config().version
    response = post(admin, "/rules", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert store.get_config().version == version


# -- with a token: bodies must still be JSON ---------------------------------------------------------
@pytest.fixture
async def authed(redis_srv: RedisServer, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    handle = store_from_url(redis_srv.url, prefix=prefix)
    transport = httpx.ASGITransport(app=admin_app(handle, token=TOKEN))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin.internal", headers=headers
    ) as client:
        yield client
    handle.close()


@pytest.mark.anyio
async def test_with_a_token_bodies_must_be_declared_json(authed: httpx.AsyncClient) -> None:
    body = json.dumps({"mode": "off"})
    refused = await authed.put("/mode", content=body, headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert "application/json" in refused.json()["detail"]
    # Parameters are allowed, and any host or origin: the token is what authenticates.
    accepted = await authed.put(
        "/mode",
        content=body,
        headers={"Content-Type": "Application/JSON; charset=utf-8", "Origin": EVIL},
    )
    assert accepted.status_code == 200, accepted.text
    assert (await authed.get("/mode")).json()["mode"] == "off"


@pytest.mark.anyio
async def test_tokens_never_reach_the_log_or_an_answer(
    authed: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-token-that-is-long-enough"
    with caplog.at_level("DEBUG"):
        good = await authed.put("/mode", json={"mode": "off"})
        bad = await authed.put(
            "/mode", json={"mode": "all"}, headers={"Authorization": f"Bearer {wrong}"}
        )
    assert (good.status_code, bad.status_code) == (200, 403)
    assert caplog.records, "the writes were logged (else this test checks nothing)"
    for secret in (TOKEN, wrong):
        assert secret not in caplog.text
        assert secret not in good.text + bad.text
    assert (await authed.get("/mode")).json()["mode"] == "off"
