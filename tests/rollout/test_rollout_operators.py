"""Operators and rollouts, with real processes and compressed time (steps of two seconds):
pause / resume / abort / promote from the real command line (``python -m canary_mw``, its own
process) and from the admin API served by ``canary-mw admin`` (uvicorn), against two uvicorn
routers driving the rollout from a private Redis; the confirm gate holding a step until the
test's own HTTP server says yes; and CanaryWSGI under gunicorn walking a healthy canary to
promotion."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from canary_mw import RolloutPlan, Thresholds, store_from_url
from canary_mw.rollout.render import status_lines
from tests.support.rollout_load import Load
from tests.support.servers import AppServer, RedisServer, uvicorn_command, wait_until

pytestmark = pytest.mark.slow

TOKEN = "rollout-operators-token-0123456789"
HOLD, INTERVAL = 2.0, 0.5
#: The plan the operators' tests start (the CLI's flags, the API's body): seven steps, so that
#: each command lands on an active rollout even when a loaded machine takes seconds to start
#: the command's process. Latency is judged in test_rollout_processes.py; here a cold canary
#: connection must not decide anything.
STEPS = (10, 20, 30, 40, 50, 60, 100)
FLAGS = ["--upstream", "canary", "--by", "cookie:uid", "--steps", ",".join(map(str, STEPS)),
         "--hold", "2s", "--interval", "0.5s", "--min-requests", "60", "--latency-slack", "1s"]  # fmt: skip
BODY: dict[str, Any] = {
    "upstream": "canary", "by": "cookie:uid", "steps": list(STEPS), "hold": HOLD,
    "interval": INTERVAL, "min_requests": 60, "latency_slack": 1.0,
}  # fmt: skip


class Fleet:
    """A private Redis, a canary, two uvicorn routers driving rollouts, and a store."""

    def __init__(self, redis_server: RedisServer):
        self.url = redis_server.url
        self.canary = AppServer(uvicorn_command("tests.support.rollout_apps:canary_app")).start()
        self.routers: list[AppServer] = []
        self.store = store_from_url(self.url)

    def cleanup(self) -> None:
        self.store.close()
        for server in [*self.routers, self.canary]:
            server.cleanup()

    def record(self) -> Any:
        rollout = self.store.rollout_status()["rollout"]
        assert rollout is not None
        return rollout

    def until(self, what: str, predicate: Callable[[Any], bool], timeout: float,
              load: Load) -> Any:  # fmt: skip
        """Wait for the rollout record to satisfy ``predicate``; say where it stands if not."""
        try:
            return wait_until(lambda: predicate(self.record()), timeout=timeout, what=what)
        except AssertionError:
            lines = status_lines(self.store.rollout_status())
            raise AssertionError(f"never {what}: {' / '.join(lines)}; {load.served}") from None

    def stays(self, what: str, predicate: Callable[[Any], bool], seconds: float) -> None:
        """The record satisfies ``predicate`` at every look for ``seconds`` (fails at once
        when it does not)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not predicate(self.record()):
                lines = status_lines(self.store.rollout_status())
                raise AssertionError(f"not {what}: {' / '.join(lines)}")
            time.sleep(0.05)

    def everyone_gets_the_canary(self, load: Load) -> None:
        """Every router follows the promotion (within a second, announced), and from then on
        serves the canary to everyone: of the next 200 requests, only those the load's eight
        clients had in flight when it followed may have been decided before."""

        def followed(router: AppServer) -> bool:
            uid = f"probe-{time.monotonic_ns()}"  # a user nobody has placed yet
            response = httpx.get(router.url + "/", headers={"Cookie": f"uid={uid}"})
            return bool(response.headers.get("x-canary-version") == "canary")

        wait_until(lambda: all(followed(r) for r in self.routers), timeout=3,
                   what="every router follows the promotion")  # fmt: skip
        load.served.clear()
        wait_until(lambda: sum(load.served.values()) >= 200, timeout=20, what="200 requests")
        assert load.served.get("stable", 0) <= 8, load.served

    def rollout_moves(self, limit: int = 40) -> list[tuple[str, str]]:
        """(action, actor) of the rollout entries in the history, oldest first."""
        entries = reversed(self.store.history(limit))
        return [(e.action, e.actor) for e in entries if e.action.startswith("rollout ")]


@pytest.fixture
def fleet(fresh_redis: RedisServer) -> Iterator[Fleet]:
    setup = Fleet(fresh_redis)
    try:
        env = {"STORE_URL": setup.url, "CANARY_URL": setup.canary.url}
        command = uvicorn_command("tests.support.rollout_apps:router_app", factory=True)
        setup.routers = [AppServer(command, env=env).start() for _ in range(2)]
        yield setup
    finally:
        setup.cleanup()


