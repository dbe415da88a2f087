"""What the benchmark measures, one function per group."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    Load,
    Server,
    cpu_seconds,
    free_port,
    have,
    peak_rss_mib,
    pyload,
    stop_redis,
    summarize,
    uvicorn,
    wrk,
)  # fmt: skip

CANARY_IP, STABLE_IP = "10.9.9.9", "10.8.8.8"
SHARED = ROOT.parent / "shared" / "peers" / "openresty"


@dataclass
class Row:
    group: str
    name: str
    connections: int
    load: Load
    cpu_us: float  # CPU time of every serving process, per request
    rss_mib: float
    note: str = ""
    # The bare app measured with the same load script in turns with this row: ratios come
    # from pairs of runs measured back to back, not from a bare run minutes earlier.
    baseline: Row | None = None
    ratio: float | None = None  # median over the pairs of (this req/s / bare req/s)
    cpu_extra: float | None = None  # median over the pairs of (this - bare) CPU µs/req


@dataclass
class Context:
    seconds: float
    redis_port: int
    canary: Server
    repeats: int = 3  # runs per row; the median (by req/s) is kept: the machine is shared
    connections: tuple[int, ...] = (10, 50)  # wrk connection counts; each row is run at each
    cases: tuple[str, ...] = ()  # only rows whose name contains one of these (all when empty)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def wanted(self, name: str) -> bool:
        return not self.cases or any(case.lower() in name.lower() for case in self.cases)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


# -- wrk scripts ---------------------------------------------------------------------------
def _script(body: str) -> str:
    return (
        "counter = 0\nrequest = function()\n  counter = counter + 1\n"
        + body
        + "\n  return wrk.format(nil, nil)\nend\n"
    )


COOKIE_FIXED = _script('  wrk.headers["Cookie"] = "uid=stable-user; beta=0"')
COOKIE_USERS = _script('  wrk.headers["Cookie"] = "uid=u" .. (counter % 100)')
CLIENT_IP = _script(
    f'  wrk.headers["X-Real-IP"] = "{STABLE_IP}"\n  wrk.headers["X-Forwarded-For"] = "{STABLE_IP}"'
)
CANARY_CLIENT = _script(
    f'  wrk.headers["X-Real-IP"] = "{CANARY_IP}"\n  wrk.headers["X-Forwarded-For"] = "{CANARY_IP}"'
)
MIX_95_5 = _script(
    f'  local ip = (counter % 20 == 0) and "{CANARY_IP}" or "{STABLE_IP}"\n'
    '  wrk.headers["X-Real-IP"] = ip\n  wrk.headers["X-Forwarded-For"] = ip'
)


def _client_ip_headers(ip: str) -> str:
    return f"X-Real-IP: {ip}\r\nX-Forwarded-For: {ip}\r\n"


def load(url: str, connections: int, seconds: float, script: str | None) -> Load:
    if have("wrk"):
        return wrk(url, connections, seconds, script)
    # No wrk: the Python generator, with the same headers the scripts would send.
    headers = {COOKIE_FIXED: lambda n: "Cookie: uid=stable-user; beta=0\r\n",
               COOKIE_USERS: lambda n: f"Cookie: uid=u{n % 100}\r\n",
               CLIENT_IP: lambda n: f"X-Real-IP: {STABLE_IP}\r\nX-Forwarded-For: {STABLE_IP}\r\n",
               CANARY_CLIENT: lambda n: f"X-Real-IP: {CANARY_IP}\r\nX-Forwarded-For: {CANARY_IP}\r\n",
               MIX_95_5: lambda n: _client_ip_headers(CANARY_IP if n % 20 == 0 else STABLE_IP),
               }.get(script)  # fmt: skip
    port = int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    return pyload(port, connections, seconds, headers_for=headers)


def measure(ctx: Context, group: str, name: str, server: Server, script: str | None,
            extra_pids: list[int] = (), note: str = "", *,  # type: ignore[assignment]
            bare: Server | None = None, bare_pids: list[int] = ()) -> list[Row]:  # type: ignore[assignment]  # fmt: skip
    """Rows at 10 and 50 connections. With ``bare``, the bare app and this server take turns
    run by run (bare, server, bare, server...), and the ratio is the median of each pair's:
    the machine is shared, and its speed drifts between runs more than the router costs.
    ``bare_pids``: other processes whose CPU counts for the bare app's requests too."""
    rows = []
    for connections in ctx.connections:
        turns = ([(bare, list(bare_pids)), (server, list(extra_pids))] if bare
                 else [(server, list(extra_pids))])  # fmt: skip
        for turn, _ in turns:
            load(turn.url + "/", connections, 1, script)  # warm up: connections, caches
        runs: list[list[tuple[Load, float]]] = [[] for _ in turns]
        for _ in range(ctx.repeats):
            for index, (turn, pids) in enumerate(turns):
                runs[index].append(_one(ctx, turn, script, connections, pids))
        row = _row(group, name, server, connections, runs[-1], note)
        if bare:
            row.baseline = _row(group, "bare", bare, connections, runs[0])
            pairs = list(zip(runs[0], runs[-1], strict=True))
            row.ratio = statistics.median(r.rps / b.rps for (b, _), (r, _) in pairs)
            row.cpu_extra = statistics.median(
                _cpu_us(r, rc) - _cpu_us(b, bc) for (b, bc), (r, rc) in pairs
            )
        print(f"  {name:<42} c{connections:<3} {row.load.rps:>9.0f} req/s  p50 {row.load.p50_ms:6.2f} ms"
              f"  p99 {row.load.p99_ms:6.2f} ms  {row.cpu_us:6.1f} us CPU/req  errors {row.load.errors}"
              + (f"  ({row.ratio:.2f}x bare, {row.cpu_extra:+.0f} us CPU)" if bare else ""),
              flush=True)  # fmt: skip
        rows.append(row)
    ctx.rows.extend(rows)
    return rows


