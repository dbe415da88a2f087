"""Fixtures shared by the security tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.scripted import Upstream

Handler = Callable[[socket.socket, Upstream], None]


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    """Make scripted upstreams (tests/support/scripted.py) whose handlers may wait on their
    ``state["release"]`` event; at the end each is released and closed."""
    made: list[Upstream] = []

    def make(handler: Handler, **options: Any) -> Upstream:
        server = Upstream(handler, **options)
        server.state["release"] = threading.Event()
        made.append(server)
        return server

    yield make
    for server in made:
        server.state["release"].set()
        server.close()
