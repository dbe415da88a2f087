"""``canary-mw mirror``: shadow traffic from the terminal (docs/shadow.md)."""

from __future__ import annotations

import json
from typing import Any, TextIO

import click

from ..shadow.config import BODY_MODES
from ..shadow.report import COUNTERS, parse_samples, report_rows
from ..stores import Store
from .cli_context import Context, one_line_errors, pass_context
from .cli_context import report_change as _report

__all__ = ["mirror", "report_lines"]

_TITLES = {"skipped:body": "skipped", "mismatch:status": "diff:status",
           "mismatch:header": "diff:header", "mismatch:body": "diff:body"}  # fmt: skip
_COLUMNS = [("route", "route"), *((name, _TITLES.get(name, name)) for name in COUNTERS)]


def report_lines(counts: dict[str, int], samples: list[dict[str, Any]]) -> list[str]:
    """The report as a table, then the latest differences."""
    rows = report_rows(counts)
    if not rows:
        return ["no shadow traffic counted yet"]
    widths = {
        key: max(len(title), *(len(str(row[key])) for row in rows)) for key, title in _COLUMNS
    }
    lines = ["  ".join(
        title.ljust(widths[key]) if key == "route" else title.rjust(widths[key])
        for key, title in _COLUMNS
    ).rstrip()]  # fmt: skip
    for row in rows:
        lines.append("  ".join(
            str(row[key]).ljust(widths[key]) if key == "route" else str(row[key]).rjust(widths[key])
            for key, _ in _COLUMNS
        ).rstrip())  # fmt: skip
    if samples:
        lines += ["", "latest differences:"]
        for sample in samples[:10]:
            found = "; ".join(
                f"{d['kind']} {d['field']}: {d['stable']} != {d['shadow']}".replace("  ", " ")
                for d in sample.get("differences", [])
            )
            lines.append(f"  {sample.get('request')}  {sample.get('stable')} vs "
                         f"{sample.get('shadow')}  {found}")  # fmt: skip
    return lines


@click.group()
def mirror() -> None:
    """Shadow traffic: copy stable requests to an upstream and compare the answers."""


@mirror.command("set")
@click.argument("upstream", required=False)
@click.option("--when", default=None, help="A rule condition (JSON) the requests must match.")
@click.option("--method", "methods", multiple=True,
              help="A method to mirror (repeatable; default GET and HEAD).")  # fmt: skip
@click.option("--percent", type=float, default=None, help="Sample percentage (default 100).")
@click.option("--by", default=None, help="Sticky sample key: ip (default), header:NAME, "
              "cookie:NAME, query:NAME, or random.")  # fmt: skip
@click.option(
    "--max-body",
    type=int,
    default=None,
    help="Request bodies over this many bytes are not mirrored (default 65536).",
)
@click.option("--body", "body_mode", type=click.Choice(BODY_MODES), default=None,
              help="How bodies are compared (default digest).")  # fmt: skip
@click.option("--ignore", multiple=True, help="A JSON path the body diff skips, e.g. "
              "/meta/time; '*' matches any key (repeatable).")  # fmt: skip
@click.option("--compare-header", "headers", multiple=True,
              help="A response header compared (repeatable).")  # fmt: skip
@click.option("--no-status", is_flag=True, help="Do not compare the status codes.")
@click.option("--learn", type=int, default=None, help="Send the first N GET/HEAD copies of "
              "each route twice and ignore what differs between the two (default 0).")  # fmt: skip
@click.option(
    "--queue",
    type=int,
    default=None,
    help="Copies waiting per process before more are dropped (default 100).",
)
@click.option("--concurrency", type=int, default=None,
              help="Copies in flight per process (default 4).")  # fmt: skip
@click.option(
    "--document",
    type=click.File("r"),
    default=None,
    help="The whole mirror document as JSON ('-' for stdin) instead of options.",
)
@pass_context
def mirror_set(ctx: Context, upstream: str | None, when: str | None, methods: tuple[str, ...],
               percent: float | None, by: str | None, max_body: int | None,
               body_mode: str | None, ignore: tuple[str, ...], headers: tuple[str, ...],
               no_status: bool, learn: int | None, queue: int | None, concurrency: int | None,
               document: TextIO | None) -> None:  # fmt: skip
    """Mirror stable requests to UPSTREAM (a URL) and compare the answers."""
    with one_line_errors():
        if document is not None:
            spec: Any = document.read()
        else:
            if upstream is None:
                raise click.UsageError("give the UPSTREAM URL, or --document FILE")
            spec = {"upstream": upstream}
            if when is not None:
                try:
                    spec["when"] = json.loads(when)
                except ValueError as exc:
                    raise click.UsageError(f"--when is not JSON: {exc}") from None
            options = {
                "methods": list(methods) or None, "percent": percent, "by": by,
                "max_body": max_body, "queue": queue, "concurrency": concurrency,
            }  # fmt: skip
            spec.update({key: value for key, value in options.items() if value is not None})
            compare: dict[str, Any] = {}
            if body_mode is not None:
                compare["body"] = body_mode
            if ignore:
                compare["ignore"] = list(ignore)
            if headers:
                compare["headers"] = list(headers)
            if no_status:
                compare["status"] = False
            if learn is not None:
                compare["learn"] = learn
            if compare:
                spec["compare"] = compare
        _report(ctx.store.set_mirror(spec, actor=ctx.actor), "mirror set")


@mirror.command("off")
@pass_context
def mirror_off(ctx: Context) -> None:
    """Stop mirroring (every instance within a second)."""
    with one_line_errors():
        _report(ctx.store.clear_mirror(actor=ctx.actor), "mirror off")


def _document(store: Store) -> Any:
    raw = store.get_config().mirror
    return None if raw is None else json.loads(raw)


@mirror.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def mirror_status(ctx: Context, as_json: bool) -> None:
    """The mirror document in force, or that mirroring is off."""
    with one_line_errors():
        document = _document(ctx.store)
    if as_json:
        click.echo(json.dumps({"mirror": document}, indent=2))
    elif document is None:
        click.echo("mirror: off")
    else:
        click.echo(f"mirror: on -> {document['upstream']}")
        click.echo(json.dumps(document, indent=2, sort_keys=True))


@mirror.command("report")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--reset", is_flag=True, help="Start the counts and samples over (after printing).")
@pass_context
def mirror_report(ctx: Context, as_json: bool, reset: bool) -> None:
    """Copies per route (sent, dropped, errors, matches, mismatches by kind), summed over
    every instance, and the latest differences."""
    with one_line_errors():
        counts, raw = ctx.store.shadow_report()
        samples = parse_samples(raw)
        if reset:
            ctx.store.clear_shadow_report()
    if as_json:
        click.echo(json.dumps({"routes": report_rows(counts), "samples": samples}, indent=2))
    else:
        click.echo("\n".join(report_lines(counts, samples)))