def _one(ctx: Context, server: Server, script: str | None, connections: int,
         extra_pids: list[int]) -> tuple[Load, float]:  # fmt: skip
    """One measured run: the load, and the CPU seconds every serving process used."""
    pids = server.pids() + extra_pids + redis_pids(ctx)
    before = cpu_seconds(pids)
    result = load(server.url + "/", connections, ctx.seconds, script)
    return result, cpu_seconds(pids) - before


def _cpu_us(result: Load, used: float) -> float:
    return used / max(result.requests, 1) * 1e6


def _row(group: str, name: str, server: Server, connections: int,
         runs: list[tuple[Load, float]], note: str = "") -> Row:  # fmt: skip
    """The median run (by req/s) of ``runs``."""
    result, used = sorted(runs, key=lambda run: run[0].rps)[len(runs) // 2]
    return Row(group, name, connections, result, _cpu_us(result, used),
               peak_rss_mib(server.pids()), note)  # fmt: skip


# -- ASGI -------------------------------------------------------------------------------
def router(ctx: Context, name: str, rules: Any = None, *, mode: str | None = None,
           openresty: bool = False, trusted: bool = False, app: str = "backend",
           **options: Any) -> Server:  # fmt: skip
    from canary_mw.stores import store_from_url

    prefix = f"bench{free_port()}:"
    store = store_from_url(ctx.redis_url, prefix=prefix)
    if mode:
        store.set_mode(mode)
    store.close()
    config: dict[str, Any] = {
        "store": f"{ctx.redis_url}?prefix={prefix}",
        "canary_url": ctx.canary.url,
        **options,
    }
    if rules is not None:
        config["default_rules"] = rules
    if openresty:
        config["openresty_rules"] = True
    if trusted:
        config["trusted_proxies"] = ["127.0.0.1"]
    port = free_port()
    return Server(name, uvicorn("bench.apps:router", port, factory=True), port=port,
                  env={"BENCH_ROUTER": json.dumps(config), "BENCH_APP": app})  # fmt: skip


def asgi(ctx: Context) -> None:
    print("ASGI (uvicorn, httptools + uvloop, 1 process)", flush=True)
    canary_pids = ctx.canary.pids()
    port = free_port()
    bare = Server("bare", uvicorn("bench.apps:backend", port), port=port)
    measure(ctx, "asgi", "bare ASGI app", bare, None)
    cases = [
        ("stable path, IP-list rule", {"rules": [{"id": "office", "when": {"ip": ["10.0.0.0/8"]}}]}, None),
        ("stable path, cookie rule", {"rules": [{"id": "beta", "when": {"cookie": "beta", "equals": "1"}}]}, COOKIE_FIXED),
        ("stable path, Redis-set rule (100 users)", {"rules": [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}}]}, COOKIE_USERS),
        ("stable path, sticky 5% (key outside)", {"rules": [{"id": "pct", "when": {"percent": 5, "by": "cookie:uid", "salt": "bench"}}]}, COOKIE_FIXED),
        ("stable path, OpenResty keys (Redis GET)", {"openresty": True, "trusted": True}, CLIENT_IP),
        ("canary path (default transport)", {"mode": "all"}, None),
        ("95/5 mix, OpenResty keys", {"openresty": True, "trusted": True}, MIX_95_5),
    ]  # fmt: skip
    for name, options, script in cases:
        if not ctx.wanted(name):
            continue
        server = router(ctx, name, **options)
        if "Redis-set" in name and ctx.connections == (10, 50):
            ctx.extra["redis_cmds"] = redis_commands(ctx, server, script)
        measure(ctx, "asgi", name, server, script,
                canary_pids if "canary" in name or "mix" in name else [], bare=bare)  # fmt: skip
        server.stop()
    # For scale: what any middleware costs. A pure ASGI no-op, one that only adds a header
    # (the server checks every header in Python), and the common BaseHTTPMiddleware no-op.
    for app, name in (("pure_noop", "pure ASGI middleware, no-op (floor)"),
                      ("pure_tag", "pure ASGI middleware adding one header (floor)"),
                      ("base_http_noop", "BaseHTTPMiddleware no-op (for scale)")):  # fmt: skip
        if not ctx.wanted(name):
            continue
        port = free_port()
        floor = Server(app, uvicorn(f"bench.apps:{app}", port, factory=True), port=port)
        measure(ctx, "asgi", name, floor, None, bare=bare)
        floor.stop()
    bare.stop()
    # The same comparison with an endpoint that does some work of its own (Starlette routing
    # and a JSON body): what the fixed per-request cost means for a typical app.
    if not ctx.wanted("Starlette JSON app + router, Redis-set rule"):
        return
    port = free_port()
    bare = Server("realistic", uvicorn("bench.apps:realistic", port, factory=True), port=port)
    rules = [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}}]
    server = router(ctx, "Starlette JSON app + router", rules, app="realistic")
    measure(ctx, "asgi", "Starlette JSON app + router, Redis-set rule", server, COOKIE_USERS,
            bare=bare)  # fmt: skip
    server.stop()
    bare.stop()


