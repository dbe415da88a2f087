"""The rollout state machine, driven tick by tick with an injected clock: healthy canaries
walk every step, failing and slow ones are rolled back to exactly what was in force, the
confirm gate holds, operators pause / resume / abort / promote, and only the lease holder
writes. Memory and Redis stores (the scripts run natively in memory, in Lua in Redis)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from canary_mw.errors import ConfigurationError
from canary_mw.metrics import Metrics
from canary_mw.rollout import operations
from canary_mw.rollout.controller import RolloutAgent
from canary_mw.rollout.judge import Thresholds
from canary_mw.rollout.plan import RolloutPlan, operator_transition
from canary_mw.rollout.render import status_lines
from canary_mw.rollout.runner import run_tick
from canary_mw.rollout.storage import LeaseLostError, write_transition
from canary_mw.stores import Store, store_from_url
from tests.support.servers import RedisServer

Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    """Starts at the real time (start_rollout stamps the record with it), then only moves
    when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Upstreams:
    """The notify / confirm endpoints: records what was posted, answers ``confirm``."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, dict[str, Any]]] = []
        self.confirm = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.posted.append((request.url.path, json.loads(request.content)))
        return httpx.Response(self.confirm if request.url.path == "/confirm" else 204)

    def events(self) -> list[str]:
        return [payload["event"] for path, payload in self.posted if path == "/notify"]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, prefix: str) -> Iterator[Store]:
    if request.param == "memory":
        url = f"memory://rollout-{id(request)}"
    else:
        server: RedisServer = request.getfixturevalue("redis_srv")
        url = str(server.url)
    opened = store_from_url(url, prefix=prefix)
    yield opened
    opened.close()


PLAN = RolloutPlan(
    upstream="canary", by="cookie:uid", steps=(10, 50, 100), hold=10, interval=1,
    thresholds=Thresholds(min_requests=100), notify_url="http://hooks/notify",
)  # fmt: skip


class Fleet:
    """Traffic and ticks: each second, ``rate`` requests split by the current percentage."""

    def __init__(self, store: Store, clock: Clock, hooks: Upstreams, agents: int = 1):
        self.store, self.clock, self.hooks = store, clock, hooks
        self.metrics = [Metrics(registry=None) for _ in range(agents)]
        self.agents = [
            RolloutAgent(store.layout, metrics=m, holder=f"agent{n}", clock=clock)
            for n, m in enumerate(self.metrics)
        ]
        self.client = httpx.Client(transport=httpx.MockTransport(hooks.handler))

    def serve(self, rate: int = 400, canary_errors: float = 0.0, slower: float = 1.0):
        rollout = self.store.rollout_status()["rollout"]
        share = rollout.percent / 100 if rollout is not None and rollout.active else 0
        canary = int(rate * share)
        for metrics in self.metrics:
            for n in range(canary):
                failed = n < canary * canary_errors
                latency = (0.02 if n % 2 else 0.04) * slower
                metrics.request("canary", "rule", 500 if failed else 200, latency)
            for n in range(rate - canary):
                metrics.request("stable", "default", 200, 0.02 if n % 2 else 0.04)

    def second(self, **traffic: Any) -> None:
        self.serve(**traffic)
        for agent in self.agents:
            run_tick(self.store, agent.tick(), self.client)
        self.clock.now += 1

    def until(self, status: str, seconds: int = 200, **traffic: Any) -> None:
        for _ in range(seconds):
            rollout = self.store.rollout_status()["rollout"]
            if rollout.status == status:
                return
            self.second(**traffic)
        raise AssertionError(f"still {rollout.status} at step {rollout.step} ({rollout.reason})")


def start(store: Store, clock: Clock, plan: RolloutPlan = PLAN) -> None:
    store.start_rollout(plan, actor="alice")


def routing(store: Store) -> tuple[str | None, str | None]:
    config = store.get_config()
    return config.mode, config.rules


def test_a_healthy_canary_walks_every_step_and_is_promoted(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    store.set_mode("rules")
    start(store, clock)
    seen = []
    for _ in range(200):
        rollout = store.rollout_status()["rollout"]
        if rollout.status != "running":
            break
        if not seen or seen[-1] != rollout.percent:
            seen.append(rollout.percent)
        fleet.second()
    assert rollout.status == "promoted", rollout.reason
    assert seen == [10, 50, 100]  # each step once, in order
    assert store.get_config().mode == "all"
    actions = [entry.action for entry in store.history(20)]
    assert actions[:4] == ["rollout promote", "rollout step", "rollout step", "rollout start"]
    assert hooks.events() == ["rollout step", "rollout step", "rollout promote"]
    promoted = next(e for e in store.history(5) if e.action == "rollout promote")
    assert promoted.detail["verdict"]["outcome"] == "pass"


def test_a_canary_answering_500_is_rolled_back_to_exactly_what_was_before(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    store.add_rule({"id": "vip", "when": {"cookie": "vip", "equals": "1"}, "target": "canary"})
    before = routing(store)
    start(store, clock)
    fleet.until("running")
    fleet.until("rolled_back", seconds=30, canary_errors=0.2)
    rollout = store.rollout_status()["rollout"]
    assert rollout.step == 0  # within the first step's hold: a failure acts at once
    assert routing(store) == before
    entry = store.history(1)[0]
    assert entry.action == "rollout rollback"
    errors = entry.detail["verdict"]["metrics"]["errors"]
    assert errors["result"] == "fail"
    assert errors["canary_rate"] >= 0.15
    notified = [p for path, p in hooks.posted if path == "/notify"][-1]
    assert notified["event"] == "rollout rollback"
    assert notified["verdict"]["metrics"]["errors"]["canary_rate"] == errors["canary_rate"]


def test_a_slow_canary_is_rolled_back_on_latency(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    start(store, clock)
    fleet.until("rolled_back", seconds=30, slower=5)
    verdict = store.history(1)[0].detail["verdict"]
    assert verdict["metrics"]["latency"]["result"] == "fail"
    assert verdict["metrics"]["errors"]["result"] == "pass"
    assert store.get_config().rules is None  # the rollout's rule is gone again


def test_the_confirm_gate_holds_the_next_step_until_it_answers_2xx(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    hooks.confirm = 403
    fleet = Fleet(store, clock, hooks)
    start(store, clock, RolloutPlan(**{**PLAN.to_json(), "thresholds": PLAN.thresholds,
                                        "confirm_url": "http://hooks/confirm"}))  # fmt: skip
    fleet.until("waiting")
    for _ in range(5):
        fleet.second()
    rollout = store.rollout_status()["rollout"]
    assert (rollout.status, rollout.percent) == ("waiting", 10)
    asked = [p for path, p in hooks.posted if path == "/confirm"]
    assert len(asked) >= 5
    assert asked[0]["next_percent"] == 50
    hooks.confirm = 200
    fleet.second()
    assert store.rollout_status()["rollout"].percent == 50


def test_operators_pause_resume_abort(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    start(store, clock)
    for _ in range(3):
        fleet.second()
    paused = store.rollout_command("pause", actor="bob")
    assert paused.status == "paused"
    for _ in range(20):
        fleet.second()
    assert store.rollout_status()["rollout"].percent == 10  # nothing moves while paused
    with pytest.raises(ConfigurationError, match="already paused"):
        store.rollout_command("pause")
    assert store.rollout_command("resume").status == "running"
    assert store.rollout_command("abort").status == "aborted"
    assert store.get_config().rules is None
    with pytest.raises(ConfigurationError, match="aborted"):
        store.rollout_command("resume")


def test_only_one_rollout_at_a_time(store: Store) -> None:
    start(store, Clock())
    with pytest.raises(ConfigurationError, match="abort or finish it first"):
        start(store, Clock())


def test_promote_by_hand(store: Store) -> None:
    start(store, Clock())
    assert store.rollout_command("promote").status == "promoted"
    assert store.get_config().mode == "all"


def test_exactly_one_agent_acts_and_another_takes_over(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks, agents=2)
    start(store, clock)
    fleet.until("running")
    for _ in range(12):
        fleet.second()
    leaders = [agent.holder for agent in fleet.agents if agent.leading]
    assert len(leaders) == 1
    leader = next(agent for agent in fleet.agents if agent.leading)
    other = next(agent for agent in fleet.agents if not agent.leading)
    assert [t.action for t in other.transitions] == []
    stale = leader.lease
    # The leader stops (killed or paused): the other takes the lease once it expires.
    fleet.agents = [other]
    deadline = time.monotonic() + 10
    while not other.leading:
        assert time.monotonic() < deadline, "the lease was never taken over"
        fleet.second()
        time.sleep(0.05)
    # The old leader wakes up with a transition it decided before: the fence refuses it.
    rollout = store.rollout_status()["rollout"]
    transition = operator_transition(rollout, "abort", clock.now)
    with pytest.raises(LeaseLostError):
        store._run(write_transition(store.layout, "old", transition, expected=rollout, fence=stale))
    assert store.rollout_status()["rollout"].status == "running"
    steps = [e.detail.get("step") for e in store.history(50) if e.action == "rollout step"]
    assert len(steps) == len(set(steps))  # no step applied twice


def test_the_kill_switch_pauses_the_rollout_and_stays_on(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    start(store, clock)
    fleet.second()
    store.set_mode("off")
    fleet.second()
    rollout = store.rollout_status()["rollout"]
    assert (rollout.status, rollout.reason) == ("paused", "the kill switch is on (mode off)")
    store.rollout_command("resume")  # resumed under the kill switch: paused again, still off
    fleet.second()
    assert store.rollout_status()["rollout"].status == "paused"
    assert store.get_config().mode == "off"
    store.set_mode("rules")
    store.rollout_command("resume")
    fleet.until("promoted")


def test_a_rollout_started_under_the_kill_switch_waits_for_it(store: Store) -> None:
    store.set_mode("off")
    fleet = Fleet(store, Clock(), Upstreams())
    start(store, fleet.clock)
    assert store.get_config().mode == "off"  # never lifted by the rollout
    fleet.second()
    assert store.rollout_status()["rollout"].status == "paused"
    store.rollout_command("abort")  # the rule goes, the kill switch stays
    assert store.get_config().mode == "off"
    assert "rollout" not in (store.get_config().rules or "")


def test_at_100_percent_stable_is_judged_by_what_it_served_before(store: Store) -> None:
    clock, hooks = Clock(), Upstreams()
    fleet = Fleet(store, clock, hooks)
    plan = RolloutPlan(**{**PLAN.to_json(), "steps": (50, 100), "thresholds": PLAN.thresholds})
    start(store, clock, plan)
    fleet.until("running")
    while store.rollout_status()["rollout"].percent < 100:
        fleet.second()
    for _ in range(4):
        fleet.second()
    view = store._run(operations.status(store.layout, now=clock.now))
    assert view["baseline"] == "rollout"
    assert view["windows"]["stable"].requests > 1000  # from the 50 % step
    assert "* since the rollout began" in "\n".join(status_lines(view, clock.now))
    fleet.until("promoted")
