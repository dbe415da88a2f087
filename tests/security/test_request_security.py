"""Request-side security of the forwarding path (issue 11, findings 2, 5, 7, 11, 12), against
real router processes under both of uvicorn's HTTP parsers, a real canary that answers with
what it received (tests/support/security_apps.py), and raw sockets where a client library would
tidy the request up.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support.routers import TRUSTED_PROXY, client_from, start_router
from tests.support.servers import AppServer, uvicorn_command

pytestmark = pytest.mark.slow

UNTRUSTED = "127.0.0.3"
EVERY_GET_TO_CANARY = [{"id": "all", "when": {"method": "GET"}, "target": "canary"}]
HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
#: Headers naming the client or the original request: never passed on from an untrusted
#: client (canary_mw.forward.headers documents the list).
CLIENT_FACTS = {
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-scheme", "x-forwarded-ssl",
    "x-real-ip", "true-client-ip", "x-client-ip", "cf-connecting-ip", "x-cluster-client-ip",
    "fastly-client-ip", "x-original-url", "x-rewrite-url", "x-original-host",
}  # fmt: skip
# What the router adds itself, from what it saw.
OURS = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


@pytest.fixture(scope="module")
def headers_canary() -> Iterator[AppServer]:
    server = AppServer(uvicorn_command("tests.support.security_apps:headers_app")).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module", params=["h11", "httptools"])
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def router(parser: str, headers_canary: AppServer) -> Iterator[AppServer]:
    """Every GET (WebSocket handshakes included) goes to the canary."""
    command = uvicorn_command("tests.support.apps:make_router_app", "--http", parser, factory=True)
    server = start_router(
        "memory://",
        canary_url=headers_canary.url,
        default_rules=EVERY_GET_TO_CANARY,
        trusted_proxies=[TRUSTED_PROXY],
        timeout={"connect": 2, "read": 5, "write": 5, "pool": 2},
        command=command,
    )
    yield server
    server.cleanup()


def exchange(port: int, request: bytes, source: str = UNTRUSTED) -> tuple[int, bytes]:
    """Send raw bytes; the status of the first reply (0: closed without one) and its body
    so far. Reads until the head is in and the connection closes or the body is complete."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as sock:
        sock.settimeout(30)
        sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return (int(head.split()[1]) if head.startswith(b"HTTP/") else 0), body
    return 0, b""


@contextlib.contextmanager
def internal_service() -> Iterator[socket.socket]:
    """A listening socket standing for a service the router must never reach. Nothing
    accepts: a connection made to it stays in its accept queue, where ``reached`` finds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def reached(service: socket.socket) -> bool:
    readable, _, _ = select.select([service], [], [], 0)
    return bool(readable)


def ws_received(port: int, source: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """Open a WebSocket through the router from ``source``; what the canary received."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    with ws_connect(f"ws://127.0.0.1:{port}/ws?room=1", sock=sock, additional_headers=headers,
                    open_timeout=10) as ws:  # fmt: skip
        return dict(json.loads(ws.recv(timeout=10)))


# -- finding 2: WebSocket SSRF --------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    ["@127.0.0.1:{port}/internal", ":1@127.0.0.1:{port}/internal",
     "http://127.0.0.1:{port}/internal", "ws://127.0.0.1:{port}/internal"],
)  # fmt: skip
def test_a_websocket_target_never_chooses_where_the_router_connects(
    router: AppServer, target: str
) -> None:
    with internal_service() as service:
        port = service.getsockname()[1]
        request = (
            f"GET {target.format(port=port)} HTTP/1.1\r\nHost: app.test\r\n{HANDSHAKE}"
            "Cookie: session=secret\r\nAuthorization: Bearer user-token\r\n\r\n"
        )
        status, _ = exchange(router.port, request.encode())
        # The router decided before answering: had it connected, the connection would be
        # in the service's accept queue by now.
        assert status != 101
        assert not reached(service), f"the router connected to the internal port ({status})"
    # control: an origin-form target through the same router reaches the canary
    received = ws_received(router.port, UNTRUSTED, [])
    assert (received["target"], received["query"]) == ("/ws", "room=1")


