"""Hostile input against a real CanaryRouter process, under both of uvicorn's HTTP parsers.

Every case sends raw bytes (no client library to tidy them up) and checks three things that
hold whatever the parser decides to accept: no 500, the router still serves afterwards, and
nothing the client controls moves the routing or smuggles a request to the canary. The canary
app logs every request it receives; each case marks its paths so the log can be searched.
Positive controls (a trusted proxy, a real VIP cookie) show the same checks can fail.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.routers import TRUSTED_PROXY, start_router
from tests.support.servers import AppServer, uvicorn_command

pytestmark = pytest.mark.slow

UNTRUSTED = "127.0.0.3"
LIMIT = 64 * 1024  # max_body_size for these routers
RULES = [
    {"id": "office", "when": {"ip": ["10.0.0.0/8", "2001:db8:1::/48"]}, "target": "canary"},
    {"id": "vip", "when": {"cookie": "uid", "one_of": ["vip1"]}, "target": "canary"},
]


@dataclass
class Reply:
    status: int  # 0: the server closed the connection without answering
    headers: dict[str, str]
    body: bytes

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-canary-version")

    def __str__(self) -> str:
        if not self.status:
            return "connection closed"
        # The tag names the target the router chose (its own 413/502 replies carry it too).
        return f"{self.status}, tagged {self.served_by}" if self.served_by else str(self.status)


def _read_reply(sock: socket.socket) -> Reply:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return Reply(0, {}, data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if "content-length" in headers:
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    elif headers.get("transfer-encoding") == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return Reply(status, headers, body)


def exchange(port: int, request: bytes, source: str = UNTRUSTED) -> Reply:
    """Send the bytes as they are and read the first reply (or the server hanging up)."""
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(request)
            return _read_reply(sock)
        except ConnectionResetError:
            return Reply(0, {}, b"")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def hostile_router(request: pytest.FixtureRequest, canary_server: AppServer) -> Iterator[AppServer]:
    command = uvicorn_command(
        "tests.support.apps:make_router_app", "--http", request.param, factory=True
    )
    server = start_router(
        "memory://",
        canary_url=canary_server.url,
        default_rules=RULES,
        trusted_proxies=[TRUSTED_PROXY],
        max_body_size=LIMIT,
        timeout={"connect": 2, "read": 5, "write": 5, "pool": 2},
        command=command,
    )
    yield server
    server.cleanup()


@dataclass
class Hostile:
    """One case: the router under test, the canary's request log, and a mark that tags
    this case's paths so its requests can be found in that log."""

    router: AppServer
    canary: AppServer
    note: Callable[[str], None]
    mark: str = field(default_factory=lambda: f"m{uuid.uuid4().hex[:12]}")

    def request(self, *headers: str, body: bytes = b"", method: str = "GET") -> bytes:
        lines = [f"{method} /raw/{self.mark} HTTP/1.1", "Host: app.test", *headers, "", ""]
        return "\r\n".join(lines).encode("latin-1") + body

    def send(self, raw: bytes, source: str = UNTRUSTED) -> Reply:
        reply = exchange(self.router.port, raw, source)
        self.note(str(reply))  # the outcome column of the README's table
        return reply

    def seen(self) -> list[dict[str, Any]]:
        """The requests the canary received for this case."""
        response = httpx.get(f"{self.canary.url}/seen", params={"mark": self.mark}, timeout=10)
        return list(response.json())

    def still_serving(self) -> None:
        reply = exchange(
            self.router.port, b"GET / HTTP/1.1\r\nHost: ok\r\nConnection: close\r\n\r\n"
        )
        assert (reply.status, reply.served_by) == (200, "stable"), reply


@pytest.fixture
def hostile(
    hostile_router: AppServer, canary_server: AppServer, observed: Callable[[str], None]
) -> Hostile:
    return Hostile(hostile_router, canary_server, observed)