def transports(ctx: Context) -> None:
    print("Canary-path transports", flush=True)
    for transport in ("httpx", "aiohttp", "httpx2"):
        try:
            __import__({"httpx": "httpx", "aiohttp": "aiohttp", "httpx2": "httpcore2"}[transport])
        except ImportError:
            ctx.notes.append(f"{transport} transport skipped: pip install '.[bench]'")
            continue
        server = router(ctx, transport, mode="all", transport=transport)
        measure(
            ctx,
            "transport",
            f"canary path ({transport} transport)",
            server,
            None,
            ctx.canary.pids(),
        )
        server.stop()


def redis_commands(ctx: Context, server: Server, script: str | None) -> dict[str, float]:
    """Redis commands per second while the stable path runs at two request rates."""
    import redis

    client = redis.Redis(port=ctx.redis_port)
    client.config_resetstat()  # what the router sends with no requests at all: its polling
    time.sleep(2)
    idle = sum(stat["calls"] for stat in client.info("commandstats").values()) - 1
    out: dict[str, float] = {"idle_cmds_per_s": idle / 2}
    for connections in (10, 50):
        load(server.url + "/", connections, 1, script)
        client.config_resetstat()
        started = time.monotonic()
        result = load(server.url + "/", connections, ctx.seconds, script)
        stats = client.info("commandstats")
        window = time.monotonic() - started  # wrk runs a little longer than asked
        calls = sum(stat["calls"] for stat in stats.values())
        lookups = stats.get("cmdstat_sismember", {}).get("calls", 0)
        out[f"c{connections}_rps"] = result.rps
        out[f"c{connections}_cmds_per_s"] = calls / window
        out[f"c{connections}_lookups_per_s"] = lookups / window
    client.close()
    return out


