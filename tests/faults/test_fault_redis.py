"""Redis faults under load, end to end: a real router process (uvicorn), a real canary, a
real redis-server that we refuse, kill, pause, restart through its LOADING phase, fill to
maxclients, cut the subscriber of, and fill with garbage.

What must hold in every case: no request fails (stable is served while the answer is
unknown), no request waits anywhere near redis-py's own timeouts, and routing is right again
after recovery, including changes made while the router could not hear about them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from canary_mw.stores import store_from_url
from tests.support.routers import start_router
from tests.support.servers import AppServer, RedisServer, rss_kib, wait_until

pytestmark = pytest.mark.slow

RULES = {"rules": [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "canary"}]}
#: Far above the 50 ms lookup budget (a busy 2-core machine schedules late), far below what
#: redis-py does on its own: 4.9 s for a refused connection, forever for a hung one.
CEILING = 1.0


@dataclass
class Load:
    """Two client threads sending VIP and non-VIP requests until stopped."""

    url: str
    results: list[tuple[float, float, int, str]] = field(default_factory=list)  # t, s, status, by
    stopping: threading.Event = field(default_factory=threading.Event)

    def _run(self, uid: str) -> None:
        with httpx.Client(base_url=self.url, timeout=30, cookies=None) as client:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    reply = client.get("/", headers={"cookie": f"uid={uid}"})
                    status, by = reply.status_code, reply.headers.get("x-canary-version", "")
                except httpx.HTTPError as exc:
                    status, by = 0, type(exc).__name__
                self.results.append((start, time.monotonic() - start, status, by))
                time.sleep(0.002)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._run, args=(uid,)) for uid in ("vip1", "u2")]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def run_through(self, seconds: float, *, at_least: int = 10, timeout: float = 30) -> None:
        """Let the load run for ``seconds`` (a fault's length, or the calm around it) and on
        until ``at_least`` more requests have finished: on a busy machine a fixed time may
        see almost no traffic, and then the test would prove nothing about the fault."""
        before, until = len(self.results), time.monotonic() + seconds
        wait_until(
            lambda: time.monotonic() >= until and len(self.results) - before >= at_least,
            timeout=seconds + timeout,
            what=f"{at_least} requests served through the fault",
        )

    def check(self, observed: Callable[[str], None]) -> None:
        failed = [r for r in self.results if r[2] != 200]
        latencies = sorted(r[1] for r in self.results)
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        observed(
            f"{len(latencies)} requests, {len(failed)} failed, p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms"
        )
        assert failed == [], failed[:5]
        assert latencies[-1] < CEILING, f"slowest request {latencies[-1]:.2f} s"


def logged_again(router: AppServer, text: str) -> Callable[[], bool]:
    """Whether the router has logged ``text`` once more than it had when this was called."""
    before = router.output().count(text)
    return lambda: router.output().count(text) > before


def routes(url: str, uid: str) -> str:
    reply = httpx.get(url + "/", headers={"cookie": f"uid={uid}"}, timeout=10)
    assert reply.status_code == 200
    return reply.headers["x-canary-version"]


@pytest.fixture
def setup(fresh_redis: RedisServer, canary_server: AppServer) -> Iterator[AppServer]:
    store = store_from_url(fresh_redis.url)
    store.set_rules(RULES)
    store.add_members("vip", ["vip1"])
    store.close()
    router = start_router(fresh_redis.url, canary_url=canary_server.url)
    wait_until(lambda: routes(router.url, "vip1") == "canary", timeout=5, what="routing")
    yield router
    router.cleanup()


def add_vip(redis: RedisServer, uid: str) -> None:
    store = store_from_url(redis.url)
    try:
        store.add_members("vip", [uid])
    finally:
        store.close()


def recovered(router: AppServer, redis: RedisServer, observed: Callable[[str], None]) -> None:
    """Routing is right again, including a change made just now."""
    start = time.monotonic()
    wait_until(lambda: routes(router.url, "vip1") == "canary", timeout=10, what="recovery")
    add_vip(redis, "late")
    wait_until(lambda: routes(router.url, "late") == "canary", timeout=2, what="a new change")
    observed(f"routing back {time.monotonic() - start:.1f} s after recovery")
    assert routes(router.url, "u2") == "stable"


@pytest.mark.fault("Redis", "refused (router starts with Redis down)", "stable at once, 0 failed")
def test_refused(
    fresh_redis: RedisServer, canary_server: AppServer, observed: Callable[[str], None]
) -> None:
    add_vip(fresh_redis, "vip1")
    store_from_url(fresh_redis.url).set_rules(RULES)
    fresh_redis.stop()
    router = start_router(fresh_redis.url, canary_url=canary_server.url)
    try:
        with Load(router.url) as load:
            load.run_through(1.5)  # with Redis down
        load.check(observed)
        assert {r[3] for r in load.results} == {"stable"}
        fresh_redis.start()
        recovered(router, fresh_redis, observed)
    finally:
        router.cleanup()


#: A fault, its repair, and how long the load runs in between.
OUTAGES: dict[
    str, tuple[Callable[[RedisServer], object], Callable[[RedisServer], object], float]
] = {
    "killed mid-load, then restarted": (RedisServer.kill, RedisServer.start, 1.5),
    "paused (SIGSTOP) for 2 s, then resumed": (RedisServer.pause, RedisServer.resume, 2.0),
}


@pytest.mark.fault("Redis", "{outage}", "0 failed; routing back")
@pytest.mark.parametrize("outage", list(OUTAGES))
def test_outage_under_load(
    setup: AppServer, fresh_redis: RedisServer, observed: Callable[[str], None], outage: str
) -> None:
    fault, repair, lasting = OUTAGES[outage]
    with Load(setup.url) as load:
        load.run_through(0.5)  # healthy load first
        fault(fresh_redis)
        load.run_through(lasting)  # the load runs on while Redis is gone
        repair(fresh_redis)
        load.run_through(0.5)
    load.check(observed)
    recovered(setup, fresh_redis, observed)


@pytest.mark.fault("Redis", "restarted through a 2-3 s LOADING phase", "0 failed; routing back")
def test_restart_through_loading(
    setup: AppServer, fresh_redis: RedisServer, observed: Callable[[str], None]
) -> None:
    client = fresh_redis.client()
    with client.pipeline(transaction=False) as pipe:
        for n in range(25_000):
            pipe.set(f"bulk:{n}", "x")
        pipe.execute()
    # Rewrite the AOF: its base becomes an RDB file, which is what key-load-delay slows down.
    client.bgrewriteaof()
    wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0
               and client.info("persistence")["aof_rewrite_scheduled"] == 0,
               timeout=20, what="AOF rewrite")  # fmt: skip
    client.close()
    fresh_redis.stop()
    # 100 us per key: ~2.5 s of LOADING, answering clients (-LOADING) every KiB loaded.
    fresh_redis.extra += [
        "--key-load-delay",
        "100",
        "--loading-process-events-interval-bytes",
        "1024",
    ]
    with Load(setup.url) as load:
        load.run_through(0.3)
        fresh_redis.process = None
        loading_seen = _start_without_waiting(fresh_redis)
        load.run_through(1.5)  # the router runs against LOADING for a while
    load.check(observed)
    assert loading_seen(), "Redis never reported LOADING: the fault was not injected"
    wait_until(fresh_redis.ping, timeout=30, what="redis loaded")
    recovered(setup, fresh_redis, observed)


def _start_without_waiting(redis: RedisServer) -> Callable[[], bool]:
    """Start redis-server and return whether it answered LOADING at least once."""
    import subprocess

    from tests.support.servers import redis_binary

    args = [redis_binary(), "--port", str(redis.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(redis.dir), "--daemonize", "no", "--loglevel", "warning", *redis.extra]  # fmt: skip
    redis.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not seen:
        try:  # a raw PING: redis-py would retry through LOADING and hide it
            with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                seen += [True] if sock.recv(100).startswith(b"-LOADING") else []
        except OSError:
            pass
        time.sleep(0.02)  # the poll's interval; the loop ends on the deadline above
    return lambda: bool(seen)


@pytest.mark.fault("Redis", "maxclients reached, connections dropped", "0 failed; routing back")
def test_max_clients(
    setup: AppServer, fresh_redis: RedisServer, observed: Callable[[str], None]
) -> None:
    admin = fresh_redis.client()
    with Load(setup.url) as load:
        load.run_through(0.3)
        admin.config_set("maxclients", 1)  # only this admin connection fits
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub", skipme=True)
        load.run_through(1.5)
        refused = _refused_by_maxclients(fresh_redis)
        admin.config_set("maxclients", 10_000)
        load.run_through(0.5)
    admin.close()
    assert refused, "a new connection was not refused: the fault was not injected"
    load.check(observed)
    recovered(setup, fresh_redis, observed)


def _refused_by_maxclients(redis: RedisServer) -> bool:
    client = redis.client()
    try:
        client.ping()
    except Exception as exc:
        return "max number of clients" in str(exc)
    finally:
        client.close()
    return False


@pytest.mark.fault(
    "Redis", "pub/sub connection dropped while changes happen", "changes still applied within 1 s"
)
def test_subscriber_dropped(
    setup: AppServer, fresh_redis: RedisServer, observed: Callable[[str], None]
) -> None:
    admin = fresh_redis.client()
    assert routes(setup.url, "dropped1") == "stable"  # cached as "not a member"
    with Load(setup.url) as load:
        for n in range(3):
            wait_until(lambda: admin.pubsub_numsub("canary:changes")[0][1] > 0, timeout=5,
                       what="the router's subscription")  # fmt: skip
            killed = admin.client_kill_filter(_type="pubsub")
            assert killed >= 1
            add_vip(fresh_redis, f"dropped{n}")  # announced while nobody listens
            start = time.monotonic()
            wait_until(lambda n=n: routes(setup.url, f"dropped{n}") == "canary", timeout=3,
                       what="a change made while the subscriber was down")  # fmt: skip
            took = time.monotonic() - start
            observed(f"change {n} applied after {took * 1000:.0f} ms")
            assert took < 1.0 + 0.5  # the 0.5 s version poll, with scheduling slack
    admin.close()
    load.check(observed)


GARBAGE = {
    "mode": "sideways",
    "rules": "{not json",
    "upstreams": '{"canary": 42}',
}


@pytest.mark.fault(
    "Redis", "garbage in every key", "last good rules stay in force; logged; 0 failed"
)
def test_garbage_everywhere(
    setup: AppServer, fresh_redis: RedisServer, observed: Callable[[str], None]
) -> None:
    client = fresh_redis.client()

    def bump() -> None:
        client.hincrby("canary:config", "version", 1)
        client.publish("canary:changes", "garbage")

    with Load(setup.url) as load:
        load.run_through(0.3)
        for name, value in GARBAGE.items():  # one bad field at a time, then all at once
            good = client.hget("canary:config", name)
            read_bad = logged_again(setup, f"invalid {name} in the store")
            client.hset("canary:config", name, value)
            bump()
            wait_until(read_bad, timeout=5, what=f"the router reading the bad {name}")
            assert routes(setup.url, "vip1") == "canary", f"bad {name} replaced the good rules"
            read_good = logged_again(setup, f"{name} in the store is valid again")
            if good is not None:
                client.hset("canary:config", name, good)
            else:
                client.hdel("canary:config", name)
            bump()
            wait_until(read_good, timeout=5, what=f"the router reading the good {name} again")
        read_all = [logged_again(setup, f"invalid {name} in the store") for name in GARBAGE]
        client.hset("canary:config", mapping=GARBAGE)
        client.hset("canary:health", "canary", "\xff not json")
        client.hset("canary:traffic", "canary", "many")
        bump()
        client.publish("canary:changes", "\x00garbage")
        wait_until(lambda: all(read() for read in read_all), timeout=5, what="all the garbage")
        assert routes(setup.url, "vip1") == "canary"
        read_version = logged_again(setup, "invalid version in the store")
        client.hset("canary:config", "version", "not a number")
        client.delete("canary:set:vip")
        client.set("canary:set:vip", "a string where a set belongs")  # WRONGTYPE on lookups
        client.publish("canary:changes", "garbage")
        wait_until(read_version, timeout=5, what="the router reading the bad version")
        load.run_through(0.7)  # lookups against the wrong type, under load
    load.check(observed)
    assert "Invalid" in setup.output() or "invalid" in setup.output(), setup.output()[-2000:]
    # Repair the way an operator would, and routing follows.
    client.delete("canary:config", "canary:set:vip", "canary:health", "canary:traffic")
    client.close()
    store = store_from_url(fresh_redis.url)
    store.set_rules(RULES)
    store.add_members("vip", ["vip1"])
    store.close()
    recovered(setup, fresh_redis, observed)


def _pipelined(port: int, ips: range, batch: int = 500) -> None:
    """One request per address, pipelined over one connection from the trusted proxy."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        numbers = list(ips)
        for start in range(0, len(numbers), batch):
            part = numbers[start : start + batch]
            sock.sendall(b"".join(
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + _address(n) + b"\r\n\r\n"
                for n in part
            ))  # fmt: skip
            data = b""
            while data.count(b"HTTP/1.1 200") < len(part):
                chunk = sock.recv(1 << 20)
                assert chunk, "router closed the connection"
                data += chunk


def _address(n: int) -> bytes:
    return f"198.{18 + (n >> 16) % 2}.{(n >> 8) & 255}.{n & 255}".encode()


#: The router's cache size here; the addresses sent are multiples of it, as in production
#: where distinct clients outnumber any cache. Smaller than the default so that the bound is
#: shown with 30,000 requests instead of 100,000: the LRU churns the same 7 times over.
CACHE_SIZE = 3_000
FILL = 3 * CACHE_SIZE  # past the cache and the fixed 4,096-entry caches (parse_ip, the memo)
MORE = 7 * CACHE_SIZE
#: What each new address may add to the RSS: 4 MiB over 70,000 addresses, the budget this
#: test had with a 10,000-entry cache (60 bytes, far below one cache entry).
BYTES_PER_ADDRESS = 4 * 1024 * 1024 / 70_000


@pytest.mark.fault(
    "Redis", "30,000 distinct client IPs (10x cache_size) against a Redis set rule",
    "memory bounded by cache_size",
)  # fmt: skip
def test_distinct_client_ips_memory_is_bounded(
    fresh_redis: RedisServer, canary_server: AppServer, observed: Callable[[str], None]
) -> None:
    store = store_from_url(fresh_redis.url)
    store.set_rules(
        {"rules": [{"id": "office", "when": {"ip_in_set": "office"}, "target": "canary"}]}
    )
    store.add_ips("office", ["10.0.0.0/8"])
    store.close()
    router = start_router(
        fresh_redis.url, canary_url=canary_server.url, trusted_proxies=["127.0.0.1"],
        engine_options={"cache_size": CACHE_SIZE, "cache_ttl": 3600},
    )  # fmt: skip
    try:
        _pipelined(router.port, range(0, FILL))  # fills the cache well past its size
        filled = rss_kib(router.pid)
        _pipelined(router.port, range(FILL, FILL + MORE))
        after = rss_kib(router.pid)
        observed(
            f"RSS after {FILL // 1000}k addresses {filled / 1024:.1f} MiB, "
            f"after {(FILL + MORE) // 1000}k {after / 1024:.1f} MiB"
        )
        assert (after - filled) * 1024 < MORE * BYTES_PER_ADDRESS, (
            "memory kept growing with new addresses"
        )
        assert routes(router.url, "anyone") == "stable"
    finally:
        router.cleanup()
