"""HTTP11SyncTransport as CanaryWSGI runs it: one pool shared by the server's threads.
(Every scripted-upstream case of tests/forward/test_pool.py runs over this driver too.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from canary_mw.forward.client import DEFAULT_LIMITS, make_sync_transport
from canary_mw.forward.sync_pool import HTTP11SyncTransport
from tests.support.scripted import (
    TIMEOUTS,
    Upstream,
    answer,
    keep_alive,
    read_head,
    target,
    wait_for,
)


@pytest.fixture
def server() -> Iterator[Upstream]:
    upstream = Upstream(keep_alive)
    yield upstream
    upstream.close()


def get(transport: httpx.BaseTransport, url: str) -> tuple[int, bytes]:
    request = httpx.Request("GET", url, extensions={"timeout": {**TIMEOUTS, "pool": 5.0}})
    response = transport.handle_request(request)
    body = b"".join(response.stream)  # type: ignore[union-attr]
    response.close()
    return response.status_code, body


def test_it_is_canary_wsgis_default_transport() -> None:
    transport = make_sync_transport(DEFAULT_LIMITS)
    assert isinstance(transport, HTTP11SyncTransport)
    transport.close()


def test_threads_share_the_pool_and_each_gets_its_own_answer(server: Upstream) -> None:
    transport = HTTP11SyncTransport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
    wrong: list[tuple[str, bytes]] = []

    def work(worker: int) -> None:
        for n in range(25):
            path = f"/{worker}/{n}"
            status, body = get(transport, server.url + path)
            if (status, body) != (200, path.encode()):
                wrong.append((path, body))

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []
    assert len(server.heads) == 12 * 25
    assert server.accepted <= 4  # never more connections than the limit, kept alive
    transport.close()


def test_close_closes_the_idle_connections(server: Upstream) -> None:
    transport = HTTP11SyncTransport()
    assert get(transport, server.url + "/a") == (200, b"/a")
    transport.close()
    wait_for(lambda: server.finished == 1, what="the upstream to see its connection closed")
    with pytest.raises(RuntimeError, match="closed"):
        get(transport, server.url)


def test_a_waiting_thread_gets_the_connection_another_releases() -> None:
    # The first answer's body comes in two parts, the second once the test says so: until
    # then its exchange holds the only connection.
    rest_may_go = threading.Event()

    def upstream(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        while head := read_head(conn, buffer):
            server.heads.append(head)
            path = target(head)
            if path == b"/held":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n/h")
                rest_may_go.wait(10)
                conn.sendall(b"eld")
            else:
                conn.sendall(answer(path))

    server = Upstream(upstream)
    transport = HTTP11SyncTransport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    request = httpx.Request("GET", server.url + "/held", extensions={"timeout": TIMEOUTS})
    held = transport.handle_request(request)  # its body not read: the connection is busy
    result: list[tuple[int, bytes]] = []

    def wait_for_room() -> None:
        result.append(get(transport, server.url + "/next"))

    waiter = threading.Thread(target=wait_for_room)
    waiter.start()
    # The pool's condition (CPython's) lists the threads waiting on it.
    wait_for(lambda: len(transport._room._waiters) == 1, what="the second request to wait")
    rest_may_go.set()
    assert b"".join(held.stream) == b"/held"  # type: ignore[union-attr]
    held.close()
    waiter.join(10)
    assert result == [(200, b"/next")]
    assert server.accepted == 1
    server.close()
    transport.close()


def test_a_whole_answers_connection_stays_its_own_until_the_response_is_closed() -> None:
    # An answer that came whole with its head has nothing left to read, but its connection
    # is not handed to the next request before the caller closes the response (a WSGI
    # server: once its client has the body). A canary that writes user A's page a second
    # time, late, has the copy caught before reuse instead of read as B's answer. Here the
    # canary sends A's copy when the next request arrives on A's connection (review of the
    # early release, /tmp/review/test_early_release.py: B got A's page, 5 runs in 5).
    def twice(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        late = b""
        while head := read_head(conn, buffer):
            server.heads.append(head)
            path = target(head)
            conn.sendall(late + answer(path))
            late = answer(path) if path == b"/user-a" else b""

    server = Upstream(twice)
    transport = HTTP11SyncTransport(httpx.Limits(max_connections=4, max_keepalive_connections=4))
    a = transport.handle_request(
        httpx.Request("GET", server.url + "/user-a", extensions={"timeout": TIMEOUTS})
    )  # A's answer is in whole; A's response is still open (its client still reading)
    assert get(transport, server.url + "/user-b") == (200, b"/user-b")
    assert server.accepted == 2  # B got a connection of its own
    assert b"".join(a.stream) == b"/user-a"  # type: ignore[union-attr]
    a.close()
    transport.close()
    server.close()


def test_an_expired_idle_connection_is_closed_not_reused(server: Upstream) -> None:
    # Found expired under the pool's lock, closed after it is let go: never leaked.
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=0)
    transport = HTTP11SyncTransport(limits)
    assert get(transport, server.url + "/one") == (200, b"/one")
    wait_for(lambda: len(transport._idle) == 1, what="the first connection to go idle")
    assert get(transport, server.url + "/two") == (200, b"/two")
    assert server.accepted == 2
    wait_for(lambda: server.finished >= 1, what="the expired connection to be closed")
    transport.close()
    wait_for(lambda: server.finished == 2, what="every connection to be closed")


def test_a_whole_answer_read_to_its_end_gives_its_connection_back_unclosed(
    server: Upstream,
) -> None:
    # As a body read from the socket does: a caller that reads to the end and never calls
    # close() does not keep the connection (review: with one connection, the next request
    # waited for room until PoolTimeout).
    transport = HTTP11SyncTransport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    request = httpx.Request("GET", server.url + "/first", extensions={"timeout": TIMEOUTS})
    first = transport.handle_request(request)
    assert b"".join(first.stream) == b"/first"  # type: ignore[union-attr]  (no close())
    assert get(transport, server.url + "/second") == (200, b"/second")
    assert server.accepted == 1
    transport.close()