def canary_mw(url: str, *args: str) -> str:
    """The real command line, in its own process, as operator ``ops``."""
    result = subprocess.run(
        [sys.executable, "-m", "canary_mw", "--store", url, "--actor", "ops", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def running_at(step: int) -> Callable[[Any], bool]:
    return lambda r: r.status == "running" and r.step == step


def test_pause_resume_abort_promote_from_the_command_line(fleet: Fleet) -> None:
    url, store = fleet.url, fleet.store
    before = store.get_config()
    with Load(fleet.routers) as load:
        out = canary_mw(url, "rollout", "start", *FLAGS)
        assert "running" in out, out
        assert "step 1/7 (10%)" in out, out
        out = canary_mw(url, "rollout", "pause")
        assert "paused" in out, out
        # Paused (at step 1, or later when the controller moved on while the command started)
        # for more than two holds under load: the routers keep folding telemetry (the step's
        # windows grow), and nobody moves the rollout on.
        at = fleet.record().step
        assert at < len(STEPS) - 1
        canary_before = store.rollout_status()["windows"]["canary"].requests
        fleet.stays("paused", lambda r: (r.status, r.step) == ("paused", at), 2 * HOLD + 0.5)
        wait_until(lambda: store.rollout_status()["windows"]["canary"].requests > canary_before,
                   timeout=5, what="telemetry folded while paused")  # fmt: skip
        out = canary_mw(url, "rollout", "resume")
        assert "running" in out, out
        fleet.until("the next step", running_at(at + 1), timeout=20, load=load)
        out = canary_mw(url, "rollout", "abort")
        assert "aborted" in out, out
        after = store.get_config()
        assert (after.mode, after.rules) == (before.mode, before.rules)
        assert fleet.record().status == "aborted"

        canary_mw(url, "rollout", "start", *FLAGS)
        out = canary_mw(url, "rollout", "promote")
        assert "promoted" in out, out
        assert store.get_config().mode == "all"
        fleet.everyone_gets_the_canary(load)
    status = json.loads(canary_mw(url, "rollout", "status", "--json"))
    assert status["rollout"]["status"] == "promoted"
    moves = fleet.rollout_moves()
    by_hand = [(action, actor) for action, actor in moves if actor == "ops"]
    assert by_hand == [("rollout start", "ops"), ("rollout pause", "ops"),
                       ("rollout resume", "ops"), ("rollout abort", "ops"),
                       ("rollout start", "ops"), ("rollout promote", "ops")]  # fmt: skip
    # The step after the resume was the controller's, inside a router.
    assert ("rollout step", "ops") not in moves
    assert any(action == "rollout step" and actor.startswith("rollout@") for action, actor in moves)


@pytest.fixture
def admin(fleet: Fleet) -> Iterator[httpx.Client]:
    command = [sys.executable, "-m", "canary_mw", "--store", fleet.url, "admin", "--port", "{port}"]
    server = AppServer(command, env={"CANARY_MW_ADMIN_TOKEN": TOKEN}).start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
            yield client
    finally:
        server.cleanup()


def test_pause_resume_abort_promote_from_the_admin_api(fleet: Fleet, admin: httpx.Client) -> None:
    store = fleet.store
    before = store.get_config()
    with Load(fleet.routers) as load:
        started = admin.post("/rollout", json=BODY)
        assert started.status_code == 200, started.text
        assert started.json()["rollout"]["status"] == "running"
        refused = httpx.post(admin.base_url.join("/rollout/pause"), timeout=10)  # no token
        assert refused.status_code == 401
        assert fleet.record().status == "running"
        paused = admin.post("/rollout/pause")
        assert paused.status_code == 200, paused.text
        assert (paused.json()["action"], paused.json()["rollout"]["status"]) == (
            "rollout pause", "paused")  # fmt: skip
        at = paused.json()["rollout"]["step"]
        assert at < len(STEPS) - 1
        fleet.stays("paused", lambda r: (r.status, r.step) == ("paused", at), 2 * HOLD + 0.5)
        assert admin.get("/rollout").json()["rollout"]["status"] == "paused"
        again = admin.post("/rollout/pause")  # already paused: refused, nothing written
        assert again.status_code == 422, again.text
        assert admin.post("/rollout/resume").json()["rollout"]["status"] == "running"
        fleet.until("the next step", running_at(at + 1), timeout=20, load=load)
        aborted = admin.post("/rollout/abort")
        assert aborted.json()["rollout"]["status"] == "aborted", aborted.text
        after = store.get_config()
        assert (after.mode, after.rules) == (before.mode, before.rules)

        assert admin.post("/rollout", json=BODY).status_code == 200
        promoted = admin.post("/rollout/promote")
        assert promoted.json()["rollout"]["status"] == "promoted", promoted.text
        assert store.get_config().mode == "all"
        fleet.everyone_gets_the_canary(load)
    # The API's token is named "api" (canary-mw admin --token): the history says so.
    by_hand = [action for action, actor in fleet.rollout_moves() if actor.startswith("api:api@")]
    assert by_hand == ["rollout start", "rollout pause", "rollout resume", "rollout abort",
                       "rollout start", "rollout promote"]  # fmt: skip


class Gate:
    """The test's own HTTP server: ``/confirm`` answers 503 until ``open()``, then 200;
    ``/notify`` records the events. Every POST is kept with the answer it got."""

    def __init__(self) -> None:
        self.answer = 503
        self.posts: list[tuple[str, dict[str, Any], int]] = []
        self.lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with gate.lock:
                    status = gate.answer if self.path == "/confirm" else 204
                    gate.posts.append((self.path, json.loads(body or b"{}"), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def asked(self, status: int) -> list[dict[str, Any]]:
        with self.lock:
            return [body for path, body, s in self.posts if path == "/confirm" and s == status]

    def events(self) -> list[str]:
        with self.lock:
            return [body["event"] for path, body, _ in self.posts if path == "/notify"]

    def open(self) -> None:
        with self.lock:
            self.answer = 200

    def __enter__(self) -> Gate:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_confirm_gate_holds_until_the_test_server_says_yes(
    fleet: Fleet, admin: httpx.Client
) -> None:
    with Gate() as gate, Load(fleet.routers) as load:
        body = {**BODY, "steps": [20, 50, 100], "confirm_url": gate.url + "/confirm",
                "notify_url": gate.url + "/notify"}  # fmt: skip
        assert admin.post("/rollout", json=body).status_code == 200
        fleet.until("waiting after step 1", lambda r: r.status == "waiting", timeout=20,
                    load=load)  # fmt: skip
        waiting_since = time.monotonic()
        # It asks once per interval: more than two holds' worth of refusals, and at every
        # look in between the rollout is still waiting on step 1.
        wanted = int(2 * HOLD / INTERVAL) + 1

        seen: set[tuple[str, int]] = set()

        def refused_enough() -> bool:
            record = fleet.record()
            seen.add((record.status, record.step))
            return len(gate.asked(503)) >= wanted

        wait_until(refused_enough, timeout=20, interval=0.05, what=f"{wanted} refusals")
        assert seen == {("waiting", 0)}, status_lines(fleet.store.rollout_status())
        assert time.monotonic() - waiting_since >= 2 * HOLD
        assert fleet.record().percent == 20
        gate.open()
        fleet.until("promoted", lambda r: r.status == "promoted", timeout=30, load=load)
    refusals = gate.asked(503)
    assert {(b["event"], b["next_percent"]) for b in refusals} == {("rollout confirm", 50)}
    # Yes to 50 %, then (after step 2 passed) yes to 100 %.
    assert [b["next_percent"] for b in gate.asked(200)] == [50, 100]
    assert fleet.store.get_config().mode == "all"
    # The controller's notifications: it waited at each gate, stepped, and promoted.
    assert gate.events() == ["rollout start", "rollout wait", "rollout step", "rollout wait",
                             "rollout step", "rollout promote"]  # fmt: skip


#: Stable is served in-process in microseconds, the canary a network hop away: latency is
#: not what is judged here (the slack covers the hop), errors and the walk are.
WSGI_PLAN = RolloutPlan(
    upstream="canary", by="cookie:uid", steps=(20, 50, 100), hold=HOLD, interval=INTERVAL,
    thresholds=Thresholds(min_requests=60, latency_slack=1.0),
)  # fmt: skip
GUNICORN = [sys.executable, "-m", "gunicorn", "-w", "2", "--preload", "-b", "127.0.0.1:{port}",
            "--log-level", "warning", "tests.support.wsgi_apps:make_app()"]  # fmt: skip


def test_canary_wsgi_under_gunicorn_walks_a_healthy_canary_to_promotion(
    fresh_redis: RedisServer,
) -> None:
    setup = Fleet(fresh_redis)
    try:
        options = {"store": setup.url, "canary_url": setup.canary.url, "rollouts": True}
        router = AppServer(GUNICORN, env={"CANARY_TEST_OPTIONS": json.dumps(options)}).start()
        setup.routers = [router]
        workers: set[str] = set()
        with httpx.Client(timeout=5) as client:
            # Both workers serve (and so start their rollout agent) before the rollout.
            def both_workers() -> bool:
                workers.add(client.get(router.url + "/").headers["x-worker-pid"])
                return len(workers) == 2

            wait_until(both_workers, timeout=20, what="both gunicorn workers")
        with Load([router]) as load:
            setup.store.start_rollout(WSGI_PLAN, actor="deploy")
            setup.until("promoted", lambda r: r.status == "promoted", timeout=40, load=load)
            served = dict(load.served)
        assert setup.store.get_config().mode == "all"
        assert served.get("canary", 0) > 0, served
        assert served.get("stable", 0) > 0, served
        moves = setup.rollout_moves()
        assert [action for action, _ in moves] == [
            "rollout start", "rollout step", "rollout step", "rollout promote"]  # fmt: skip
        # The controller ran inside the gunicorn workers (not the master, which serves none).
        drivers = {actor.split(":")[-2] for action, actor in moves if action != "rollout start"}
        assert drivers, moves
        assert drivers <= workers, (drivers, workers)
    finally:
        setup.cleanup()
