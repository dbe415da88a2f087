"""HTTP11SyncTransport's timeouts attacked by hostile upstreams and by signals, over real
loopback sockets and real gunicorn workers.

Every wait must stay bounded by its timeout (a deadline: signals do not extend it), and a
timed-out connection must never be reused. Written as a review of kernel socket timeouts
(SO_RCVTIMEO / SO_SNDTIMEO, commit 73fb9b8), which failed two of these: a signal restarted the
whole kernel timeout (the EINTR tests below), and a drip-reading upstream held a request head's
sendall far past the write timeout. Plain sockets are now non-blocking with deadlines of ours.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from canary_mw.forward.sync_pool import HTTP11SyncTransport, _Connection
from tests.support.routers import ALL_TO_CANARY
from tests.support.scripted import Upstream, deaf, elapsed, read_body, read_head, target, wait_for
from tests.support.servers import AppServer, wait_until

# -- helpers -------------------------------------------------------------------------------


def timeouts(
    read: float | None = 2.0, write: float | None = 2.0, pool: float | None = 2.0
) -> dict[str, float | None]:
    return {"connect": 2.0, "read": read, "write": write, "pool": pool}


def request(
    url: str, method: str = "GET", *, read: float | None = 2.0, write: float | None = 2.0,
    **options: Any,
) -> httpx.Request:  # fmt: skip
    return httpx.Request(method, url, extensions={"timeout": timeouts(read, write)}, **options)


def send(transport: HTTP11SyncTransport, req: httpx.Request) -> tuple[int, bytes]:
    response = transport.handle_request(req)
    body = b"".join(stream_of(response))
    response.close()
    return response.status_code, body


def stream_of(response: httpx.Response) -> httpx.SyncByteStream:
    return cast(httpx.SyncByteStream, response.stream)


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def by_path(conn: socket.socket, server: Upstream) -> None:
    """Keep-alive: ``/never`` is never answered; ``/slow`` after 0.6 s; else at once."""
    buffer = bytearray()
    while head := read_head(conn, buffer):
        server.heads.append(head)
        path = target(head)
        if path.startswith(b"/never"):
            server.state["release"].wait(30)
            return
        if path.startswith(b"/slow"):
            time.sleep(0.6)
        conn.sendall(answer(path))


@pytest.fixture
def transport() -> Iterator[HTTP11SyncTransport]:
    pool = HTTP11SyncTransport(httpx.Limits(max_connections=2, max_keepalive_connections=2))
    yield pool
    pool.close()


def idle_connections(pool: HTTP11SyncTransport) -> list[_Connection]:
    return list(pool._idle._oldest_first)


@contextmanager
def interrupted(thread_id: int, every: float = 0.05, at_most: float = 6.0) -> Iterator[list[int]]:
    """Signal (SIGUSR2, a Python handler installed) the thread ``thread_id`` every ``every``
    seconds for at most ``at_most`` seconds, as a process's signals (gunicorn's SIGWINCH, a
    sampling profiler's timer) interrupt a blocking call. Yields the count of signals sent."""
    sent = [0]
    stop = threading.Event()
    previous = signal.signal(signal.SIGUSR2, lambda number, frame: None)

    def pester() -> None:
        deadline = time.monotonic() + at_most
        while not stop.wait(every) and time.monotonic() < deadline:
            signal.pthread_kill(thread_id, signal.SIGUSR2)
            sent[0] += 1

    pesterer = threading.Thread(target=pester, daemon=True)
    pesterer.start()
    try:
        yield sent
    finally:
        stop.set()
        pesterer.join(10)
        signal.signal(signal.SIGUSR2, previous)


# -- timeouts per request ----------------------------------------------------------------


