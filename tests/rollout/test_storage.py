"""The rollout's store scripts on memory and Redis alike: the lease (keep, take, expire,
tokens that only grow), the fenced change, telemetry windows merging, and garbage in the
store, which never crashes a router's agent."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from canary_mw.admin.cli import main
from canary_mw.errors import ConfigurationError
from canary_mw.metrics import Metrics
from canary_mw.rollout.controller import IDLE_TICK, RolloutAgent
from canary_mw.rollout.judge import Window
from canary_mw.rollout.plan import RolloutPlan, operator_transition
from canary_mw.rollout.runner import run_tick
from canary_mw.rollout.storage import (
    LeaseLostError,
    fold_windows,
    lease,
    read_windows,
    write_transition,
)
from canary_mw.stores import Store, store_from_url
from tests.support.servers import RedisServer, wait_until

_names = iter(range(1_000_000))


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest, prefix: str) -> Iterator[Store]:
    if request.param == "memory":
        url = f"memory://rollout-storage-{next(_names)}"
    else:  # the scripts' keys share the prefix's hash tag: one slot in Redis Cluster
        server = request.getfixturevalue({"redis": "redis_srv"}.get(request.param, "cluster"))
        url = str(server.url)
    opened = store_from_url(url, prefix=prefix)
    yield opened
    opened.close()


def test_the_lease_is_kept_by_its_holder_and_free_after_it_expires(store: Store) -> None:
    mine = store._run(lease(store.layout, "", "a", 0.2))
    assert mine.endswith(":a")
    assert store._run(lease(store.layout, "", "b", 0.2)) == mine  # held: b gets a's value
    assert store._run(lease(store.layout, mine, "a", 0.2)) == mine  # renewed
    theirs = wait_until(lambda: (v := store._run(lease(store.layout, "", "b", 5))) != mine and v,
                        timeout=5, what="the lease to expire and b to take it")  # fmt: skip
    assert theirs.endswith(":b")
    assert int(theirs.split(":")[0]) > int(mine.split(":")[0])  # a later tenure, a larger token
    assert store._run(lease(store.layout, mine, "a", 5)) == theirs  # a cannot renew b's


def test_a_fenced_write_needs_the_lease_it_names(store: Store) -> None:
    rollout = store.start_rollout(RolloutPlan(hold=60))
    transition = operator_transition(rollout, "pause", time.time())
    with pytest.raises(LeaseLostError):  # nobody holds the lease
        store._run(write_transition(store.layout, "x", transition, expected=rollout, fence="1:x"))
    held = store._run(lease(store.layout, "", "x", 5))
    with pytest.raises(LeaseLostError):  # someone does, with another value
        store._run(write_transition(store.layout, "x", transition, expected=rollout, fence="0:x"))
    store._run(write_transition(store.layout, "x", transition, expected=rollout, fence=held))
    assert store.rollout_status()["rollout"].status == "paused"


def test_windows_from_several_instances_add_up(store: Store) -> None:
    one = Window(10, 1, (5, 5, *(0,) * 13))
    two = Window(4, 0, (0, 4, *(0,) * 13))
    for window, index in ((one, 100), (two, 100), (two, 101)):
        store._run(_plain(fold_windows(store.layout, {"canary": window}, index)))
    totals = store._run(read_windows(store.layout, ["canary", "stable"], 100, 101, 15))
    assert totals["canary"] == Window(18, 1, (5, 13, *(0,) * 13))
    assert totals["stable"].requests == 0


def _plain(commands):  # type: ignore[no-untyped-def]
    yield commands


def test_garbage_in_the_store_never_crashes_the_agent(store: Store) -> None:
    store._run(_plain([(None, ("HSET", store.layout.config, "rollout", "{not json"))]))
    store._run(_plain([(None, ("HSET", f"{store.layout.prefix}window:canary:7", "requests", "x"))]))
    agent = RolloutAgent(store.layout, metrics=Metrics(registry=None))
    assert run_tick(store, agent.tick(), None) == IDLE_TICK  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="the stored rollout is invalid"):
        store.rollout_status()
    assert store._run(read_windows(store.layout, ["canary"], 7, 7, 15))["canary"].requests == 0


def test_status_reports_a_garbage_rollout_as_a_problem(redis_srv: RedisServer, prefix: str) -> None:
    url = f"{redis_srv.url}?prefix={prefix}"
    store = store_from_url(url)
    try:
        store._run(_plain([(None, ("HSET", store.layout.config, "rollout", "[]"))]))
        result = CliRunner().invoke(main, ["--store", url, "status"])
        assert result.exit_code == 0, result.output
        assert f"{prefix}config rollout: the stored rollout is invalid" in result.output
        assert f"fix: redis-cli HDEL {prefix}config rollout" in result.output
    finally:
        store.close()