# -- spoofed client addresses and overrides -------------------------------------------------
SPOOFS = {
    "X-Forwarded-For": ["X-Forwarded-For: 10.1.2.3"],
    "X-Real-IP": ["X-Real-IP: 10.1.2.3"],
    "Forwarded": ["Forwarded: for=10.1.2.3;proto=https"],
    "IPv4-mapped X-Forwarded-For": ["X-Forwarded-For: ::ffff:10.1.2.3"],
    "IPv6 Forwarded": ['Forwarded: for="[2001:db8:1::7]"'],
    "garbage X-Forwarded-For": ["X-Forwarded-For: <script>, 10.1.2.3, ::zz, 999.1.1.1"],
    "folded X-Forwarded-For": ["X-Forwarded-For: 192.0.2.1,", " 10.1.2.3"],
    "force header (overrides off)": ["X-Canary-Force: always"],
    "force cookie (overrides off)": ["Cookie: canary_force=always"],
}


@pytest.mark.fault(
    "hostile input", "spoofed {spoof} from an untrusted peer", "stable (or 400): routing unchanged"
)
@pytest.mark.parametrize("spoof", list(SPOOFS))
def test_spoofed_addresses_and_overrides_never_reach_the_canary(
    hostile: Hostile,
    spoof: str,
) -> None:
    reply = hostile.send(hostile.request(*SPOOFS[spoof]))
    assert reply.status in (200, 400), reply
    if reply.status == 200:
        assert reply.served_by == "stable"
    assert hostile.seen() == []
    hostile.still_serving()


TRUSTED = {
    "X-Forwarded-For (IPv4-mapped)": (["X-Forwarded-For: ::ffff:10.1.2.3"], "canary"),
    "Forwarded (IPv6)": (['Forwarded: for="[2001:db8:1::7]"'], "canary"),
    "X-Forwarded-For, rightmost hop untrusted": (
        ["X-Forwarded-For: 10.1.2.3, 192.0.2.9"],
        "stable",
    ),
}


@pytest.mark.fault(
    "hostile input", "control: {case} from the trusted proxy", "routed by the forwarded address"
)
@pytest.mark.parametrize("case", list(TRUSTED))
def test_the_same_headers_from_a_trusted_proxy_do_route(
    hostile: Hostile,
    case: str,
) -> None:
    headers, expected = TRUSTED[case]
    reply = hostile.send(hostile.request(*headers), source=TRUSTED_PROXY)
    assert (reply.status, reply.served_by) == (200, expected), reply
    assert len(hostile.seen()) == (1 if expected == "canary" else 0)


# -- request smuggling ----------------------------------------------------------------------
def _smuggled(mark: str) -> bytes:
    # A complete second request hidden where a parser that disagrees would see a body. It has
    # no VIP cookie: if the canary ever receives it, the router and the canary split the
    # stream differently.
    return f"0\r\n\r\nGET /raw/{mark}-smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n".encode()


FRAMINGS = {
    "Content-Length with Transfer-Encoding": ["Content-Length: {n}", "Transfer-Encoding: chunked"],
    "two different Content-Lengths": ["Content-Length: 0", "Content-Length: {n}"],
    "Content-Length list": ["Content-Length: {n}, 0"],
    "Transfer-Encoding: chunked, identity": [
        "Transfer-Encoding: chunked, identity",
        "Content-Length: {n}",
    ],
    "Transfer-Encoding: xchunked": ["Transfer-Encoding: xchunked", "Content-Length: {n}"],
    "Transfer-Encoding with a tab": ["Transfer-Encoding:\tchunked", "Content-Length: {n}"],
    "two Transfer-Encoding headers": ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
    "Transfer-Encoding: identity only": ["Transfer-Encoding: identity", "Content-Length: {n}"],
    "space before the colon": ["Transfer-Encoding : chunked", "Content-Length: {n}"],
}


