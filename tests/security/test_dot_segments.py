"""A request target with a dot segment is refused with 400 before the routing decision and
before forwarding (red team F7): an upstream's path prefix (``http://canary/app1``) cannot be
escaped with ``/../admin`` and its encoded forms, and no rule matches one path while a
normalising hop behind the canary serves another. Real routers: uvicorn (both parsers) and
gunicorn, a canary URL with a path prefix, raw sockets (client libraries normalise)."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from canary_mw.facts import has_dot_segment
from tests.support.routers import canary_server, start_router  # noqa: F401 (a fixture)
from tests.support.servers import AppServer, uvicorn_command

ALL_TO_CANARY = [{"id": "all", "when": {"path_prefix": "/"}, "target": "canary"}]

REFUSED = [
    "/../admin/secret", "/x/../../admin", "/./admin", "/x/..", "/.", "/..",
    "/%2e%2e/admin", "/%2E%2e/admin", "/.%2e/admin", "/%2e/admin", "/..%2fadmin",
    "/..%2Fadmin", "/x/..%5cadmin", "/x/..\\admin",
]  # fmt: skip
FORWARDED = ["/a.b/c..d/...", "/static/app.js", "/files/a%2fb", "/.well-known/x", "/x/.a/..b"]


@pytest.mark.parametrize("path", REFUSED)
def test_dot_segments_are_found(path: str) -> None:
    assert has_dot_segment(path.encode())


@pytest.mark.parametrize("path", FORWARDED)
def test_dots_inside_names_are_not_segments(path: str) -> None:
    assert not has_dot_segment(path.encode())


def exchange(port: int, target: str) -> tuple[int, bytes]:
    request = f"GET {target} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request.encode("latin-1"))
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


ROUTERS = ["uvicorn-h11", "uvicorn-httptools", "gunicorn"]


@pytest.fixture(scope="module", params=ROUTERS)
def router(request: pytest.FixtureRequest, canary_server: AppServer) -> Iterator[AppServer]:  # noqa: F811
    options = {"canary_url": f"{canary_server.url}/app1", "default_rules": ALL_TO_CANARY}
    if request.param == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads",
                   "2", "-b", "127.0.0.1:{port}", "--log-level", "warning",
                   "tests.support.wsgi_apps:make_app()"]  # fmt: skip
        server = AppServer(
            command, env={"CANARY_TEST_OPTIONS": json.dumps({"store": "memory://", **options})}
        ).start()
    else:
        parser = request.param.split("-")[1]
        command = uvicorn_command(
            "tests.support.apps:make_router_app", "--http", parser, factory=True
        )
        server = start_router("memory://", command, **options)
    yield server
    server.cleanup()


def _seen(canary: AppServer, mark: str) -> list[str]:
    reply = httpx.get(f"{canary.url}/seen", params={"mark": mark}, timeout=10)
    return [seen["target"] for seen in reply.json()]


@pytest.mark.parametrize("path", REFUSED)
def test_a_dot_segment_never_reaches_the_canary(
    router: AppServer,
    canary_server: AppServer,  # noqa: F811
    path: str,
) -> None:
    mark = uuid.uuid4().hex
    status, body = exchange(router.port, f"{path}?mark={mark}")
    assert status == 400, body
    assert _seen(canary_server, mark) == []


@pytest.mark.parametrize("path", FORWARDED)
def test_dots_inside_names_are_forwarded_under_the_prefix(
    router: AppServer,
    canary_server: AppServer,  # noqa: F811
    path: str,
) -> None:
    mark = uuid.uuid4().hex
    status, body = exchange(router.port, f"{path}?mark={mark}")
    assert status == 200, body
    assert _seen(canary_server, mark) == [f"/app1{path}?mark={mark}"]
