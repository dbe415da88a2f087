"""A client leaving in the very loop step its upstream connection is made (red team, Python
3.11): ``asyncio.wait_for`` around the connect dropped that cancel, so the request went out
anyway and held the upstream connection until the answer. The connect is gated here so the
two land together, deterministically."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from canary_mw.forward.asgi_http import _unless_client_left
from canary_mw.forward.pool import HTTP11Transport
from canary_mw.forward.wire import NO_BODY, Outgoing
from canary_mw.upstreams import parse_upstreams
from tests.support.scripted import Upstream, read_head

TIMEOUTS: dict[str, float | None] = {"connect": 5, "read": 10, "write": 5, "pool": 5}


def slow(conn: socket.socket, server: Upstream) -> None:
    if read_head(conn, bytearray()):
        server.state["got"] = time.monotonic()
        time.sleep(3)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_a_departure_as_the_connection_is_made_is_not_lost() -> None:
    upstream_server = Upstream(slow)
    upstream = parse_upstreams(None, {"canary": upstream_server.url})["canary"]

    async def scenario() -> tuple[Any, int]:
        transport = HTTP11Transport()
        loop = asyncio.get_running_loop()
        both = asyncio.Event()
        connect = loop.create_connection

        async def gated(*args: Any, **kwargs: Any) -> Any:
            made = await connect(*args, **kwargs)
            await both.wait()  # the connection is up; done in the step the client leaves in
            return made

        loop.create_connection = gated  # type: ignore[method-assign]

        async def receive() -> dict[str, str]:
            await both.wait()
            return {"type": "http.disconnect"}

        request = Outgoing("GET", upstream, b"/x", [(b"host", b"h")], NO_BODY, b"", TIMEOUTS)
        loop.call_later(0.1, both.set)  # after WATCH_DELAY: the watch waits on receive
        try:
            got = await _unless_client_left(transport.forward(request), receive, None)
            task = asyncio.current_task()
            return got, task.cancelling() if task is not None else 0
        finally:
            await transport.aclose()

    try:
        got, cancelling = asyncio.run(scenario())
    finally:
        upstream_server.close()
    assert got is None  # the client left: no answer is taken for it
    assert cancelling == 0  # our own cancel undone, nothing left pending on the task
    assert "got" not in upstream_server.state  # the request never went out