# -- findings 11 and 12: header hygiene over HTTP and WebSocket -----------------------------
def _spoofs() -> list[tuple[str, str]]:
    headers = [(name, "10.1.2.3") for name in sorted(CLIENT_FACTS)]
    twins = [(name.replace("-", "_"), "10.1.2.3") for name in sorted(CLIENT_FACTS) if "-" in name]
    return headers + twins


def _names(received: dict[str, Any]) -> list[str]:
    return [name.lower() for name, _ in received["headers"]]


def _values(received: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in received["headers"] if key.lower() == name]


def _http_received(port: int, source: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    with client_from(source) as client:
        response = client.get(f"http://127.0.0.1:{port}/page", headers=headers)
    assert response.headers["x-canary-version"] == "canary"
    return dict(response.json())


@pytest.mark.parametrize("protocol", ["http", "websocket"])
def test_an_untrusted_client_cannot_send_forwarding_headers(
    router: AppServer, protocol: str
) -> None:
    receive = _http_received if protocol == "http" else ws_received
    received = receive(router.port, UNTRUSTED, _spoofs())
    assert _values(received, "x-forwarded-for") == [UNTRUSTED]
    assert _values(received, "x-forwarded-proto") == ["http"]
    assert _values(received, "x-forwarded-host") == [f"127.0.0.1:{router.port}"]
    names = _names(received)
    leaked = [name for name in names if name.replace("_", "-") in CLIENT_FACTS and name not in OURS]
    assert leaked == []
    assert not any(value == "10.1.2.3" for _, value in received["headers"])


@pytest.mark.parametrize("protocol", ["http", "websocket"])
def test_a_trusted_proxys_forwarding_headers_are_passed_on(
    router: AppServer, protocol: str
) -> None:
    receive = _http_received if protocol == "http" else ws_received
    sent = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "shop.example"),
        ("X-Forwarded-Prefix", "/shop"),
        ("X-Real-IP", "203.0.113.7"),
        ("X_Forwarded_For", "10.1.2.3"),  # a twin is nobody's to send
    ]
    received = receive(router.port, TRUSTED_PROXY, sent)
    assert _values(received, "x-forwarded-for") == [f"203.0.113.7, {TRUSTED_PROXY}"]
    assert _values(received, "x-forwarded-proto") == ["https"]
    assert _values(received, "x-forwarded-host") == ["shop.example"]
    assert _values(received, "x-forwarded-prefix") == ["/shop"]
    assert _values(received, "x-real-ip") == ["203.0.113.7"]
    assert "x_forwarded_for" not in _names(received)


# -- finding 7: a client behind a trusted proxy chooses no address ------------------------
OFFICE_TO_CANARY = [{"id": "office", "when": {"ip": ["10.0.0.0/8"]}, "target": "canary"}]


@pytest.fixture(scope="module")
def office_router(parser: str, headers_canary: AppServer) -> Iterator[AppServer]:
    """Clients in 10.0.0.0/8 go to the canary; 127.0.0.5 is a trusted proxy (defaults
    otherwise: every client-address header kind is read)."""
    command = uvicorn_command("tests.support.apps:make_router_app", "--http", parser, factory=True)
    server = start_router(
        "memory://", canary_url=headers_canary.url, default_rules=OFFICE_TO_CANARY,
        trusted_proxies=[TRUSTED_PROXY], command=command,
    )  # fmt: skip
    yield server
    server.cleanup()