# -- WSGI ---------------------------------------------------------------------------------
def wsgi(ctx: Context) -> None:
    print("WSGI (gunicorn gthread, 2 workers x 8 threads)", flush=True)
    bare = _gunicorn("bare Flask app", {})
    measure(ctx, "wsgi", "bare Flask app", bare, None)
    cases = [("Flask + CanaryWSGI, stable path, Redis-set rule", {"default_rules": [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}}]}, COOKIE_USERS),
             ("Flask + CanaryWSGI, canary path", "all", None)]  # fmt: skip
    for name, options, script in cases:
        if not ctx.wanted(name):
            continue
        server = _wsgi_router(ctx, name, options)
        measure(ctx, "wsgi", name, server, script, ctx.canary.pids() if "canary" in name else [],
                bare=bare)  # fmt: skip
        server.stop()
    bare.stop()


def _wsgi_router(ctx: Context, name: str, options: dict[str, Any] | str) -> Server:
    """Flask + CanaryWSGI under gunicorn, on its own key prefix; ``"all"``: mode all."""
    from canary_mw.stores import store_from_url

    prefix = f"benchw{free_port()}:"
    config: dict[str, Any] = {
        "store": f"{ctx.redis_url}?prefix={prefix}",
        "canary_url": ctx.canary.url,
    }
    if options == "all":
        store = store_from_url(ctx.redis_url, prefix=prefix)
        store.set_mode("all")
        store.close()
    elif isinstance(options, dict):
        config.update(options)
    return _gunicorn(name, {"BENCH_ROUTER": json.dumps(config)})


def _gunicorn(name: str, env: dict[str, str], app: str = "bench.apps:flask_app()") -> Server:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "8",
               "-b", f"127.0.0.1:{port}", "--log-level", "warning", app]  # fmt: skip
    return Server(name, command, port=port, env=env)


# -- the classic OpenResty setup ----------------------------------------------------------------
def _have_openresty(ctx: Context) -> bool:
    if (
        have("nginx")
        and Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists()
        and (SHARED / "gray.lua").exists()
    ):
        return True
    ctx.notes.append(
        "OpenResty setup skipped: needs nginx with the Lua module (apt-get install "
        "nginx libnginx-mod-http-lua lua-nginx-redis) and ../shared/peers/openresty"
    )
    return False


@contextlib.contextmanager
def _openresty(ctx: Context, stable: Server, pool: int) -> Iterator[Server]:
    """nginx + ../shared/peers/openresty/gray.lua in front of ``stable`` and the canary, its
    Redis holding the classic key for CANARY_IP; ``pool`` 1 keeps Redis connections alive."""
    import redis

    client = redis.Redis(port=ctx.redis_port)
    client.set(CANARY_IP, CANARY_IP)  # the classic layout: the IP as key and value
    workdir = Path(tempfile.mkdtemp(prefix="bench-openresty-"))
    shutil.copy(SHARED / "gray.lua", workdir / "gray.lua")
    # nginx's workers drop root for an unprivileged user: they must be able to read the script.
    workdir.chmod(0o755)
    (workdir / "gray.lua").chmod(0o644)
    port, plain = free_port(), free_port()
    conf = (SHARED / "nginx.conf.tmpl").read_text()
    for key, value in {"__DIR__": str(workdir), "__STABLE__": str(stable.port),
                       "__CANARY__": str(ctx.canary.port), "__PORT__": str(port),
                       "__REDIS__": str(ctx.redis_port), "__POOL__": str(pool),
                       "__PLAINPORT__": str(plain)}.items():  # fmt: skip
        conf = conf.replace(key, value)
    conf = conf.replace("daemon on;", "daemon off;").replace("run/nginx.pid", f"nginx{pool}.pid")
    (workdir / "run").mkdir(exist_ok=True)
    (workdir / f"nginx{pool}.conf").write_text(conf)
    server = Server(f"openresty{pool}", ["nginx", "-c", str(workdir / f"nginx{pool}.conf"),
                                          "-p", str(workdir)], port=port)  # fmt: skip
    try:
        _check_answers(server, workdir)
        yield server
    finally:
        server.stop()
        client.delete(CANARY_IP)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)


