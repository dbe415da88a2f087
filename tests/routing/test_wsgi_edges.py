"""CanaryWSGI under real WSGI servers (gunicorn's threaded worker, waitress) against a scripted
canary: what a WSGI server refuses from its app, and what a request without a body is."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import EnvironBuilder

from canary_mw import CanaryWSGI
from tests.support.scripted import Upstream, answer, read_body, read_head, target
from tests.support.servers import AppServer

pytestmark = pytest.mark.slow

ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]
#: Few connections, so a leaked one shows within a few requests (as 503s: the pool is full).
MAX_CONNECTIONS = 2
SERVERS = {
    "gunicorn-gthread": [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread",
                         "--threads", "4", "-b", "127.0.0.1:{port}", "--log-level", "warning",
                         "tests.support.wsgi_edge_apps:make_app()"],
    "waitress": [sys.executable, "-m", "waitress", "--host=127.0.0.1", "--port={port}",
                 "--call", "tests.support.wsgi_edge_apps:make_app"],
}  # fmt: skip
#: Responses a WSGI server refuses from its app as they come, though llhttp accepts them:
#: gunicorn a control byte in the reason phrase, waitress a ``Trailers`` header (hop-by-hop
#: by PEP 3333's list).
REPLIES = {
    b"/bad-reason": b"HTTP/1.1 200 O\x01K\r\ncontent-length: 2\r\n\r\nok",
    b"/trailers-header": b"HTTP/1.1 200 OK\r\nTrailers: x\r\ncontent-length: 2\r\n\r\nok",
}


def canary(conn: socket.socket, server: Upstream) -> None:
    """Keep-alive; the scripted replies by path, else 200 with the path as the body."""
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        server.bodies.append(read_body(conn, buffer, head))
        path = target(head)
        conn.sendall(REPLIES.get(path.partition(b"?")[0], answer(path)))


def options(upstream: Upstream) -> dict[str, Any]:
    return {
        "store": "memory://",
        "canary_url": upstream.url,
        "default_rules": ALL_TO_CANARY,
        "timeout": {"connect": 2, "read": 3, "write": 3, "pool": 1},
        "limits": {"max_connections": MAX_CONNECTIONS, "max_keepalive_connections": 2},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(canary)
    yield server
    server.close()


@pytest.fixture(scope="module", params=list(SERVERS))
def wsgi_router(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[AppServer]:
    env = {"CANARY_TEST_OPTIONS": json.dumps(options(upstream))}
    server = AppServer(SERVERS[request.param], env=env).start()
    yield server
    server.cleanup()


def test_what_the_server_refuses_never_costs_a_pool_connection(wsgi_router: AppServer) -> None:
    with httpx.Client(base_url=wsgi_router.url, timeout=10) as client:
        for _ in range(MAX_CONNECTIONS + 2):
            bad = client.get("/bad-reason")
            assert bad.status_code == 502, bad.text  # not the server's 500
            trailers = client.get("/trailers-header")
            assert (trailers.status_code, trailers.text) == (200, "ok")
            assert "trailers" not in trailers.headers
        # Had any of them held its connection, the pool would be full: 503 after 1 s.
        healthy = client.get("/healthy")
        assert (healthy.status_code, healthy.text) == (200, "/healthy")
    assert "Traceback" not in wsgi_router.output()


def test_a_request_without_length_or_coding_is_forwarded_without_a_body(
    wsgi_router: AppServer, upstream: Upstream
) -> None:
    """RFC 9112 §6.3: no Content-Length and no Transfer-Encoding is no body, whatever the
    server says of its input (gunicorn marks every wsgi.input as terminated)."""
    with httpx.Client(base_url=wsgi_router.url, timeout=10) as client:
        plain = client.get("/plain-get")
        upload = client.post("/chunked-post", content=iter([b"abc", b"def"]))
    assert (plain.status_code, upload.status_code) == (200, 200)
    seen = {
        target(head): (head.lower(), body)
        for head, body in zip(upstream.heads, upstream.bodies, strict=True)
    }
    plain_head, plain_body = seen[b"/plain-get"]
    assert b"transfer-encoding" not in plain_head
    assert b"content-length" not in plain_head
    assert plain_body == b""
    upload_head, upload_body = seen[b"/chunked-post"]
    # gunicorn streams a chunked upload on (chunked); waitress buffers it and gives a length.
    assert b"transfer-encoding: chunked" in upload_head or b"content-length: 6" in upload_head
    assert b"abc" in upload_body
    assert b"def" in upload_body


def test_a_start_response_that_raises_closes_the_upstream_response(upstream: Upstream) -> None:
    """Whatever a server refuses in start_response, the response is closed and its pooled
    connection freed: with room for one connection, the next request still gets one."""
    opts = options(upstream)
    router = CanaryWSGI(
        lambda environ, start_response: [], **{**opts, "limits": httpx.Limits(max_connections=1)}
    )

    def refusing(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        raise ValueError(f"refused: {status}")

    def accepting(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    statuses: list[str] = []
    try:
        for _ in range(3):
            with pytest.raises(ValueError, match="refused"):
                router(EnvironBuilder(path="/refused").get_environ(), refusing)
        body = router(EnvironBuilder(path="/after").get_environ(), accepting)
        try:
            assert b"".join(body) == b"/after"
        finally:
            getattr(body, "close", lambda: None)()
        assert statuses == ["200 OK"]
    finally:
        router.close()
