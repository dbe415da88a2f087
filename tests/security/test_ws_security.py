"""canary_mw.forward.asgi_ws in-process: the upstream URL comes from the upstream's parts,
and a target that is not origin-form is refused before anything connects."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from canary_mw.forward.asgi_ws import proxy_websocket, upstream_ws_url
from canary_mw.upstreams import parse_upstreams


@pytest.fixture
def internal() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: a connection made to it waits in its queue."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock


def _upstream(url: str) -> Any:
    return parse_upstreams(url, None)["canary"]


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        ("http://canary:8000", b"/ws", b"", "ws://canary:8000/ws"),
        ("https://canary", b"/ws", b"a=1&b=%20", "wss://canary/ws?a=1&b=%20"),
        ("http://canary:8000/v2/", b"/ws", b"", "ws://canary:8000/v2/ws"),
        ("http://canary:8000", b"//evil.test/x", b"", "ws://canary:8000//evil.test/x"),
        ("http://canary:8000", b"/a#b", b"c#d", "ws://canary:8000/a%23b?c%23d"),
        ("http://canary:8000", b"/a b\\c", b"q=\xc3\xa9", "ws://canary:8000/a%20b%5Cc?q=%C3%A9"),
        ("http://canary:8000", b"/@127.0.0.1:1/x", b"", "ws://canary:8000/@127.0.0.1:1/x"),
        ("http://[::1]:8000", b"/ws", b"", "ws://[::1]:8000/ws"),
    ],
)
def test_upstream_url_is_the_upstream_with_the_clients_path(
    base: str, path: bytes, query: bytes, expected: str
) -> None:
    assert upstream_ws_url(_upstream(base), path, query) == expected


@pytest.mark.parametrize("path", [b"@127.0.0.1:1/x", b"http://127.0.0.1:1/x", b"*", b""])
def test_upstream_url_refuses_a_target_that_is_not_a_path(path: bytes) -> None:
    with pytest.raises(ValueError, match="origin-form"):
        upstream_ws_url(_upstream("http://canary:8000"), path, b"")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "scope_target",
    [
        {"raw_path": b"@127.0.0.1:{port}/internal", "path": "@127.0.0.1:{port}/internal"},
        {"raw_path": None, "path": "@127.0.0.1:{port}/internal"},
        {"raw_path": b"ws://127.0.0.1:{port}/internal", "path": "/internal"},
    ],
    ids=["raw_path", "path only", "absolute-form"],
)
async def test_a_target_that_is_not_a_path_is_refused_before_connecting(
    internal: socket.socket, scope_target: dict[str, Any]
) -> None:
    port = internal.getsockname()[1]
    scope: dict[str, Any] = {
        "type": "websocket", "headers": [(b"host", b"app.test")], "query_string": b"",
        "client": ("203.0.113.9", 5000), "scheme": "ws",
    }  # fmt: skip
    for key, value in scope_target.items():
        if value is not None:
            scope[key] = value.replace(b"{port}", str(port).encode()) if isinstance(
                value, bytes) else value.replace("{port}", str(port))  # fmt: skip
    upstream = _upstream("http://127.0.0.1:9")  # concatenated, "ws://127.0.0.1:9@127.0.0.1:…"
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await proxy_websocket(scope, receive, send, upstream, [], open_timeout=2, extra=[])
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert select.select([internal], [], [], 0)[0] == []