@pytest.mark.fault(
    "hostile input", "smuggling: {framing}", "400, or one request forwarded with our own framing"
)
@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_no_smuggled_request_reaches_the_canary(
    hostile: Hostile,
    framing: str,
) -> None:
    body = _smuggled(hostile.mark)
    headers = [line.format(n=len(body)) for line in FRAMINGS[framing]]
    reply = hostile.send(hostile.request("Cookie: uid=vip1", *headers, body=body, method="POST"))
    assert reply.status in (0, 200, 400, 501), reply
    received = hostile.seen()
    assert all("-smuggled" not in str(entry["target"]) for entry in received), received
    for entry in received:  # what was forwarded carries one framing, chosen by the router
        names = [name for name, _ in entry["headers"]]
        assert not ("content-length" in names and "transfer-encoding" in names), names
        assert names.count("content-length") <= 1
        assert names.count("transfer-encoding") <= 1
    hostile.still_serving()


# -- header hygiene -------------------------------------------------------------------------
@pytest.mark.fault("hostile input", "header named in Connection", "dropped before the canary")
def test_headers_named_in_connection_are_dropped(
    hostile: Hostile,
) -> None:
    reply = hostile.send(
        hostile.request("Cookie: uid=vip1", "Connection: keep-alive, X-Secret", "X-Secret: 1"),
    )
    assert (reply.status, reply.served_by) == (200, "canary")
    (entry,) = hostile.seen()
    assert "x-secret" not in [name for name, _ in entry["headers"]]


CRLF = {
    "encoded CRLF in the path": ("/raw/{mark}%0d%0aX-Injected:%201", []),
    "bare CR in a header value": ("/raw/{mark}", ["X-A: 1\rX-Injected: 1"]),
    "bare LF in a header value": ("/raw/{mark}", ["X-A: 1\nX-Injected: 1"]),
    "NUL in a header value": ("/raw/{mark}", ["X-A: 1\x00X-Injected: 1"]),
}


@pytest.mark.fault(
    "hostile input",
    "CRLF: {case}",
    "400, or forwarded as the server parsed it; no CR/LF/NUL forwarded",
)
@pytest.mark.parametrize("case", list(CRLF))
def test_no_header_injection(
    hostile: Hostile,
    case: str,
) -> None:
    target, extra = CRLF[case]
    raw = "\r\n".join(
        [
            f"GET {target.format(mark=hostile.mark)} HTTP/1.1",
            "Host: app.test",
            "Cookie: uid=vip1",
            *extra,
        ]
    )
    reply = hostile.send(raw.encode("latin-1") + b"\r\n\r\n")
    assert reply.status in (200, 400), reply
    for entry in hostile.seen():
        pairs = entry["headers"]
        assert not any(set("\r\n\0") & set(value) for _, value in pairs), entry
        if case != "bare LF in a header value":  # h11 ends a line at a bare LF (RFC 9112 2.2):
            # the client sent two headers, and the canary sees the same two as the router did.
            assert "x-injected" not in [name for name, _ in pairs], entry
    if case == "encoded CRLF in the path":
        assert (reply.status, reply.served_by) == (200, "canary")
        assert [e["target"] for e in hostile.seen()] == [target.format(mark=hostile.mark) + "?"]
    hostile.still_serving()


@pytest.mark.fault(
    "hostile input", "absolute-form target naming another host", "forwarded to our canary only"
)
def test_absolute_form_goes_to_the_configured_canary(
    hostile: Hostile,
) -> None:
    raw = (
        f"GET http://evil.invalid:1/raw/{hostile.mark}?q=1 HTTP/1.1\r\nHost: evil.invalid:1\r\n"
        "Cookie: uid=vip1\r\n\r\n"
    )
    reply = hostile.send(raw.encode())
    assert (reply.status, reply.served_by) == (200, "canary"), reply
    assert [e["target"] for e in hostile.seen()] == [f"/raw/{hostile.mark}?q=1"]


HOSTS = {
    "missing Host": ["Cookie: uid=vip1"],
    "duplicate Host": ["Host: other.test", "Cookie: uid=vip1"],
    "empty Host": ["Host:", "Cookie: uid=vip1"],
}