def openresty(ctx: Context, stable: Server) -> None:
    if not _have_openresty(ctx):
        return
    print("OpenResty + Lua + Redis (../shared/peers/openresty, 1 nginx worker)", flush=True)
    backends = stable.pids() + ctx.canary.pids()
    with _openresty(ctx, stable, pool=1) as server:
        for name, script in (("OpenResty stable path (keepalive)", CLIENT_IP),
                             ("OpenResty canary path (keepalive)", CANARY_CLIENT),
                             ("OpenResty 95/5 mix (keepalive)", MIX_95_5)):  # fmt: skip
            if ctx.wanted(name):
                measure(ctx, "openresty", name, server, script, backends)
    if not ctx.wanted("OpenResty stable path (connect per request)"):
        return
    with _openresty(ctx, stable, pool=0) as server:
        measure(
            ctx, "openresty", "OpenResty stable path (connect per request)", server, CLIENT_IP,
            backends,
        )  # fmt: skip


def canary_paths(ctx: Context, stable: Server) -> None:
    """The two canary paths against their yardsticks, each pair measured in turns run by run
    (the ratio is the median of the pairs): the ASGI router in ``mode all`` against the
    OpenResty canary path, and CanaryWSGI's canary path against bare Flask."""
    print("Canary paths, paired with their yardsticks", flush=True)
    canary_pids = ctx.canary.pids()
    if _have_openresty(ctx):
        server = router(ctx, "canary path", mode="all")
        with _openresty(ctx, stable, pool=1) as yardstick:
            # Same load script for both turns: the router ignores the client-IP headers.
            measure(ctx, "canary", PAIRED_ASGI_CANARY, server, CANARY_CLIENT,
                    canary_pids + stable.pids(), bare=yardstick)  # fmt: skip
        server.stop()
    bare = _gunicorn("bare Flask app", {})
    server = _wsgi_router(ctx, "Flask + CanaryWSGI, canary path", "all")
    measure(ctx, "canary", PAIRED_WSGI_CANARY, server, None, canary_pids, bare=bare)
    # The yardstick's yardstick: the cheapest forward a WSGI app can make (bench/apps.py),
    # under the same gunicorn. No forwarding WSGI app can do better than this row.
    floor = _gunicorn("WSGI floor", {"BENCH_CANARY_URL": ctx.canary.url},
                      app="bench.apps:wsgi_floor()")  # fmt: skip
    measure(ctx, "canary", PAIRED_WSGI_FLOOR, floor, None, canary_pids, bare=bare)
    bare.stop()
    # What CanaryWSGI's own work costs: paired with the floor, which shares the machine with
    # the same canary process (bare Flask has no second process to share two cores with).
    measure(ctx, "canary", PAIRED_WSGI_VS_FLOOR, server, None, canary_pids, bare=floor,
            bare_pids=canary_pids)  # fmt: skip
    server.stop()
    floor.stop()


#: Row names of the paired canary-path runs (report.targets reads them).
PAIRED_ASGI_CANARY = "ASGI canary path, paired with OpenResty's canary path"
PAIRED_WSGI_CANARY = "CanaryWSGI canary path, paired with bare Flask"
PAIRED_WSGI_FLOOR = "Cheapest possible WSGI forward, paired with bare Flask"
PAIRED_WSGI_VS_FLOOR = "CanaryWSGI canary path, paired with the cheapest possible forward"