def test_read_and_write_timeouts_follow_each_request_on_a_reused_connection(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """Timeouts change between requests on one connection; none is left behind: a short
    read timeout does not cut a later slow answer, and a "none" does not outlive its
    request."""
    server = upstream(by_path)
    steps: list[tuple[str, float | None, float | None]] = [
        ("/fast", 0.1, 7.0),
        ("/slow", 3.0, 0.2),  # answers after 0.6 s: the 0.1 s before must be gone
        ("/slow", None, None),
        ("/fast", 0.05, 1.5),
    ]
    for path, read, write in steps:
        assert send(transport, request(server.url + path, read=read, write=write)) == (
            200, path.encode(),
        )  # fmt: skip
        [connection] = idle_connections(transport)
        assert connection.sock.gettimeout() == 0.0  # non-blocking: the waits are ours
    assert server.accepted == 1  # all of it on one connection
    send(transport, request(server.url + "/slow", read=None, write=None))
    took, error, _ = elapsed(lambda: send(transport, request(server.url + "/never", read=0.3)))
    assert isinstance(error, httpx.ReadTimeout)
    assert took < 5
    assert server.accepted == 1
    assert send(transport, request(server.url + "/after")) == (200, b"/after")
    assert server.accepted == 2  # the timed-out connection was closed, never reused
    assert [target(head) for head in server.heads][-2:] == [b"/never", b"/after"]


# -- hostile upstreams ---------------------------------------------------------------------


@pytest.mark.parametrize("read", [0, 1e-7, 0.3])
@pytest.mark.parametrize("reused", [False, True])
def test_an_upstream_that_never_answers_times_out_and_is_dropped(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport, read: float, reused: bool
) -> None:
    server = upstream(by_path)
    if reused:  # the connection carried a request with no read timeout at all
        assert send(transport, request(server.url + "/first", read=None)) == (200, b"/first")
    took, error, _ = elapsed(lambda: send(transport, request(server.url + "/never", read=read)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert took < 5
    assert idle_connections(transport) == []
    assert send(transport, request(server.url + "/next")) == (200, b"/next")
    assert server.accepted == 2  # /never's connection was dropped, never reused
    # With a zero timeout /never may be given up before the upstream reads it: its head can
    # be recorded after /next's, each on its own connection.
    wait_for(lambda: b"/never" in [target(head) for head in server.heads], what="/never read")
    assert [target(head) for head in server.heads].count(b"/next") == 1


def test_a_head_sent_a_byte_at_a_time_is_bounded_as_a_whole(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """Each byte comes well within the read timeout; the whole head never does."""

    def drip(conn: socket.socket, server: Upstream) -> None:
        read_head(conn, bytearray())
        for byte in b"HTTP/1.1 200 OK\r\n" + b"x-drip: " + b"y" * 10_000:
            if server.state["release"].wait(0.02):
                return
            conn.sendall(bytes([byte]))

    server = upstream(drip)
    took, error, _ = elapsed(lambda: send(transport, request(server.url, read=0.5)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert took < 5


def test_an_upstream_stalling_mid_body_times_out_and_its_bytes_go_nowhere(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    def stall(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        head = read_head(conn, buffer)
        if target(head) == b"/stall":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nSECRET-OF-A")
            server.state["release"].wait(30)
            conn.sendall(b"B" * 89)  # the rest, too late: must reach nobody
            return
        keep_alive_from(conn, server, buffer, head)

    server = upstream(stall)
    response = transport.handle_request(request(server.url + "/stall", read=0.3))
    assert response.status_code == 200
    took, error, _ = elapsed(lambda: b"".join(stream_of(response)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert took < 5
    server.state["release"].set()
    for n in range(3):
        assert send(transport, request(server.url + f"/user{n}")) == (200, b"/user%d" % n)
    assert server.accepted == 2


def keep_alive_from(conn: socket.socket, server: Upstream, buffer: bytearray, head: bytes) -> None:
    while head:
        server.heads.append(head)
        conn.sendall(answer(target(head)))
        head = read_head(conn, buffer)


def test_an_upstream_that_stops_reading_a_large_body_times_the_write_out(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    server = upstream(deaf)
    piece = b"x" * (1 << 20)
    req = request(server.url, "POST", write=0.4, content=iter([piece] * 64))
    took, error, _ = elapsed(lambda: send(transport, req))
    assert isinstance(error, httpx.WriteTimeout), error
    assert took < 5
    assert idle_connections(transport) == []


def test_an_upstream_that_answers_early_and_stops_reading_is_heard(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """The body is sent with poll and a non-blocking send: a full socket never deafens it."""

    def refuse(conn: socket.socket, server: Upstream) -> None:
        read_head(conn, bytearray())
        conn.sendall(b"HTTP/1.1 413 Too Large\r\ncontent-length: 4\r\n\r\nnope")
        server.state["release"].wait(30)

    server = upstream(refuse)
    req = request(server.url, "POST", write=None, read=None, content=iter([b"x" * (1 << 20)] * 64))
    took, error, result = elapsed(lambda: send(transport, req))
    assert error is None, error
    assert result == (413, b"nope")
    assert took < 5
    assert idle_connections(transport) == []  # the body is unfinished: never reused


def test_an_upstream_that_closes_after_each_byte_never_hands_a_connection_on(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    reply = answer(b"/mine")

    def one_byte(conn: socket.socket, server: Upstream) -> None:
        read_head(conn, bytearray())
        with server._lock:
            count = server.state.setdefault("count", 0)
            server.state["count"] = count + 1
        conn.sendall(reply[: count % len(reply) + 1])

    server = upstream(one_byte)
    for _ in range(len(reply) - 1):
        took, error, _ = elapsed(lambda: send(transport, request(server.url, read=0.5)))
        assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadTimeout), error
        assert took < 5
        assert idle_connections(transport) == []
    assert send(transport, request(server.url)) == (200, b"/mine")
    wait_for(lambda: server.finished == server.accepted, what="every handler to finish")


def test_an_ipv6_upstream_gets_the_same_timeouts(transport: HTTP11SyncTransport) -> None:
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:  # pragma: no cover - no IPv6 on this host
        pytest.skip("no IPv6 loopback")
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        head = read_head(conn, bytearray())
        conn.sendall(answer(target(head)))
        read_head(conn, bytearray())  # the second request: never answered

    threading.Thread(target=serve, daemon=True).start()
    try:
        assert send(transport, request(f"http://[::1]:{port}/v6", read=1.5)) == (200, b"/v6")
        [connection] = idle_connections(transport)
        assert connection.plain
        assert connection.sock.family == socket.AF_INET6
        took, error, _ = elapsed(
            lambda: send(transport, request(f"http://[::1]:{port}/", read=0.3))
        )
        assert isinstance(error, httpx.ReadTimeout), error
        assert took < 5
    finally:
        listener.close()
        for conn in held:
            conn.close()


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 from a trustme CA, and a client
    context that trusts that CA."""
    import trustme

    authority = trustme.CA()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(server_side)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    return server_side, trusting


@pytest.fixture
def tls(upstream: Callable[..., Upstream]) -> Iterator[tuple[Upstream, HTTP11SyncTransport]]:
    """A TLS upstream (by_path) and a pool that trusts it."""
    server_side, trusting = tls_contexts()
    pool = HTTP11SyncTransport(verify=trusting)
    yield upstream(by_path, tls=server_side), pool
    pool.close()


def test_a_tls_upstream_that_answers_early_is_heard_and_bodies_follow_the_write_timeout(
    upstream: Callable[..., Upstream],
) -> None:
    """A body sent to a TLS upstream on a new connection: TLS 1.3 session tickets arrive
    after the handshake and wake the listening send's poll without any HTTP in them. It read
    them as the upstream's answer and waited for the rest, which could only follow the
    request it was holding back: every upload on a fresh TLS connection ended in a
    ReadTimeout (since the blocking driver was written; found writing this test). Also: an
    early answer is heard, and a body sent on a connection whose last read timeout was
    short gets its own write timeout (TLS keeps Python's one timeout for both ways)."""

    def refuse_then_serve(conn: socket.socket, server: Upstream) -> None:
        buffer = bytearray()
        head = read_head(conn, buffer)
        server.heads.append(head)
        if target(head) == b"/refuse":
            conn.sendall(b"HTTP/1.1 413 Too Large\r\ncontent-length: 4\r\n\r\nnope")
            server.state["release"].wait(30)
            return
        while head:  # keep-alive, reading each body whole
            read_body(conn, buffer, head)
            conn.sendall(answer(target(head)))
            head = read_head(conn, buffer)
            if head:
                server.heads.append(head)

    server_side, trusting = tls_contexts()
    server = upstream(refuse_then_serve, tls=server_side)
    pool = HTTP11SyncTransport(verify=trusting)
    try:
        big = iter([b"x" * (1 << 20)] * 64)
        refused = request(server.url + "/refuse", "POST", write=5.0, read=5.0, content=big)
        took, error, result = elapsed(lambda: send(pool, refused))
        assert error is None, error
        assert result == (413, b"nope")
        assert took < 5
        # A fresh connection: a short read first, then an upload with a long write timeout.
        assert send(pool, request(server.url + "/a", read=0.05, write=5.0)) == (200, b"/a")
        upload = request(server.url + "/b", "POST", read=5.0, write=5.0,
                         content=iter([b"y" * (1 << 20)] * 8))  # fmt: skip
        assert send(pool, upload) == (200, b"/b")
        assert server.accepted == 2
    finally:
        pool.close()


def test_a_tls_upstream_keeps_pythons_timeouts(
    tls: tuple[Upstream, HTTP11SyncTransport],
) -> None:
    server, pool = tls
    assert send(pool, request(server.url + "/a", read=0.2, write=3.0)) == (200, b"/a")
    [connection] = idle_connections(pool)
    assert not connection.plain
    timeout = connection.sock.gettimeout()
    assert timeout is not None
    assert 0 < timeout <= 0.2  # Python's: what was left of the head's 0.2 s
    assert send(pool, request(server.url + "/slow", read=3.0)) == (200, b"/slow")
    took, error, _ = elapsed(lambda: send(pool, request(server.url + "/never", read=0.3)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert took < 5
    assert send(pool, request(server.url + "/b")) == (200, b"/b")
    assert server.accepted == 2


# -- signals -------------------------------------------------------------------------------


def test_a_signal_handler_that_raises_mid_read_leaves_the_pool_whole(
    upstream: Callable[..., Upstream],
) -> None:
    """As gunicorn's SIGTERM (SystemExit) or a request-timeout alarm would: the exception
    comes out of the blocking recv, and the connection is closed and counted out."""

    class AlarmError(Exception):
        pass

    def raise_alarm(number: int, frame: object) -> None:
        raise AlarmError

    server = upstream(by_path)
    pool = HTTP11SyncTransport(httpx.Limits(max_connections=1, max_keepalive_connections=1))
    previous = signal.signal(signal.SIGUSR2, raise_alarm)
    timer = threading.Timer(0.3, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR2))
    try:
        timer.start()
        took, error, _ = elapsed(lambda: send(pool, request(server.url + "/never", read=None)))
        assert isinstance(error, AlarmError), error
        assert took < 5
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    assert pool._open == 0
    assert send(pool, request(server.url + "/next")) == (200, b"/next")  # one slot: not leaked
    pool.close()


def test_signals_do_not_stretch_a_body_write_timeout(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """A body is sent after poll, and Python's poll counts down its timeout across EINTR."""

    server = upstream(deaf)
    req = request(server.url, "POST", write=0.5, content=iter([b"x" * (1 << 20)] * 64))
    with interrupted(threading.get_ident()) as sent:
        took, error, _ = elapsed(lambda: send(transport, req))
    assert isinstance(error, httpx.WriteTimeout), error
    assert sent[0] > 0
    assert took < 4


def test_signals_do_not_stretch_a_tls_read_timeout(
    tls: tuple[Upstream, HTTP11SyncTransport],
) -> None:
    """TLS keeps Python's timeout, which counts one deadline down across EINTR."""
    server, pool = tls
    with interrupted(threading.get_ident(), every=0.05, at_most=6.0) as sent:
        took, error, _ = elapsed(lambda: send(pool, request(server.url + "/never", read=0.5)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert sent[0] > 0
    assert took < 4


def test_signals_to_the_reading_thread_do_not_stretch_the_read_timeout(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """A blocking recv under SO_RCVTIMEO fails with EINTR on each signal, CPython retries it
    (PEP 475) and the kernel starts the whole timeout again: signals more often than the
    timeout kept the read waiting for ever. A deadline of ours does not move."""
    server = upstream(by_path)
    with interrupted(threading.get_ident(), every=0.05, at_most=6.0) as sent:
        took, error, _ = elapsed(lambda: send(transport, request(server.url + "/never", read=0.5)))
    assert isinstance(error, httpx.ReadTimeout), error
    assert sent[0] > 0
    assert took < 4, f"a 0.5 s read timeout fired after {took:.1f} s ({sent[0]} signals)"


def test_signals_to_a_worker_thread_do_not_stretch_a_body_read(
    upstream: Callable[..., Upstream], transport: HTTP11SyncTransport
) -> None:
    """The same in a thread that is not the main one (gunicorn gthread's workers): there
    CPython does not even run the handler, it just retries the recv."""

    def half(conn: socket.socket, server: Upstream) -> None:
        read_head(conn, bytearray())
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        server.state["release"].wait(30)

    server = upstream(half)
    result: list[tuple[float, BaseException | None, object]] = []
    started = threading.Event()

    def work() -> None:
        response = transport.handle_request(request(server.url, read=0.5))
        started.set()
        result.append(elapsed(lambda: b"".join(stream_of(response))))

    # The handler must exist (installed from the main thread) for EINTR to happen at all.
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    assert started.wait(5)
    assert worker.ident is not None
    with interrupted(worker.ident, every=0.05, at_most=6.0):
        worker.join(15)
    [(took, error, _)] = result
    assert isinstance(error, httpx.ReadTimeout), error
    assert took < 4, f"a 0.5 s read timeout fired after {took:.1f} s"


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_an_upstream_draining_a_large_head_slowly_is_bounded_by_the_write_timeout(
    tls: bool,
) -> None:
    """The write-side twin of red team F4: a head is bounded as a whole, not per send, or
    an upstream reading a few bytes in time holds the thread as long as it likes. Over TLS
    too (its head now goes out through the same non-blocking sends as a body)."""
    server_side, trusting = tls_contexts()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()
    drained = [0]

    def drip() -> None:
        conn, _ = listener.accept()
        if tls:
            conn = server_side.wrap_socket(conn, server_side=True)
        with conn:
            while not stop.wait(0.1) and (data := conn.recv(2048)):
                drained[0] += len(data)

    threading.Thread(target=drip, daemon=True).start()
    timer = threading.Timer(8, stop.set)  # the upstream gives up after 8 s at most
    timer.start()
    # A head far larger than the socket buffers (10 MiB; a real network's are smaller).
    headers = [(b"x-pad-%d" % n, b"a" * 4000) for n in range(2500)]
    pool = HTTP11SyncTransport(verify=trusting)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    try:
        took, error, _ = elapsed(lambda: send(pool, request(url, write=0.5, headers=headers)))
    finally:
        stop.set()
        timer.cancel()
        listener.close()
        pool.close()
    assert drained[0] > 0
    assert isinstance(error, httpx.WriteTimeout), error
    assert took < 4, f"a 0.5 s write timeout fired after {took:.1f} s"


# -- CanaryWSGI under real gunicorn workers, SIGWINCH arriving -----------------------------


def gunicorn_router(worker: str, canary_url: str) -> AppServer:
    options = {
        "store": "memory://", "canary_url": canary_url, "default_rules": ALL_TO_CANARY,
        "timeout": {"connect": 2, "read": 0.5, "write": 2, "pool": 2},
    }  # fmt: skip
    command = [
        # (--threads above 1 would turn gunicorn's sync worker into gthread)
        sys.executable, "-m", "gunicorn", "-w", "1", "-k", worker,
        "--threads", "1" if worker == "sync" else "2",
        "-b", "127.0.0.1:{port}", "--log-level", "warning", "--timeout", "60",
        "tests.support.wsgi_apps:make_app()",
    ]  # fmt: skip
    return AppServer(command, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()


def worker_pid(master: int) -> int:
    def child() -> int | None:
        found = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return int(found[0]) if found else None

    return int(wait_until(child, timeout=10, what="the gunicorn worker") or 0)


def winched(router: AppServer, pid: int) -> tuple[float, int, int]:
    """GET /never through the router while its worker gets SIGWINCH (gunicorn's workers
    handle it, so it interrupts system calls) every 50 ms, for at most 6 s."""
    stop = threading.Event()
    sent = [0]

    def pester() -> None:
        deadline = time.monotonic() + 6
        while not stop.wait(0.05) and time.monotonic() < deadline:
            os.kill(pid, signal.SIGWINCH)
            sent[0] += 1

    pesterer = threading.Thread(target=pester, daemon=True)
    pesterer.start()
    start = time.monotonic()
    try:
        with httpx.Client(timeout=20) as client:
            status = client.get(router.url + "/never").status_code
    finally:
        stop.set()
        pesterer.join(10)
    return time.monotonic() - start, status, sent[0]


@pytest.fixture
def canary() -> Iterator[Upstream]:
    server = Upstream(by_path)
    server.state["release"] = threading.Event()
    yield server
    server.state["release"].set()
    server.close()


@pytest.mark.slow
def test_sigwinch_does_not_stretch_the_read_timeout_under_gunicorn_sync(canary: Upstream) -> None:
    router = gunicorn_router("sync", canary.url)
    try:
        pid = worker_pid(router.pid)
        with httpx.Client(timeout=20) as client:  # the worker is up and forwards
            assert client.get(router.url + "/warm").text == "/warm"
        took, status, sent = winched(router, pid)
        assert sent > 0
        assert status >= 500
        assert took < 4, f"a 0.5 s read timeout answered after {took:.1f} s ({sent} signals)"
    finally:
        router.cleanup()


@pytest.mark.slow
def test_sigwinch_to_a_gthread_worker_reaches_its_main_thread_only(canary: Upstream) -> None:
    """In gthread the main thread waits in its poll loop and takes the process's signals:
    the request threads' reads are not interrupted, and the read timeout holds."""
    router = gunicorn_router("gthread", canary.url)
    try:
        pid = worker_pid(router.pid)
        with httpx.Client(timeout=20) as client:
            assert client.get(router.url + "/warm").text == "/warm"
        took, status, sent = winched(router, pid)
        assert sent > 0
        assert status >= 500
        assert took < 4
        with httpx.Client(timeout=20) as client:  # and the worker goes on forwarding
            assert client.get(router.url + "/after").text == "/after"
    finally:
        router.cleanup()
