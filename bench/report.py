"""The benchmark's markdown table, its verdict on each target, and a PNG chart."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.scenarios import (
    PAIRED_ASGI_CANARY,
    PAIRED_WSGI_CANARY,
    PAIRED_WSGI_FLOOR,
    PAIRED_WSGI_VS_FLOOR,
    Context,
    Row,
)


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{cpu}, {cores} cores, Linux {platform.release()}, Python {platform.python_version()}"


def _find(rows: list[Row], name: str, connections: int) -> Row | None:
    for row in rows:
        if row.name == name and row.connections == connections:
            return row
    return None


def targets(ctx: Context) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the benchmark issue; met None: not measured."""
    rows, out = ctx.rows, []

    def ratio(a: str, b: str, connections: int) -> float | None:
        first, second = _find(rows, a, connections), _find(rows, b, connections)
        if first and first.ratio is not None and b.startswith("bare"):
            return first.ratio  # from the runs taken in turns with the bare app
        return None if not first or not second else first.load.rps / second.load.rps

    def paired(name: str, connections: int) -> float | None:
        row = _find(rows, name, connections)
        return None if row is None else row.ratio

    def add(label: str, values: list[float | None], minimum: float) -> None:
        if any(v is None for v in values):
            out.append((label, "not measured", None))
            return
        text = " / ".join(f"{v:.2f}x" for v in values if v is not None)
        out.append(
            (label, f"{text} (c10 / c50)", all(v is not None and v >= minimum for v in values))
        )

    redis_set = "stable path, Redis-set rule (100 users)"
    add("ASGI stable path, Redis-backed rule >= 0.90x bare app",
        [ratio(redis_set, "bare ASGI app", c) for c in (10, 50)], 0.90)  # fmt: skip
    add("(same, with a typical endpoint: Starlette routing + JSON) >= 0.90x",
        [ratio("Starlette JSON app + router, Redis-set rule", "bare Starlette JSON app", c) for c in (10, 50)], 0.90)  # fmt: skip
    add("ASGI stable path, Redis-backed rule >= 1.5x OpenResty stable (keepalive)",
        [ratio(redis_set, "OpenResty stable path (keepalive)", c) for c in (10, 50)], 1.5)  # fmt: skip
    canary = "canary path (default transport)"
    add("ASGI canary path >= 0.25x OpenResty canary (keepalive)",
        [ratio(canary, "OpenResty canary path (keepalive)", c) for c in (10, 50)], 0.25)  # fmt: skip
    add("(for comparison: httpx's own transport) >= 0.25x",
        [ratio("canary path (httpx transport)", "OpenResty canary path (keepalive)", c) for c in (10, 50)], 0.25)  # fmt: skip
    # Issue 11's bars, from runs paired with their yardstick (bench/run.py --only canary).
    add("ASGI canary path >= 0.35x OpenResty canary (keepalive), paired runs",
        [paired(PAIRED_ASGI_CANARY, c) for c in (10, 50)], 0.35)  # fmt: skip
    add("CanaryWSGI canary path >= 0.7x bare Flask (gunicorn), paired runs",
        [paired(PAIRED_WSGI_CANARY, c) for c in (10, 50)], 0.7)  # fmt: skip
    add("(for reference: the cheapest possible WSGI forward, bench/apps.py:wsgi_floor) >= 0.7x",
        [paired(PAIRED_WSGI_FLOOR, c) for c in (10, 50)], 0.7)  # fmt: skip
    add("(for reference: CanaryWSGI canary path against that cheapest forward) >= 0.8x",
        [paired(PAIRED_WSGI_VS_FLOOR, c) for c in (10, 50)], 0.8)  # fmt: skip
    c10, c50 = _find(rows, canary, 10), _find(rows, canary, 50)
    add("ASGI canary path at c50 >= 0.8x at c10",
        [None if not c10 or not c50 else c50.load.rps / c10.load.rps], 0.8)  # fmt: skip
    add("95/5 mix >= 1.0x OpenResty 95/5 mix",
        [ratio("95/5 mix, OpenResty keys", "OpenResty 95/5 mix (keepalive)", c) for c in (10, 50)], 1.0)  # fmt: skip
    add("WSGI stable path >= 0.90x bare Flask (gunicorn)",
        [ratio("Flask + CanaryWSGI, stable path, Redis-set rule", "bare Flask app", c) for c in (10, 50)], 0.90)  # fmt: skip
    cmds = ctx.extra.get("redis_cmds")
    if cmds:
        # Membership lookups: at most one per user per cache TTL (100 users / 0.5 s), however
        # many requests; the rest is the router's own polling, the same at any request rate.
        bound = 100 / 0.5
        worst = max(cmds["c10_lookups_per_s"], cmds["c50_lookups_per_s"])
        out.append((f"Redis lookups/s during a stable run bounded by users/TTL (<= {bound:.0f}/s)",
                    f"{cmds['c10_lookups_per_s']:.0f}/s at {cmds['c10_rps']:.0f} req/s, "
                    f"{cmds['c50_lookups_per_s']:.0f}/s at {cmds['c50_rps']:.0f} req/s "
                    f"(all commands: {cmds['c10_cmds_per_s']:.0f}/s, {cmds['c50_cmds_per_s']:.0f}/s;"
                    f" idle: {cmds.get('idle_cmds_per_s', 0):.0f}/s)", worst <= bound))  # fmt: skip
    outage = ctx.extra.get("outage")
    if outage:
        bare = outage["bare_p99_ms"]
        phases = outage["phases"]
        detect, opened = phases["detecting (first 1 s)"], phases["breaker open"]
        failed = sum(p["failed"] for p in phases.values())
        out.append(
            (
                "Redis outage: p99 <= bare + 50 ms while detecting",
                f"{detect['p99_ms']:.2f} ms vs bare {bare:.2f} ms",
                detect["p99_ms"] <= bare + 50,
            )
        )
        out.append(
            (
                "Redis outage: p99 <= bare + 1 ms once the breaker is open",
                f"{opened['p99_ms']:.2f} ms vs bare {bare:.2f} ms",
                opened["p99_ms"] <= bare + 1,
            )
        )
        out.append(("Redis outage: 0 failed requests", f"{failed} failed", failed == 0))
    stream = ctx.extra.get("stream")
    if stream:
        out.append(("1 GiB through the canary path: < 32 MiB RSS growth",
                    f"{stream['rss_growth_mib']:.1f} MiB", stream["rss_growth_mib"] < 32))  # fmt: skip
    return out


