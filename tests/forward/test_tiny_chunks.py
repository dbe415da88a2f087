"""A canary response cut into tiny chunks, through CanaryRouter under uvicorn: the router
passes it on in one ASGI message per read from the canary (not one per chunk), and the
event loop serves other requests while it streams (red team F3: a response of one-byte
chunks froze every stable request for as long as it lasted)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.scripted import Upstream, read_head, target, wait_for
from tests.support.servers import AppServer, uvicorn_command

pytestmark = pytest.mark.slow

FIRST = 500_000  # one-byte chunks sent at once
REST = 500_000  # sent once the test has seen a stable request answered meanwhile
HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def tiny_chunks(conn: socket.socket, server: Upstream) -> None:
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        if not target(head).startswith(b"/tiny"):
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            continue
        conn.sendall(HEAD + b"1\r\nx\r\n" * FIRST)
        server.state["release"].wait(60)
        conn.sendall(b"1\r\nx\r\n" * REST + b"0\r\n\r\n")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(tiny_chunks)
    yield server
    server.close()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def router(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[AppServer]:
    options = {
        "store": "memory://",
        "canary_url": upstream.url,
        "default_rules": [{"id": "tiny", "when": {"path_prefix": "/tiny"}, "target": "canary"}],
        "timeout": {"connect": 2, "read": 60, "write": 10, "pool": 2},
    }
    command = uvicorn_command("tests.support.tiny_chunk_apps:make_app", "--http", request.param,
                              factory=True)  # fmt: skip
    server = AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()
    yield server
    server.cleanup()


def test_tiny_chunks_go_out_one_message_per_read_and_stable_is_served_meanwhile(
    router: AppServer, upstream: Upstream
) -> None:
    upstream.state["release"] = release = threading.Event()
    received = [0]
    body = bytearray()
    failure: list[BaseException] = []

    def download() -> None:
        try:
            with (
                httpx.Client(timeout=120) as client,
                client.stream("GET", f"{router.url}/tiny") as response,
            ):
                for piece in response.iter_raw():
                    body.extend(piece)
                    received[0] = len(body)
        except BaseException as exc:  # reported by the assertions below
            failure.append(exc)

    downloading = threading.Thread(target=download)
    downloading.start()
    try:
        wait_for(lambda: received[0] or failure, timeout=30, what="the first canary bytes")
        # The stream is in progress (the canary holds its second half until this is answered).
        stable = httpx.get(f"{router.url}/stable", timeout=30)
        assert (stable.status_code, stable.text) == (200, "stable\n")
        assert not release.is_set()
        assert received[0] < FIRST + REST
    finally:
        release.set()
        downloading.join(120)
    assert not failure, failure
    assert bytes(body) == b"x" * (FIRST + REST)
    # The router records a response's counts once its app returns, which can be a moment
    # after the client has read the last byte: wait for them.
    found: dict[str, dict[str, int]] = {}
    wait_for(lambda: found.update(httpx.get(f"{router.url}/counts", timeout=10).json())
             or "/tiny" in found, timeout=10, what="the counts of /tiny")  # fmt: skip
    counts = found["/tiny"]
    assert counts["bytes"] == FIRST + REST
    # One message per read of the canary's bytes (a million chunks, a few dozen reads).
    assert counts["messages"] <= counts["reads"] + 1, counts
    assert counts["messages"] < (FIRST + REST) // 100, counts
    # Between two messages the event loop ran (the first one may follow its read directly).
    assert counts["no_turn_between"] <= 1, counts
