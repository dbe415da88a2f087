"""CanaryWSGI under real WSGI servers (gunicorn sync and gthread, waitress, Flask's dev
server), a real Redis and a real canary process.

The forwarding contract (bodies up to 16 MiB and 1 GiB, raw paths, hop-by-hop headers,
cookies, SSE, 502/504, disconnects) runs through CanaryWSGI under gunicorn gthread in
tests/forward/test_forwarding_contract.py, next to CanaryRouter. Here: routing under each server, and
what depends on the server in front: how it frames ``wsgi.input`` (Content-Length, chunked),
iterates and closes the response, keeps the raw target (``RAW_URI`` / ``REQUEST_URI``),
writes its own Date and Server, and accepts request lines."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from canary_mw.stores import Store, store_from_url
from tests.support.apps import CHUNK, download_digest, pattern
from tests.support.routers import client_from
from tests.support.servers import AppServer, RedisServer, free_port, raw_request, wait_until

pytestmark = pytest.mark.slow

SERVERS = {
    "gunicorn-sync": [sys.executable, "-m", "gunicorn", "-w", "2", "--preload", "-b",
                      "127.0.0.1:{port}", "--log-level", "warning", "tests.support.wsgi_apps:make_app()"],
    "gunicorn-gthread": [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4",
                         "-b", "127.0.0.1:{port}", "--log-level", "warning",
                         "tests.support.wsgi_apps:make_app()"],
    "waitress": [sys.executable, "-m", "waitress", "--host=127.0.0.1", "--port={port}",
                 "--call", "tests.support.wsgi_apps:make_app"],
    "flask-dev": [sys.executable, "-m", "tests.support.wsgi_apps"],
}  # fmt: skip
FORCE = {"X-Canary-Force": "always"}
#: The servers whose plumbing the contract suite does not already run (it runs gthread).
PLUMBING = [kind for kind in SERVERS if kind != "gunicorn-gthread"]


def start_wsgi(kind: str, options: dict[str, object]) -> AppServer:
    server = AppServer(SERVERS[kind], env={"CANARY_TEST_OPTIONS": json.dumps(options)})
    server.env["PORT"] = str(server.port)
    return server.start()


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"wsgi{free_port()}:"


@pytest.fixture(scope="module", params=list(SERVERS))
def wsgi_router(
    request: pytest.FixtureRequest, redis_srv: RedisServer, canary_server: AppServer, prefix: str
) -> Iterator[AppServer]:
    server = start_wsgi(request.param, {
        "store": f"{redis_srv.url}?prefix={prefix}",
        "upstreams": {"canary": canary_server.url, "dead": f"http://127.0.0.1:{free_port()}"},
        "force_header": "X-Canary-Force",
        "timeout": {"connect": 2, "read": 3, "write": 30, "pool": 1},
    })  # fmt: skip
    yield server
    server.cleanup()


@pytest.fixture
def store(redis_srv: RedisServer, prefix: str) -> Iterator[Store]:
    writer = store_from_url(redis_srv.url, prefix=prefix)
    yield writer
    writer.clear_rules()
    for name in ("ips", "users"):
        if members := writer.members(name):
            writer.remove_members(name, members)
    writer.close()


def version(response: httpx.Response) -> str:
    return response.text.strip().rsplit(" ", 1)[-1]


def test_classic_walkthrough_ip_and_user(wsgi_router: AppServer, store: Store) -> None:
    url = f"{wsgi_router.url}/"
    with client_from("127.0.0.71") as client:
        assert client.get(url).text == "This is version 1\n"
        store.add_ips("ips", ["127.0.0.71"])
        wait_until(lambda: client.get(url).text == "This is version 2\n", timeout=1, what="ip add")
        assert client.get(url).headers["x-canary-version"] == "canary"
        store.remove_ips("ips", ["127.0.0.71"])
        wait_until(lambda: client.get(url).text == "This is version 1\n", timeout=1, what="ip rm")
        vip = {"Cookie": "canary_user=alice"}
        assert client.get(url, headers=vip).text == "This is version 1\n"
        store.add_members("users", ["alice"])
        wait_until(lambda: client.get(url, headers=vip).text == "This is version 2\n",
                   timeout=1, what="user add")  # fmt: skip
        assert client.get(url, headers={"X-Canary-User": "alice"}).text == "This is version 2\n"
        store.remove_members("users", ["alice"])
        wait_until(lambda: client.get(url, headers=vip).text == "This is version 1\n",
                   timeout=1, what="user rm")  # fmt: skip


# Sizes around the read size and a MiB: enough to see each server's wsgi.input framing; the
# 16 MiB and 1 GiB cases (the router's streaming, not the server's) are in the contract suite.
PLUMBING_SIZES = [0, 1, CHUNK + 1, 1 << 20]


@pytest.mark.parametrize("wsgi_router", PLUMBING, indirect=True)
@pytest.mark.parametrize("size", PLUMBING_SIZES, ids=lambda s: f"{s}B")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_is_byte_identical(wsgi_router: AppServer, size: int, framing: str) -> None:
    data = pattern(size)
    body = (
        data
        if framing == "content-length"
        else (data[i : i + CHUNK] for i in range(0, size, CHUNK))
    )
    with client_from("127.0.0.3") as client:
        response = client.post(f"{wsgi_router.url}/echo", content=body, headers=FORCE)
    echoed = response.json()
    assert (echoed["body_size"], echoed["body_sha256"]) == (size, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("wsgi_router", PLUMBING, indirect=True)
@pytest.mark.parametrize("size", PLUMBING_SIZES, ids=lambda s: f"{s}B")
def test_download_is_byte_identical(wsgi_router: AppServer, size: int) -> None:
    digest, received = hashlib.sha256(), 0
    with (
        client_from("127.0.0.3") as client,
        client.stream(
            "GET", f"{wsgi_router.url}/download?size={size}&id=w{size}", headers=FORCE
        ) as response,
    ):
        for piece in response.iter_raw():
            digest.update(piece)
            received += len(piece)
    assert (received, digest.hexdigest()) == (size, download_digest(size))


@pytest.mark.parametrize("wsgi_router", PLUMBING, indirect=True)
def test_punctuation_in_the_request_line_arrives_unchanged(wsgi_router: AppServer) -> None:
    head, body = raw_request(wsgi_router.port, b'GET /raw/<a>"{|}^`?q=<b>&r="x" HTTP/1.1\r\n'
                             b"Host: shop.example\r\nX-Canary-Force: always\r\n\r\n")  # fmt: skip
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed = json.loads(body)
    assert (echoed["raw_path"], echoed["query_string"]) == ('/raw/<a>"{|}^`', 'q=<b>&r="x"')


def test_raw_non_ascii_in_the_request_line_is_never_a_server_error(wsgi_router: AppServer) -> None:
    """gunicorn and waitress refuse it (400); werkzeug's dev server passes it on (after its
    own double encoding), and the router percent-encodes what httpx cannot send."""
    head, _ = raw_request(wsgi_router.port, b"GET /raw/caf\xc3\xa9?q=\xff HTTP/1.1\r\n"
                          b"Host: shop.example\r\nX-Canary-Force: always\r\n\r\n")  # fmt: skip
    assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400")), head


@pytest.mark.parametrize("wsgi_router", PLUMBING, indirect=True)
def test_headers_path_and_cookies(wsgi_router: AppServer) -> None:
    """Each server builds the environ and writes the headers its own way (waitress refuses a
    hop-by-hop header from the app outright; each writes its own Date and Server)."""
    with client_from("127.0.0.3") as client:
        echoed = client.get(
            f"{wsgi_router.url}/raw/a%2Fb/caf%C3%A9?q=%20a+b&x=%2F",
            headers={**FORCE, "Connection": "keep-alive, X-Drop", "X-Drop": "1", "X-Keep": "2"},
        ).json()
        sent = {name.lower() for name, _ in echoed["headers"]}
        assert echoed["raw_path"] == "/raw/a%2Fb/caf%C3%A9"
        assert echoed["query_string"] == "q=%20a+b&x=%2F"
        assert "x-keep" in sent
        assert not sent & {"x-drop", "connection", "user-agent-from-httpx"}
        answer = client.get(f"{wsgi_router.url}/hop", headers=FORCE)
        assert "x-secret-hop" not in answer.headers
        assert "proxy-connection" not in answer.headers
        assert answer.headers.get_list("x-canary-version") == ["canary"]
        assert len(answer.headers.get_list("date")) == 1  # the WSGI server's, not both
        assert len(answer.headers.get_list("server")) == 1
        cookies = client.get(f"{wsgi_router.url}/cookies?user=a", headers=FORCE)
        assert cookies.headers.get_list("set-cookie") == ["session=a; Path=/", "theme=dark; Path=/"]
    with client_from("127.0.0.4") as other:
        assert other.get(f"{wsgi_router.url}/cookies", headers=FORCE).json()["cookie"] == ""


@pytest.mark.parametrize("wsgi_router", PLUMBING, indirect=True)
def test_a_client_that_stops_reading_releases_the_upstream(
    wsgi_router: AppServer, canary_server: AppServer
) -> None:
    ident = f"wleave{time.monotonic_ns()}"
    with (
        client_from("127.0.0.3") as client,
        client.stream(
            "GET", f"{wsgi_router.url}/download?size={1 << 30}&id={ident}&pace=0.002", headers=FORCE
        ) as response,
    ):
        assert next(response.iter_raw())
    wait_until(
        lambda: httpx.get(f"{canary_server.url}/status?id={ident}").json()["state"] == "aborted",
        timeout=5,
        what="the canary to see its connection closed",
    )


def test_both_preloaded_gunicorn_workers_follow_a_change_within_1s(
    redis_srv: RedisServer, canary_server: AppServer, prefix: str
) -> None:
    server = start_wsgi("gunicorn-sync", {"store": f"{redis_srv.url}?prefix={prefix}pre:",
                                         "canary_url": canary_server.url})  # fmt: skip
    writer = store_from_url(redis_srv.url, prefix=prefix + "pre:")
    try:
        url = f"{server.url}/"

        latest: dict[str, str] = {}  # worker pid -> the version it answered last

        def every_worker_answers(expected: str) -> bool:
            response = httpx.get(url)  # a new connection each time: either worker may answer
            latest[response.headers["x-worker-pid"]] = version(response)
            return len(latest) == 2 and set(latest.values()) == {expected}

        wait_until(lambda: every_worker_answers("1"), timeout=10, what="both workers answering")
        workers = set(latest)
        writer.add_ips("ips", ["127.0.0.1"])
        wait_until(lambda: every_worker_answers("2"), timeout=1.0, what="both workers on v2")
        writer.remove_ips("ips", ["127.0.0.1"])
        wait_until(lambda: every_worker_answers("1"), timeout=1.0, what="both workers back")
        assert set(latest) == workers  # the same two preloaded workers throughout
    finally:
        writer.clear_rules()
        writer.close()
        server.cleanup()