def markdown(ctx: Context, command: str) -> str:
    lines = [
        "# canary_mw benchmark", "",
        f"Machine: {machine()}. Command: `{command}`. Each row is the median (by req/s) of {ctx.repeats} runs of"
        f" {ctx.seconds:g} s after a 1 s warm-up; wrk -t1 when installed. Compare ratios within this run only: the machine is shared.", "",
        "CPU/req is the CPU time of every serving process (app or router, canary backend, nginx,"
        " Redis) divided by the requests served. RSS is the largest peak among the server's processes."
        " Where a row was paired with the bare app (same load script, runs taken in turns: bare, router,"
        " bare, router...), 'vs bare' and '+ vs bare' are the medians over those pairs.", "",
    ]  # fmt: skip
    for group, title in (("asgi", "ASGI: bare app vs CanaryRouter (uvicorn, httptools, uvloop)"),
                         ("transport", "Canary path: transports under the httpx API"),
                         ("openresty", "The classic OpenResty + Lua + Redis setup, same backend"),
                         ("wsgi", "WSGI: bare Flask vs CanaryWSGI (gunicorn gthread 2x8)")):  # fmt: skip
        rows = [row for row in ctx.rows if row.group == group]
        if not rows:
            continue
        base = {
            c: _find(ctx.rows, "bare ASGI app" if group != "wsgi" else "bare Flask app", c)
            for c in ctx.connections
        }
        lines += [f"## {title}", "", "| scenario | conns | req/s | vs bare | p50 ms | p99 ms | CPU µs/req | + vs bare | peak RSS MiB | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in rows:
            reference = base[row.connections]
            if row.ratio is not None and row.cpu_extra is not None:
                versus, extra = f"{row.ratio:.2f}x", f"{row.cpu_extra:+.0f}"
            elif reference and reference is not row:
                versus = f"{row.load.rps / reference.load.rps:.2f}x"
                extra = f"{row.cpu_us - reference.cpu_us:+.0f}"
            else:
                versus, extra = ("1.00x" if reference is row else "-"), "-"
            lines.append(f"| {row.name} | {row.connections} | {row.load.rps:,.0f} | {versus} | "
                         f"{row.load.p50_ms:.2f} | {row.load.p99_ms:.2f} | {row.cpu_us:.0f} | {extra} | "
                         f"{row.rss_mib:.0f} | {row.load.errors} |")  # fmt: skip
        lines.append("")
    cmds = ctx.extra.get("redis_cmds")
    if cmds:
        lines += [
            "## Redis commands during a stable-path run (Redis-set rule, 100 users)",
            "",
            f"With no requests at all the router sends {cmds.get('idle_cmds_per_s', 0):.0f} commands/s"
            " (its version polling).",
            "",
            "| conns | req/s | Redis commands/s | of which SISMEMBER | per request |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c in (10, 50):
            rps, per_s = cmds[f"c{c}_rps"], cmds[f"c{c}_cmds_per_s"]
            lookups = cmds.get(f"c{c}_lookups_per_s", 0)
            lines.append(
                f"| {c} | {rps:,.0f} | {per_s:,.0f} | {lookups:,.0f} | {per_s / rps:.4f} |"
            )
        lines.append("")
    outage = ctx.extra.get("outage")
    if outage:
        lines += ["## Redis paused (SIGSTOP) for 4 s under load (10 connections, 1,000 users)", "",
                  f"Bare app under the same load: p50 {outage['bare_p50_ms']:.2f} ms, p99 {outage['bare_p99_ms']:.2f} ms.", "",
                  "| phase | requests | p50 ms | p99 ms | failed |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for phase, p in outage["phases"].items():
            lines.append(
                f"| {phase} | {p['requests']} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['failed']} |"
            )
        lines.append("")
    stream = ctx.extra.get("stream")
    if stream:
        lines += ["## 1 GiB through the canary path", "",
                  f"{stream['bytes'] / 2**30:.2f} GiB in {stream['seconds']:.1f} s "
                  f"({stream['bytes'] / stream['seconds'] / 2**20:.0f} MiB/s); router peak RSS "
                  f"{stream['rss_before_mib']:.1f} MiB before, +{stream['rss_growth_mib']:.1f} MiB after.", ""]  # fmt: skip
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for label, measured, met in targets(ctx):
        verdict = "not measured" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {label} | {measured} | {verdict} |")
    if ctx.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in ctx.notes]]
    return "\n".join(lines) + "\n"


def chart(ctx: Context, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [row for row in ctx.rows if row.connections == 50]
    colors = {
        "asgi": "#4c72b0",
        "transport": "#8172b2",
        "openresty": "#c44e52",
        "wsgi": "#55a868",
        "canary": "#dd8452",
        "streaming": "#937860",
    }
    figure, axes = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.5))
    axes.barh([row.name for row in rows], [row.load.rps for row in rows],
              color=[colors.get(row.group, "#8c8c8c") for row in rows])  # fmt: skip
    axes.invert_yaxis()
    axes.set_xlabel("requests per second, 50 connections (higher is better)")
    axes.set_title(f"canary_mw benchmark — {machine()}", fontsize=9)
    for index, row in enumerate(rows):
        axes.text(row.load.rps, index, f" {row.load.rps:,.0f}", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def summary(ctx: Context) -> dict[str, Any]:
    return {
        "rows": [
            {
                "group": r.group,
                "name": r.name,
                "connections": r.connections,
                "rps": r.load.rps,
                "p50_ms": r.load.p50_ms,
                "p99_ms": r.load.p99_ms,
                "cpu_us": r.cpu_us,
                "rss_mib": r.rss_mib,
                "errors": r.load.errors,
                "bare_rps": r.baseline.load.rps if r.baseline else None,
                "bare_cpu_us": r.baseline.cpu_us if r.baseline else None,
                "ratio_to_bare": r.ratio,
                "cpu_us_over_bare": r.cpu_extra,
            }
            for r in ctx.rows
        ],
        "extra": ctx.extra,
        "notes": ctx.notes,
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(ctx)],
    }
