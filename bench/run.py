"""Benchmark canary_mw against the bare app and the classic OpenResty setup, side by side.

    python bench/run.py                 # everything, 5 s per run (about 6 minutes)
    python bench/run.py --seconds 2     # quicker, noisier

Writes bench/results/latest.md, latest.png and latest.json (and timestamped copies).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report, scenarios
from bench.harness import Server, descendants, free_port, have, start_redis, uvicorn


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (the median is kept)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="groups: asgi transports openresty wsgi canary outage streaming")  # fmt: skip
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[10, 50],
        help="wrk connection counts to run every row at (default: 10 50)",
    )
    parser.add_argument("--cases", nargs="*", default=[],
                        help="only the rows whose name contains one of these (the bare app and "
                             "the yardsticks a row is paired with always run)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("the benchmark needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    if not have("wrk"):
        print(
            "wrk not found: using the Python load generator (apt-get install wrk for better figures)"
        )
    groups = set(
        args.only or ["asgi", "transports", "openresty", "wsgi", "canary", "outage", "streaming"]
    )
    redis_process, redis_port = start_redis(binary)
    canary_port, stable_port = free_port(), free_port()
    canary = Server("canary", uvicorn("bench.apps:backend", canary_port), port=canary_port,
                    env={"MESSAGE": "This is version 2"})  # fmt: skip
    stable = Server("stable", uvicorn("bench.apps:backend", stable_port), port=stable_port)
    ctx = scenarios.Context(args.seconds, redis_port, canary, repeats=args.repeats,
                            connections=tuple(args.connections), cases=tuple(args.cases))  # fmt: skip
    ctx.extra["redis_pids"] = descendants(redis_process.pid)
    try:
        if "asgi" in groups:
            scenarios.asgi(ctx)
        if "transports" in groups:
            scenarios.transports(ctx)
        if "openresty" in groups:
            scenarios.openresty(ctx, stable)
        if "wsgi" in groups:
            scenarios.wsgi(ctx)
        if "canary" in groups:
            scenarios.canary_paths(ctx, stable)
        if "outage" in groups:
            scenarios.outage(ctx, binary)
        if "streaming" in groups:
            scenarios.streaming(ctx)
    finally:
        canary.stop()
        stable.stop()
        redis_process.terminate()
        redis_process.wait(10)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    command = "python bench/run.py" + "".join(f" {a}" for a in sys.argv[1:])
    text = report.markdown(ctx, command)
    for name in (f"{stamp}.md", "latest.md"):
        (args.out / name).write_text(text)
    (args.out / "latest.json").write_text(json.dumps(report.summary(ctx), indent=2))
    if report.chart(ctx, args.out / "latest.png"):
        shutil.copy(args.out / "latest.png", args.out / f"{stamp}.png")
    else:
        print("matplotlib not installed: no chart (pip install -e '.[bench]')")
    print(f"\nwrote {args.out / 'latest.md'}")
    print(
        "\n".join(
            line
            for line in text.splitlines()
            if line.startswith("| ") and ("met" in line or "yes" in line or "**no**" in line)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
