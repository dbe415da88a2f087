"""Write the documentation's benchmark page from the latest benchmark run.

    python bench/run.py          # writes bench/results/latest.json (and latest.md, .png)
    python bench/readme.py       # rewrites docs/benchmark.md: the summary, then every row
                                 # (and copies the chart to docs/benchmark.png)

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

#: (row name in the benchmark, what the summary calls it)
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
        "the bare app; req/s at 10 and 50 concurrent connections. Every row, and a chart,",
        "follow the summary; [Performance](performance.md) says how to read them.",
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
    report = (results / "latest.md").read_text()
    docs = ROOT / "docs"
    chart = (results / "latest.png").exists()
    if chart:
        shutil.copy(results / "latest.png", docs / "benchmark.png")
    page = ROOT / "docs" / "benchmark.md"
    page.write_text(benchmark_page(block(summary, command, machine), report, chart=chart))
    print(f"{page.relative_to(ROOT)}: performance figures from {latest}")
    return 0


def benchmark_page(summary: str, report: str, *, chart: bool) -> str:
    """The generated page: the summary tables, then the full report without its title."""
    body = report.split("\n", 1)[1].lstrip("\n") if report.startswith("# ") else report
    return "\n".join([
        "# Benchmark",
        "",
        "<!-- Written by `python bench/readme.py` from bench/results/latest.json;",
        "     edit bench/readme.py or bench/report.py, not this page. -->",
        "",
        BEGIN,
        summary,
        END,
        "",
        body.rstrip("\n"),
        *(["", "![req/s at 50 connections](benchmark.png)"] if chart else []),
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