PROXIED = {
    # what a proxy that writes only X-Forwarded-For (ALB, nginx defaults) passes on
    "XFF proxy, client adds Forwarded": ["X-Forwarded-For: 203.0.113.7", "Forwarded: for=10.1.2.3"],
    "XFF proxy, client adds quoted FOR=": [
        "X-Forwarded-For: 203.0.113.7", 'Forwarded: FOR="10.1.2.3:80"'],
    "XFF proxy, client adds mapped IPv6": [
        "X-Forwarded-For: 203.0.113.7", 'Forwarded: for="[::ffff:10.1.2.3]:80"'],
    "XFF proxy, client adds X-Real-IP": ["X-Forwarded-For: 203.0.113.7", "X-Real-IP: 10.1.2.3"],
    # an X-Real-IP proxy passes the client's own X-Forwarded-For
    "X-Real-IP proxy, client adds XFF": ["X-Real-IP: 203.0.113.7", "X-Forwarded-For: 10.1.2.3"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(PROXIED))
def test_a_client_behind_a_trusted_proxy_cannot_choose_its_address(
    office_router: AppServer, case: str
) -> None:
    lines = ["GET /page HTTP/1.1", "Host: app.test", "Connection: close", *PROXIED[case]]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    status, body = exchange(office_router.port, request, source=TRUSTED_PROXY)
    assert (status, body) == (200, b"This is version 1\n")  # stable: unknown, not 10.1.2.3
    # control: the proxy's own header naming an office address does reach the canary
    lines = [*lines[:3], "X-Forwarded-For: 10.1.2.3"]
    status, body = exchange(office_router.port, ("\r\n".join(lines) + "\r\n\r\n").encode(),
                            source=TRUSTED_PROXY)  # fmt: skip
    assert status == 200
    assert _values(json.loads(body), "x-forwarded-for") == [f"10.1.2.3, {TRUSTED_PROXY}"]


# -- finding 12: Host ---------------------------------------------------------------------
def _host_request(target: str, *hosts: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"Host: {host}" for host in hosts), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "hosts", [("app.test", "other.test"), ("other.test", "app.test"), ("app.test", "app.test")]
)
def test_two_host_headers_are_refused(router: AppServer, hosts: tuple[str, str]) -> None:
    status, body = exchange(router.port, _host_request("/page", *hosts))
    assert status == 400, body  # RFC 9112 §3.2; 200 would be the canary's answer
    handshake = _host_request("/ws", *hosts).replace(b"Connection: close\r\n", HANDSHAKE.encode())
    status, _ = exchange(router.port, handshake)
    assert status in (400, 403)


def test_an_absolute_form_target_naming_another_host_is_refused_or_ignored(
    router: AppServer, parser: str
) -> None:
    status, body = exchange(
        router.port, _host_request("http://other.test:8080/page?q=1", "app.test")
    )
    if parser == "h11":  # h11 passes the target on: the router sees both authorities
        assert status == 400, body
    else:  # httptools keeps only the path: the router never sees the other authority
        assert status == 200, body
        received = json.loads(body)
        assert (received["target"], _values(received, "host")) == ("/page", ["app.test"])


def test_an_absolute_form_target_naming_the_host_is_forwarded_in_origin_form(
    router: AppServer,
) -> None:
    status, body = exchange(router.port, _host_request("http://app.test/page?q=1", "app.test"))
    assert status == 200, body
    received = json.loads(body)
    assert (received["target"], received["query"]) == ("/page", "q=1")
    assert _values(received, "host") == ["app.test"]


WSGI_SERVERS = {
    "gunicorn": [sys.executable, "-m", "gunicorn", "-w", "1", "-b", "127.0.0.1:{port}",
                 "--log-level", "warning", "tests.support.wsgi_apps:make_app()"],
    "waitress": [sys.executable, "-m", "waitress", "--host=127.0.0.1", "--port={port}",
                 "--call", "tests.support.wsgi_apps:make_app"],
    "flask-dev": [sys.executable, "-m", "tests.support.wsgi_apps"],
}  # fmt: skip


@pytest.fixture(scope="module", params=list(WSGI_SERVERS))
def wsgi_router(request: pytest.FixtureRequest, headers_canary: AppServer) -> Iterator[AppServer]:
    options = {"store": "memory://", "canary_url": headers_canary.url,
               "default_rules": EVERY_GET_TO_CANARY}  # fmt: skip
    server = AppServer(WSGI_SERVERS[request.param],
                       env={"CANARY_TEST_OPTIONS": json.dumps(options)})  # fmt: skip
    server.env["PORT"] = str(server.port)
    server.start()
    yield server
    server.cleanup()


