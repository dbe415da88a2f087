"""CPU per request of each thread of one gunicorn worker (``-w 1 -k gthread --threads 1``),
for bare Flask, the WSGI floor (bench/apps.py:wsgi_floor) and Flask + CanaryWSGI on its
canary path, in turns:

    python bench/thread_cpu.py                 # 3 turns of 3 s each, 4 connections
    python bench/thread_cpu.py --turns 6

One worker with one request thread takes gunicorn's own threads out of the picture (no GIL
hand-offs between request threads), so what differs between the rows is what each app does
per request. The worker's main thread (gunicorn's acceptor) and its request thread are
listed apart, from /proc/<pid>/task/*/stat; the canary's CPU is listed too. Compare rows
within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import TICKS, Server, cpu_seconds, free_port, start_redis, uvicorn
from bench.scenarios import load


def _tasks(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by thread id."""
    found = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[stat.parent.name] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    from canary_mw.stores import store_from_url

    redis, redis_port = start_redis(binary)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    canary_port = free_port()
    canary = Server("canary", uvicorn("bench.apps:backend", canary_port), port=canary_port)
    store = store_from_url(redis_url, prefix="threadcpu:")
    store.set_mode("all")
    store.close()
    cases = {
        "bare Flask": ("bench.apps:flask_app()", {}),
        "WSGI floor": ("bench.apps:wsgi_floor()", {"BENCH_CANARY_URL": canary.url}),
        "CanaryWSGI canary path": ("bench.apps:flask_app()", {"BENCH_ROUTER": json.dumps(
            {"store": f"{redis_url}?prefix=threadcpu:", "canary_url": canary.url})}),
    }  # fmt: skip
    servers = {}
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for name, (app, env) in cases.items():
            port = free_port()
            command = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread",
                       "--threads", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                       app]  # fmt: skip
            servers[name] = server = Server(name, command, port=port, env=env)
            load(server.url + "/", args.connections, 1, None)  # warm up
            rows[name] = {"acceptor": [], "request thread": [], "others": [], "canary": []}
        for _ in range(args.turns):
            for name, server in servers.items():
                worker = next(pid for pid in server.pids() if pid != server.process.pid)
                before, canary_before = _tasks(worker), cpu_seconds(canary.pids())
                result = load(server.url + "/", args.connections, args.seconds, None)
                after, canary_after = _tasks(worker), cpu_seconds(canary.pids())
                requests = max(1.0, result.rps * args.seconds)
                used = {t: (after[t] - before.get(t, 0.0)) * 1e6 / requests for t in after}
                # gunicorn's main thread (the acceptor) started first: the lowest thread id.
                acceptor = used.pop(min(used, key=int))
                rest = sorted(used.values(), reverse=True) or [0.0]
                rows[name]["acceptor"].append(acceptor)
                rows[name]["request thread"].append(rest[0])
                rows[name]["others"].append(sum(rest[1:]))
                rows[name]["canary"].append((canary_after - canary_before) * 1e6 / requests)
    finally:
        for server in servers.values():
            server.stop()
        canary.stop()
        redis.terminate()
        redis.wait(10)
    print(f"µs of CPU per request, median of {args.turns} turns "
          f"(acceptor / request thread / other threads / canary):")  # fmt: skip
    for name, columns in rows.items():
        cells = "  ".join(f"{statistics.median(values):6.1f}" for values in columns.values())
        print(f"  {name:<24} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