@pytest.mark.fault("hostile input", "{case}", "400 or served; never a 500")
@pytest.mark.parametrize("case", list(HOSTS))
def test_odd_host_headers(
    hostile: Hostile,
    case: str,
) -> None:
    head = f"GET /raw/{hostile.mark} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in HOSTS[case])
    if case == "duplicate Host":
        head = head.replace("\r\n", "\r\nHost: app.test\r\n", 1)
    reply = hostile.send(head.encode() + b"\r\n")
    assert reply.status in (200, 400), reply
    assert len(hostile.seen()) == (1 if reply.status == 200 else 0)
    hostile.still_serving()


@pytest.mark.fault(
    "hostile input",
    "huge header ({size} KiB)",
    "the server's limit refuses it, or it is forwarded whole",
)
@pytest.mark.parametrize("size", [64, 1024])
def test_huge_headers(
    hostile: Hostile,
    size: int,
) -> None:
    big = "a" * (size * 1024)
    reply = hostile.send(hostile.request("Cookie: uid=vip1", "X-Big: " + big))
    # h11 refuses heads over 16 KiB (uvicorn's h11_max_incomplete_event_size); httptools has
    # no limit of its own, so the request is routed and forwarded like any other.
    assert reply.status in (0, 200, 400, 431), reply
    received = hostile.seen()
    if reply.status == 200:
        assert reply.served_by == "canary"
        (entry,) = received
        assert ["x-big", big] in entry["headers"]
    else:
        assert received == []
    hostile.still_serving()


COOKIES = {
    "duplicate cookie, VIP first": (["Cookie: uid=vip1; uid=nobody"], "canary"),
    "duplicate cookie, VIP second": (["Cookie: uid=nobody; uid=vip1"], "stable"),
    "two Cookie headers": (["Cookie: uid=nobody", "Cookie: uid=vip1"], "stable"),
    "quoted VIP cookie": (['Cookie: uid="vip1"'], "canary"),
    "8 KiB cookie beside the VIP one": ([f"Cookie: junk={'x' * 8192}; uid=vip1"], "canary"),
    "non-ASCII cookie beside the VIP one": (["Cookie: name=caf\xc3\xa9; uid=vip1"], "canary"),
    "garbage cookie header": (["Cookie: ;;=;uid;=vip1;;"], "stable"),
}


@pytest.mark.fault("hostile input", "cookies: {case}", "first value wins, as browsers send")
@pytest.mark.parametrize("case", list(COOKIES))
def test_odd_cookies(
    hostile: Hostile,
    case: str,
) -> None:
    headers, expected = COOKIES[case]
    reply = hostile.send(hostile.request(*headers))
    assert (reply.status, reply.served_by) == (200, expected), (case, reply)


# -- body limits ----------------------------------------------------------------------------
@pytest.mark.fault(
    "hostile input", "body over max_body_size ({framing})", "413, canary never gets it whole"
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_bodies_over_the_limit_get_413(
    hostile: Hostile,
    framing: str,
) -> None:
    body = b"x" * (LIMIT + 1)
    if framing == "content-length":
        headers, payload = [f"Content-Length: {len(body)}"], body
        expected_seen = 0  # refused on the declared length: nothing was sent upstream
    else:
        half = len(body) // 2
        payload = b"".join(
            f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:])
        )
        headers, payload = ["Transfer-Encoding: chunked"], payload + b"0\r\n\r\n"
        expected_seen = None  # the upstream saw a start, then an aborted connection
    reply = hostile.send(
        hostile.request(
            "Cookie: uid=vip1", "Connection: close", *headers, body=payload, method="POST"
        )
    )
    assert (reply.status, reply.served_by) == (413, "canary"), reply
    if expected_seen is not None:
        assert len(hostile.seen()) == expected_seen
    at_limit = hostile.send(
        hostile.request(
            "Cookie: uid=vip1", f"Content-Length: {LIMIT}", body=b"x" * LIMIT, method="POST"
        )
    )
    assert (at_limit.status, at_limit.served_by) == (200, "canary")  # the limit is inclusive
