"""Operating a fleet: two router processes and the CLI against one real Redis; and a canary
that dies and comes back, with health checks ejecting and restoring it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from canary_mw.stores import store_from_url
from tests.support.routers import client_from, start_router
from tests.support.servers import AppServer, RedisServer, free_port, uvicorn_command, wait_until

pytestmark = pytest.mark.slow


def canary_mw(url: str, *args: str) -> str:
    """The real command line, in its own process."""
    result = subprocess.run(
        [sys.executable, "-m", "canary_mw", "--store", url, "--actor", "ops", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def fleet(
    redis_srv: RedisServer, canary_server: AppServer
) -> Iterator[tuple[str, list[AppServer]]]:
    url = f"{redis_srv.url}?prefix=fleet{free_port()}:"
    routers = [start_router(url, canary_url=canary_server.url) for _ in range(2)]
    yield url, routers
    for router in routers:
        router.cleanup()


def served_by(router: AppServer, source: str, **headers: str) -> str:
    with client_from(source) as client:
        return client.get(f"{router.url}/", headers=headers).headers["x-canary-version"]


def everywhere(
    routers: list[AppServer], source: str, expected: str, what: str, **headers: str
) -> None:
    """Both routers answer ``expected`` within 1 s of the change."""
    wait_until(lambda: all(served_by(r, source, **headers) == expected for r in routers),
               timeout=1.0, what=what)  # fmt: skip


def test_every_cli_write_reaches_both_routers_within_1s(fleet: tuple[str, list[AppServer]]) -> None:
    url, routers = fleet
    everywhere(routers, "127.0.0.81", "stable", "stable at first")
    canary_mw(url, "ip", "add", "127.0.0.81")
    everywhere(routers, "127.0.0.81", "canary", "ip add")
    canary_mw(url, "user", "add", "vip-7")
    everywhere(routers, "127.0.0.82", "canary", "user add", Cookie="canary_user=vip-7")
    canary_mw(url, "rule", "add", "--id", "qa", "--when", '{"header": "X-QA", "present": true}')
    everywhere(routers, "127.0.0.83", "canary", "rule add", **{"X-QA": "1"})
    canary_mw(url, "percent", "set", "100", "--by", "cookie:uid")
    everywhere(routers, "127.0.0.84", "canary", "percent", Cookie="uid=anyone")

    # The kill switch: every client, every router, each within 1 s of the write (counted
    # from when the command returned, not from its process start: that is import time).
    canary_mw(url, "mode", "off")
    for source, headers in (
        ("127.0.0.81", {}),
        ("127.0.0.82", {"Cookie": "canary_user=vip-7"}),
        ("127.0.0.83", {"X-QA": "1"}),
        ("127.0.0.84", {"Cookie": "uid=anyone"}),
    ):
        everywhere(routers, source, "stable", "mode off", **headers)  # fmt: skip

    canary_mw(url, "rollback")  # undo the kill switch
    everywhere(routers, "127.0.0.81", "canary", "rollback")
    canary_mw(url, "upstream", "set", "canary", "http://127.0.0.1:9")  # a dead URL...
    with client_from("127.0.0.81") as client:
        wait_until(lambda: client.get(f"{routers[0].url}/").status_code == 502, timeout=1,
                   what="upstream switch")  # fmt: skip
    canary_mw(url, "rollback")  # ...rolled back
    everywhere(routers, "127.0.0.81", "canary", "upstream rollback")
    history = canary_mw(url, "history", "--limit", "3")
    assert "rollback" in history.splitlines()[0]


def test_a_dead_canary_is_ejected_and_comes_back(redis_srv: RedisServer) -> None:
    port = free_port()
    canary = AppServer(uvicorn_command("tests.support.apps:canary_app"), port=port).start()
    url = f"{redis_srv.url}?prefix=health{free_port()}:"
    router = start_router(
        url, canary_url=canary.url, fallback=True,
        health={"path": "/", "interval": 0.2, "timeout": 0.5, "unhealthy_after": 2,
                "healthy_after": 2, "passive_after": 3},
    )  # fmt: skip
    store = store_from_url(url)
    store.set_mode("all")  # every request would go to the canary
    try:
        with client_from("127.0.0.3") as client:
            wait_until(lambda: client.get(f"{router.url}/").headers["x-canary-version"] == "canary",
                       timeout=2, what="canary serving")  # fmt: skip
            canary.stop()
            failures, served, deadline = 0, set(), time.monotonic() + 3
            while time.monotonic() < deadline:  # clients keep working throughout
                response = client.get(f"{router.url}/")
                failures += response.status_code != 200
                served.add(response.headers["x-decision"])
                if response.headers["x-decision"].startswith("ejected"):
                    break
            assert failures == 0
            assert any(label.startswith("ejected") for label in served), served
            # Shared with every instance (keyed by the backend URL):
            wait_until(lambda: '"healthy":false' in store.health().get(canary.url, ""),
                       timeout=1, what="the ejection in the store")  # fmt: skip

            canary.start()  # same port: the canary is back
            wait_until(lambda: client.get(f"{router.url}/").headers["x-canary-version"] == "canary",
                       timeout=3, what="the canary back in service")  # fmt: skip
            assert '"healthy":true' in store.health()[canary.url]
    finally:
        store.close()
        router.cleanup()
        canary.cleanup()
