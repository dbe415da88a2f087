"""Write the README's performance figures from the latest benchmark run.

    python bench/run.py          # writes bench/results/latest.json
    python bench/readme.py       # rewrites the block between the markers in README.md,
                                 # and copies the full report to docs/benchmark.md (+ .png)

The figures come from one run on one machine, with the command and the machine named, so
anyone can see where they came from and run it again.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

#: (row name in the benchmark, what the README calls it)
ROWS = [
    ("bare ASGI app", "bare ASGI app (uvicorn)"),
    ("pure ASGI middleware, no-op (floor)", "pure ASGI middleware, no-op"),
    ("pure ASGI middleware adding one header (floor)", "pure ASGI middleware adding one header"),
    ("stable path, IP-list rule", "CanaryRouter, stable path, IP-list rule"),
    ("stable path, cookie rule", "CanaryRouter, stable path, cookie rule"),
    ("stable path, Redis-set rule (100 users)", "CanaryRouter, stable path, Redis-set rule"),
    ("stable path, sticky 5% (key outside)", "CanaryRouter, stable path, sticky 5 %"),
    ("canary path (default transport)", "CanaryRouter, canary path (HTTP11Transport)"),
    ("canary path (httpx transport)", "CanaryRouter, canary path (httpx's own transport)"),
    ("canary path (aiohttp transport)", "CanaryRouter, canary path (AiohttpTransport)"),
    ("95/5 mix, OpenResty keys", "CanaryRouter, 95/5 stable/canary mix"),
    ("Starlette JSON app + router, Redis-set rule", "Starlette JSON endpoint + CanaryRouter"),
    ("BaseHTTPMiddleware no-op (for scale)", "BaseHTTPMiddleware no-op"),
    ("OpenResty stable path (keepalive)", "OpenResty + Lua + Redis, stable path"),
    ("OpenResty canary path (keepalive)", "OpenResty + Lua + Redis, canary path"),
    ("OpenResty 95/5 mix (keepalive)", "OpenResty + Lua + Redis, 95/5 mix"),
    ("bare Flask app", "bare Flask (gunicorn gthread 2x8)"),
    ("Flask + CanaryWSGI, stable path, Redis-set rule", "Flask + CanaryWSGI, stable path"),
    ("Flask + CanaryWSGI, canary path", "Flask + CanaryWSGI, canary path"),
]


def _cell(row: dict[str, Any] | None, key: str, form: str) -> str:
    if row is None or row.get(key) is None:
        return "-"
    return form.format(row[key])


def block(summary: dict[str, Any], command: str, machine: str) -> str:
    rows = {(r["name"], r["connections"]): r for r in summary["rows"]}
    lines = [
        f"Measured with `{command}` on {machine}; one run, so compare ratios, not absolute",
        "numbers (the machine is shared). `x bare` is the median over runs taken in turns with",
        "the bare app; req/s at 10 and 50 concurrent connections. Every row, and a chart:",
        "[docs/benchmark.md](docs/benchmark.md).",
        "",
        "| setup | req/s c10 | req/s c50 | x bare c10 | x bare c50 | CPU µs/req c10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in ROWS:
        c10, c50 = rows.get((name, 10)), rows.get((name, 50))
        if c10 is None and c50 is None:
            continue
        lines.append(
            f"| {label} | {_cell(c10, 'rps', '{:,.0f}')} | {_cell(c50, 'rps', '{:,.0f}')} | "
            f"{_cell(c10, 'ratio_to_bare', '{:.2f}x')} | {_cell(c50, 'ratio_to_bare', '{:.2f}x')} | "
            f"{_cell(c10, 'cpu_us', '{:.0f}')} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for target in summary["targets"]:
        met = target["met"]
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {target['target']} | {target['measured']} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    results = ROOT / "bench" / "results"
    latest = results / "latest.json"
    if not latest.exists():
        print(f"no {latest}: run python bench/run.py first", file=sys.stderr)
        return 1
    summary = json.loads(latest.read_text())
    header = (results / "latest.md").read_text().split("\n\n", 2)[1]  # "Machine: ..., Command: ..."
    machine = header.split("Machine: ", 1)[1].split(". Command:", 1)[0]
    command = header.split("Command: `", 1)[1].split("`", 1)[0]
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{block(summary, command, machine)}\n{END}{tail}")
    docs = ROOT / "docs"
    report = (results / "latest.md").read_text()
    if (results / "latest.png").exists():
        shutil.copy(results / "latest.png", docs / "benchmark.png")
        report += "\n![req/s at 50 connections](benchmark.png)\n"
    (docs / "benchmark.md").write_text(report)
    print(f"README.md: performance figures from {latest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
