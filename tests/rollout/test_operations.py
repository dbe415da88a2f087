"""Operating rollouts: the command line, no Redis call per request while one runs, and a
Redis restart in the middle of one."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from canary_mw import (
    CanaryRouter,
    CanaryWSGI,
    ConfigurationError,
    Metrics,
    RolloutPlan,
    StoreError,
)
from canary_mw.admin.cli import main
from canary_mw.rollout.runner import run_tick
from canary_mw.stores import store_from_url
from tests.rollout.test_controller import PLAN, Clock, Fleet, Upstreams
from tests.support.servers import RedisServer, wait_until

_names = iter(range(1_000_000))


@pytest.fixture
def cli() -> Any:
    url = f"memory://rollout-cli-{next(_names)}"
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, ["--store", url, "--actor", "alice", *args])

    return run


def test_the_command_line_drives_a_rollout(cli: Any) -> None:
    assert cli("rollout", "status").output.endswith("no rollout has been started\n")
    started = cli("rollout", "start", "--by", "cookie:uid", "--steps", "10,50", "--hold", "10m")
    assert started.exit_code == 0, started.output
    assert "running  step 1/2 (10%)  canary by cookie:uid" in started.output
    again = cli("rollout", "start")
    assert again.exit_code == 1
    assert "abort or finish it first" in again.output
    assert "paused" in cli("rollout", "pause").output
    assert "running" in cli("rollout", "resume").output
    assert "aborted" in cli("rollout", "abort").output
    data = json.loads(cli("rollout", "status", "--json").stdout)
    assert (data["rollout"]["status"], data["rollout"]["prior"]["rule"]) == ("aborted", None)
    history = cli("history", "--limit", "4").output
    for action in ("rollout abort", "rollout resume", "rollout pause", "rollout start"):
        assert action in history


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "50,5"], "steps must be rising"),
        (["--hold", "soon"], "hold must look like"),
        (["--by", "user"], "by must be"),
        (["--max-error-rate-increase", "lots"], "max-error-rate-increase"),
        (["--at", "tomorrow"], "--at must be"),
        (["--notify-url", "ftp://x"], "notify_url must be"),
    ],
    ids=["steps", "hold", "by", "rate", "at", "url"],
)
def test_invalid_options_say_what_to_fix(cli: Any, args: list[str], message: str) -> None:
    result = cli("rollout", "start", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "no rollout has been started" in cli("rollout", "status").output


def test_a_rollout_can_wait_for_its_start(cli: Any) -> None:
    result = cli("rollout", "start", "--at", "+10m")
    assert "scheduled" in result.output
    assert "starts in 9m" in result.output or "starts in 10m" in result.output


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"stable"})


@pytest.mark.anyio
async def test_no_redis_call_per_request_while_a_rollout_runs(fresh_redis: RedisServer) -> None:
    store = store_from_url(fresh_redis.url)
    plan = RolloutPlan(by="cookie:uid", steps=(10, 50), hold=60, interval=0.2)
    started = store.start_rollout(plan)
    router = CanaryRouter(_ok, store=fresh_redis.url, canary_url="http://127.0.0.1:9",
                          metrics=Metrics(registry=None))  # fmt: skip
    transport = httpx.ASGITransport(app=router)
    admin = fresh_redis.client()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for _ in range(20):  # warm: snapshot loaded, agent started
                await client.get("/")
            while time.time() < started.step_started + 2 * plan.interval:  # noqa: ASYNC110
                await anyio.sleep(0.05)  # the step's first window is not judged: get past it
            admin.config_resetstat()
            for _ in range(2000):
                assert (await client.get("/")).status_code == 200
            stats = admin.info("commandstats")
        calls = sum(int(value["calls"]) for value in stats.values())
        # Refreshes, the agent's look and fold per 0.2 s, pub/sub: a few dozen, never 2000.
        assert calls < 200, stats
        with anyio.fail_after(10):  # the agent folds on this loop: wait without blocking it
            while store.rollout_status()["windows"]["stable"].requests < 2000:  # noqa: ASYNC110
                await anyio.sleep(0.05)
    finally:
        await router.aclose()
        store.close()


def test_redis_restarted_mid_rollout_the_rollout_resumes(fresh_redis: RedisServer) -> None:
    store = store_from_url(fresh_redis.url)
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    try:
        store.start_rollout(PLAN, actor="alice")
        for _ in range(12):
            fleet.second()
        assert store.rollout_status()["rollout"].step == 1
        fresh_redis.kill()
        for agent in fleet.agents:
            with pytest.raises(StoreError):
                run_tick(store, agent.tick(), fleet.client)
        fresh_redis.start()
        fleet.until("promoted", seconds=60)
        steps = [e.detail["step"] for e in store.history(20) if e.action == "rollout step"]
        assert sorted(steps) == [2, 3]  # the second step survived the restart, once
    finally:
        store.close()


def _wsgi_ok(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"stable"]


def test_a_wsgi_router_folds_its_telemetry_from_a_thread(fresh_redis: RedisServer) -> None:
    store = store_from_url(fresh_redis.url)
    started = store.start_rollout(
        RolloutPlan(by="cookie:uid", steps=(10, 50), hold=60, interval=0.2)
    )
    # The step's first window is not judged (it mixes percentages): serve after it.
    wait_until(lambda: time.time() > started.step_started + 0.4, timeout=5, what="a window")
    router = CanaryWSGI(_wsgi_ok, store=fresh_redis.url, canary_url="http://127.0.0.1:9",
                        metrics=Metrics(registry=None))  # fmt: skip
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "app",
               "SERVER_PORT": "80", "REMOTE_ADDR": "203.0.113.7", "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO()}  # fmt: skip
    try:
        for _ in range(300):
            body = router(dict(environ), lambda status, headers, exc_info=None: None)
            assert b"".join(body) == b"stable"
            body.close()  # type: ignore[attr-defined]  # the server's part: the request is counted
        wait_until(lambda: store.rollout_status()["windows"]["stable"].requests >= 300,
                   timeout=10, what="the thread's fold")  # fmt: skip
    finally:
        router.close()
        store.close()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_rollout_run_drives_a_rollout_without_routers(
    fresh_redis: RedisServer, stop: signal.Signals
) -> None:
    store = store_from_url(fresh_redis.url)
    command = [sys.executable, "-m", "canary_mw", "--store", fresh_redis.url, "--actor", "ops",
               "rollout", "run", "--holder", "standalone"]  # fmt: skip
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store.start_rollout(RolloutPlan(steps=(10, 50), hold=60), at=time.time() + 0.5)
        assert store.rollout_status()["rollout"].status == "scheduled"
        wait_until(lambda: store.rollout_status()["rollout"].status == "running", timeout=15,
                   what="the standalone controller starting the first step")  # fmt: skip
        assert store.history(1)[0].actor == "ops"
    finally:
        runner.send_signal(stop)
        output = runner.communicate(timeout=10)[0].decode()
        store.close()
    assert "driving rollouts in" in output
    assert runner.returncode == 0  # stopped after its tick, not killed by the signal


@pytest.mark.parametrize(("option", "drives"), [(True, True), ("telemetry", False)])
def test_routers_fold_and_drive_or_only_fold(option: Any, drives: bool) -> None:
    router = CanaryRouter(_ok, canary_url="http://c:1", rollouts=option,
                          metrics=Metrics(registry=None))  # fmt: skip
    assert router._checker.agent.drive is drives


def test_rollouts_must_be_true_false_or_telemetry() -> None:
    with pytest.raises(ConfigurationError, match="rollouts must be True, False or 'telemetry'"):
        CanaryRouter(_ok, canary_url="http://c:1", rollouts="yes")


def test_without_metrics_a_router_says_it_takes_no_part_in_rollouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="canary_mw"):
        router = CanaryWSGI(lambda environ, start: [], canary_url="http://c:1", metrics=False)
    assert router._checker is None  # no agent: nothing folded, nothing driven
    assert "CanaryWSGI(metrics=False) takes no part in rollouts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="canary_mw"):
        CanaryWSGI(lambda environ, start: [], canary_url="http://c:1", metrics=False,
                   rollouts=False)  # fmt: skip
    assert caplog.text == ""
    with pytest.raises(ConfigurationError, match="keep metrics on, or pass rollouts=False"):
        CanaryRouter(_ok, canary_url="http://c:1", metrics=False, rollouts="telemetry")