@pytest.mark.parametrize(
    "request_line_and_hosts",
    [("/page", "app.test", "other.test"), ("/page", "other.test", "app.test"),
     ("http://other.test/page", "app.test")],
    ids=["two Hosts", "two Hosts, reversed", "absolute-form naming another host"],
)  # fmt: skip
def test_wsgi_never_routes_by_one_host_and_forwards_another(
    wsgi_router: AppServer, request_line_and_hosts: tuple[str, ...]
) -> None:
    target, *hosts = request_line_and_hosts
    status, body = exchange(wsgi_router.port, _host_request(target, *hosts))
    # 400 from the server (gunicorn refuses two Hosts) or from CanaryWSGI (waitress and
    # werkzeug join them with a comma). werkzeug replaces Host with an absolute-form target's
    # authority: the router then has one authority, and the canary sees that same one.
    if status != 400:
        assert (status, target) == (200, "http://other.test/page"), body
        received = json.loads(body)
        assert received["target"] == "/page"
        assert _values(received, "host") == ["other.test"]
        assert _values(received, "x-forwarded-host") == ["other.test"]


# -- finding 5: one request with 100,000 repeated headers ---------------------------------
HTTPTOOLS = ("--http", "httptools")  # no limit on the head: the whole request reaches the app


@pytest.fixture
def bare_stable() -> Iterator[AppServer]:
    command = uvicorn_command("tests.support.security_apps:make_bare_app", *HTTPTOOLS, factory=True)
    server = AppServer(command).start()
    yield server
    server.cleanup()


@pytest.fixture
def header_rule_router(headers_canary: AppServer) -> Iterator[AppServer]:
    """Rules, an override and trusted proxies that all read headers, as routers do."""
    server = start_router(
        "memory://",
        canary_url=headers_canary.url,
        default_rules=[{"id": "h", "when": {"header": "X-Canary", "one_of": ["yes"]}}],
        force_header="X-Canary-Force",
        trusted_proxies=[TRUSTED_PROXY],
        command=uvicorn_command("tests.support.apps:make_router_app", *HTTPTOOLS, factory=True),
    )
    yield server
    server.cleanup()


def test_100k_repeated_headers_do_not_hold_the_event_loop(
    bare_stable: AppServer, header_rule_router: AppServer
) -> None:
    """Under httptools, one request with 100,000 ``X-A`` lines. The bound is relative to
    uvicorn itself serving the same request to the bare stable app, in the same run: linear
    work is a small multiple of it (about 2x here), the quadratic join was ~300x."""
    big = (
        b"GET /page HTTP/1.1\r\nHost: app.test\r\n" + b"X-A: 12345678\r\n" * 100_000
        + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    small = b"GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    bare, router = bare_stable, header_rule_router

    def bare_run() -> float:
        started = time.perf_counter()
        assert exchange(bare.port, big)[0] == 200
        return time.perf_counter() - started

    sent = threading.Event()
    big_reply: dict[str, float] = {}

    def send_big() -> None:
        with socket.create_connection(("127.0.0.1", router.port)) as sock:
            sock.settimeout(60)
            sock.sendall(big)
            sent.set()
            reply = sock.recv(65536)  # the status line comes first
            big_reply["at"] = time.perf_counter()
            big_reply["ok"] = float(reply.startswith(b"HTTP/1.1 200"))

    before = bare_run()
    started = time.perf_counter()
    sender = threading.Thread(target=send_big)
    sender.start()
    assert sent.wait(30)
    status, _ = exchange(router.port, small)  # stable, while the big one is in the router
    small_latency = time.perf_counter() - started
    sender.join(60)
    assert status == 200
    assert big_reply["ok"]
    # The slower of a bare run before and after: a busy machine slows both sides.
    baseline = max(before, bare_run())
    bound = 10 * baseline + 0.5
    assert small_latency < bound, (small_latency, baseline)
    assert big_reply["at"] - started < bound, (big_reply["at"] - started, baseline)
