"""Health per backend URL with real processes: two hosts with their own canary backends
(``upstream set canary URL --host ...``) behind one router (ASGI under uvicorn, WSGI under
gunicorn), one Redis, the real CLI. Killing one backend sends only its host's traffic to
stable, with no error for any client; the other host stays on its canary; restarting it
restores it; ``status`` shows each URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from canary_mw.stores import store_from_url
from tests.support.routers import start_router
from tests.support.servers import AppServer, RedisServer, free_port, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

HEALTH = {"path": "/health", "interval": 0.2, "timeout": 0.5, "unhealthy_after": 2,
          "healthy_after": 2, "passive_after": 3}  # fmt: skip
GUNICORN = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-b",
            "127.0.0.1:{port}", "--log-level", "warning", "tests.support.wsgi_apps:make_app()"]  # fmt: skip


def backend(name: str, port: int | None = None) -> AppServer:
    command = uvicorn_command("tests.support.health_apps:backend_app")
    return AppServer(command, env={"BACKEND_NAME": name}, port=port).start()


def kill(server: AppServer) -> None:
    """SIGKILL: no graceful close of anything, as when a canary pod dies."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    server.process = None


def cli(store: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "canary_mw", "--store", store, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def start(kind: str, store: str, **options: object) -> AppServer:
    if kind == "asgi":
        return start_router(store, **options)
    env = {"CANARY_TEST_OPTIONS": json.dumps({"store": store, **options})}
    return AppServer(GUNICORN, env=env).start()


def served(client: httpx.Client, router: AppServer, host: str) -> str:
    """Who served a GET for ``host``: a backend's name, or stable's decision label. Any
    error status fails the test: no client of an idempotent request may see one."""
    response = client.get(f"{router.url}/page", headers={"Host": host})
    assert response.status_code == 200, (host, response.status_code, response.text)
    if response.headers["x-canary-version"] == "stable":
        return "stable:" + response.headers["x-decision"].split(":")[0]
    return response.headers["x-backend"]


@pytest.fixture
def backends() -> Iterator[tuple[AppServer, AppServer]]:
    a, b = backend("a"), backend("b")
    yield a, b
    a.cleanup()
    b.cleanup()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_dead_backend_sends_only_its_own_hosts_traffic_to_stable(
    kind: str, redis_srv: RedisServer, backends: tuple[AppServer, AppServer]
) -> None:
    a, b = backends
    url = f"{redis_srv.url}?prefix=backends{free_port()}:"
    store = store_from_url(url)
    cli(url, "upstream", "set", "canary", a.url, "--host", "a.example")
    cli(url, "upstream", "set", "canary", b.url, "--host", "b.example")
    store.set_mode("all")  # every request goes to the canary of its host
    dead_default = f"http://127.0.0.1:{free_port()}"  # the code's URL, for every other host
    router = start(kind, url, canary_url=dead_default, fallback=True, health=HEALTH)
    restarted: list[AppServer] = []
    try:
        with httpx.Client(timeout=10) as client:
            # The code's dead URL is ejected on its own; the hosts with live backends are not.
            wait_until(lambda: served(client, router, "other.example") == "stable:ejected",
                       timeout=5, what="the dead default URL ejected")  # fmt: skip
            assert served(client, router, "a.example") == "a"
            assert served(client, router, "b.example") == "b"

            kill(a)
            seen_a, deadline = [], time.monotonic() + 10
            while time.monotonic() < deadline:  # clients keep going; nobody sees an error
                seen_a.append(served(client, router, "a.example"))
                assert served(client, router, "b.example") == "b"
                if seen_a[-3:] == ["stable:ejected"] * 3:
                    break
            assert seen_a[-3:] == ["stable:ejected"] * 3, seen_a
            assert set(seen_a) <= {"a", "stable:fallback", "stable:ejected"}, seen_a
            wait_until(lambda: '"healthy":false' in store.health().get(a.url, ""),
                       timeout=2, what="a's ejection in the store")  # fmt: skip
            assert '"healthy":false' not in store.health().get(b.url, "")
            # Once ejected, a POST (never retried or sent to stable on a failure) is no
            # longer a 502: it goes to stable before anything is sent.
            posted = client.post(f"{router.url}/page", headers={"Host": "a.example"}, content=b"x")
            assert (posted.status_code, posted.headers["x-canary-version"]) == (200, "stable")

            status = cli(url, "status")
            assert f"{a.url}  EJECTED  (canary@a.example)" in status, status
            assert f"{b.url}  healthy  (canary@b.example)" in status, status
            assert f"{dead_default}  EJECTED  (not in the store's upstreams)" in status, status
            by_url = json.loads(cli(url, "status", "--json"))["health"]
            assert (by_url[a.url]["state"], by_url[b.url]["state"]) == ("ejected", "healthy")

            restarted.append(backend("a", port=a.port))  # the same URL comes back
            wait_until(lambda: served(client, router, "a.example") == "a",
                       timeout=5, what="a restored")  # fmt: skip
            assert served(client, router, "b.example") == "b"
            wait_until(lambda: '"healthy":true' in store.health().get(a.url, ""),
                       timeout=2, what="a's restoration in the store")  # fmt: skip
            assert f"{a.url}  healthy  (canary@a.example)" in cli(url, "status")
    finally:
        store.close()
        router.cleanup()
        for server in restarted:
            server.cleanup()


def test_a_router_without_checks_follows_the_verdict_shared_through_redis(
    redis_srv: RedisServer, backends: tuple[AppServer, AppServer]
) -> None:
    """The checking router's verdict reaches another instance through the store alone."""
    a, b = backends
    url = f"{redis_srv.url}?prefix=shared{free_port()}:"
    store = store_from_url(url)
    store.set_upstream("canary", a.url, host="a.example")
    store.set_upstream("canary", b.url, host="b.example")
    store.set_mode("all")
    checking = start_router(url, canary_url=b.url, fallback=True, health=HEALTH)
    following = start_router(url, canary_url=b.url, fallback=True)  # no health= at all
    restarted: list[AppServer] = []
    try:
        with httpx.Client(timeout=10) as client:
            wait_until(lambda: served(client, following, "a.example") == "a",
                       timeout=5, what="a served through the following router")  # fmt: skip
            kill(a)
            wait_until(lambda: served(client, following, "a.example") == "stable:ejected",
                       timeout=5, what="the checking router's ejection followed")  # fmt: skip
            assert served(client, following, "b.example") == "b"
            restarted.append(backend("a", port=a.port))
            wait_until(lambda: served(client, following, "a.example") == "a",
                       timeout=5, what="the restoration followed")  # fmt: skip
    finally:
        store.close()
        for server in (checking, following, *restarted):
            server.cleanup()
