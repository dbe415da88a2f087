"""The fault suite's long variant: minutes of mixed traffic while Redis keeps failing.

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 60

One router (uvicorn) with a Redis-set rule, a canary, a private redis-server. Clients send
stable and canary requests, and leave at random moments (before the answer, mid-upload,
mid-download); every 30 s Redis is killed, paused or restarted for a few seconds. Every 30 s
the router's open file descriptors and RSS are sampled. At the end: 0 failed requests that
were allowed to finish, file descriptors back to the starting count, RSS growth reported.
Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Server, free_port, peak_rss_mib, stop_redis, uvicorn, wait_for_port

RULES = [{"id": "vip", "when": {"cookie": "uid", "in_set": "vip"}, "target": "canary"}]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_request(port: int, rng: random.Random) -> bool:
    """One client; True unless a request that was allowed to finish failed."""
    user = f"u{rng.randrange(200)}"  # u0..u9 are VIPs: about 5% canary traffic
    kind = rng.choice(("whole", "whole", "whole", "before", "upload", "download"))
    head = f"Host: soak\r\nCookie: uid={user}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if kind == "whole":
            sock.sendall(f"GET / HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data.startswith(b"HTTP/1.1 200")
        if kind == "before":
            sock.sendall(f"GET / HTTP/1.1\r\n{head}\r\n".encode())
        elif kind == "upload":
            sock.sendall(f"POST / HTTP/1.1\r\n{head}Content-Length: 99999\r\n\r\nabc".encode())
        else:
            sock.sendall(f"GET /big?size=5000000 HTTP/1.1\r\n{head}\r\n".encode())
            sock.recv(1000)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("the soak needs redis-server", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="soak-redis-")
    redis_port = free_port()
    redis_args = [binary, "--port", str(redis_port), "--save", "", "--dir", directory,
                  "--appendonly", "yes"]  # fmt: skip
    redis_process = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    wait_for_port(redis_port)
    from canary_mw.stores import store_from_url

    store = store_from_url(f"redis://127.0.0.1:{redis_port}/0")
    store.add_members("vip", [f"u{n}" for n in range(10)])
    store.close()
    canary_port, router_port = free_port(), free_port()
    canary = Server("canary", uvicorn("bench.apps:backend", canary_port), port=canary_port)
    config = {"store": f"redis://127.0.0.1:{redis_port}/0", "canary_url": canary.url,
              "default_rules": RULES}  # fmt: skip
    router = Server("router", uvicorn("bench.apps:router", router_port, factory=True),
                    port=router_port, env={"BENCH_ROUTER": json.dumps(config)})  # fmt: skip
    rng = random.Random(1)
    failed = requests = 0
    try:
        for _ in range(50):
            one_request(router_port, rng)
        pid = router.process.pid
        baseline_fds, start_rss = open_fds(pid), peak_rss_mib(router.pids())
        print(f"start: {baseline_fds} fds, RSS {start_rss:.1f} MiB", flush=True)
        deadline = time.monotonic() + args.minutes * 60
        redis = [redis_process]  # the fault thread replaces it on restarts
        stop = threading.Event()
        faults = threading.Thread(target=_faults, args=(redis, redis_args, stop), daemon=True)
        faults.start()
        next_sample = time.monotonic() + 30
        while time.monotonic() < deadline:
            requests += 1
            failed += not one_request(router_port, rng)
            now = time.monotonic()
            if now >= next_sample:
                print(f"{requests:>8} requests, {failed} failed, {open_fds(pid)} fds, "
                      f"RSS {peak_rss_mib(router.pids()):.1f} MiB", flush=True)  # fmt: skip
                next_sample = now + 30
        settle = time.monotonic() + 10
        while open_fds(pid) > baseline_fds + 2 and time.monotonic() < settle:
            time.sleep(0.1)
        stop.set()
        faults.join(30)
        redis_process = redis[0]
        end_fds, end_rss = open_fds(pid), peak_rss_mib(router.pids())
        print(f"end: {requests} requests, {failed} failed, fds {baseline_fds} -> {end_fds}, "
              f"peak RSS {start_rss:.1f} -> {end_rss:.1f} MiB", flush=True)  # fmt: skip
        return 0 if failed == 0 and end_fds <= baseline_fds + 2 else 1
    finally:
        router.stop()
        canary.stop()
        stop_redis(redis_process, directory)


def _faults(redis: list[subprocess.Popen[bytes]], args: list[str], stop: threading.Event) -> None:
    """Every 30 s: kill, pause or restart Redis for about 3 s, in turn."""
    for fault in itertools.cycle(("kill", "pause", "restart")):
        if stop.wait(30):
            return
        redis[0] = _fault(redis[0], args, fault)


def _fault(
    process: subprocess.Popen[bytes], args: list[str], fault: str
) -> subprocess.Popen[bytes]:
    print(f"  fault: Redis {fault}", flush=True)
    if fault == "pause":
        process.send_signal(signal.SIGSTOP)
        time.sleep(3)
        process.send_signal(signal.SIGCONT)
        return process
    process.kill() if fault == "kill" else process.terminate()
    process.wait(10)
    time.sleep(3)
    restarted = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    wait_for_port(int(args[2]))
    return restarted


if __name__ == "__main__":
    raise SystemExit(main())