def _check_answers(server: Server, workdir: Path) -> None:
    """Measure nothing that does not answer 200: a misconfigured proxy's fast 502s would
    pass for throughput."""
    import urllib.request

    try:
        with urllib.request.urlopen(server.url + "/", timeout=5) as reply:
            if reply.status == 200:
                return
    except OSError as exc:
        problem = str(exc)
    else:
        problem = f"status {reply.status}"
    log = workdir / "run" / "error.log"
    tail = log.read_text()[-2000:] if log.exists() else "(no error log)"
    raise RuntimeError(f"{server.name} does not answer 200 ({problem}):\n{tail}")


def redis_pids(ctx: Context) -> list[int]:
    return ctx.extra.get("redis_pids", [])


# -- Redis outage during load ---------------------------------------------------------------
def outage(ctx: Context, redis_binary: str) -> None:
    print("Redis outage during load (SIGSTOP for 4 s, then SIGCONT)", flush=True)
    port = free_port()
    directory = tempfile.mkdtemp(prefix="bench-outage-")
    redis_process = subprocess.Popen([redis_binary, "--port", str(port), "--save", "", "--appendonly", "no",
                                      "--dir", directory], stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    outage_ctx = Context(ctx.seconds, port, ctx.canary)
    rules = [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}}]
    server = router(outage_ctx, "outage", rules=rules)
    bare_port = free_port()
    bare = Server("bare-outage", uvicorn("bench.apps:backend", bare_port), port=bare_port)
    users = lambda n: f"Cookie: uid=u{n % 1000}\r\n"  # noqa: E731 - 1,000 users: many lookups
    try:
        pyload(bare.port, 10, 1, headers_for=users)
        baseline = pyload(bare.port, 10, 4, headers_for=users)
        pyload(server.port, 10, 1, headers_for=users)
        start = time.monotonic()
        stopper = subprocess.Popen([sys.executable, "-c",
            f"import os, signal, time; time.sleep(3); os.kill({redis_process.pid}, signal.SIGSTOP); "
            f"time.sleep(4); os.kill({redis_process.pid}, signal.SIGCONT)"])  # fmt: skip
        result = pyload(server.port, 10, 11, headers_for=users)
        stopper.wait()
        phases = {"healthy": (0, 3), "detecting (first 1 s)": (3, 4), "breaker open": (4, 7),
                  "after recovery": (7.5, 11)}  # fmt: skip
        out = {"bare_p50_ms": baseline.p50_ms, "bare_p99_ms": baseline.p99_ms, "phases": {}}
        for phase, (begin, end) in phases.items():
            samples = [s for s in result.latencies if begin <= s[0] - start < end]
            summary = summarize(samples, end - begin)
            out["phases"][phase] = {"p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms,
                                    "requests": summary.requests, "failed": summary.errors}  # fmt: skip
            print(f"  {phase:<24} {summary.requests:>7} requests  p50 {summary.p50_ms:6.2f} ms  "
                  f"p99 {summary.p99_ms:6.2f} ms  failed {summary.errors}", flush=True)  # fmt: skip
        ctx.extra["outage"] = out
    finally:
        server.stop()
        bare.stop()
        stop_redis(redis_process, directory)


# -- 1 GiB through the canary path -------------------------------------------------------------
def streaming(ctx: Context) -> None:
    print("1 GiB streamed through the canary path", flush=True)
    server = router(ctx, "stream", mode="all")
    import socket

    size = 1 << 30
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /small HTTP/1.1\r\nHost: b\r\n\r\n")
            sock.recv(65536)
        before = peak_rss_mib(server.pids())
        started = time.monotonic()
        received = 0
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"GET /big?size={size} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            received = len(head.partition(b"\r\n\r\n")[2])
            while received < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
        elapsed = time.monotonic() - started
        after = peak_rss_mib(server.pids())
        ctx.extra["stream"] = {"bytes": received, "seconds": elapsed, "rss_before_mib": before,
                               "rss_growth_mib": after - before}  # fmt: skip
        print(f"  {received / 2**30:.2f} GiB in {elapsed:.1f} s, peak RSS {before:.1f} -> {after:.1f} MiB",
              flush=True)  # fmt: skip
    finally:
        server.stop()
