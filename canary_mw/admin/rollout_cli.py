"""``canary-mw rollout ...``: start a rollout, watch it, pause / resume / abort / promote it,
or run the controller standalone (docs/rollouts.md). The group is added to ``canary-mw`` by
cli.py; the store and the actor come from its context object."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click

from ..errors import CanaryError, ConfigurationError
from ..rollout.judge import Thresholds
from ..rollout.plan import ON_SUCCESS, RolloutPlan, parse_duration, parse_fraction
from ..rollout.render import status_json, status_lines

__all__ = ["rollout"]


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except CanaryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def parse_time(value: str, now: float | None = None) -> float:
    """``--at``: ISO 8601 (``2026-12-02T03:00:00Z``; no zone is UTC), or ``+10m`` from now."""
    now = time.time() if now is None else now
    relative = re.fullmatch(r"\+\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?", value.strip())
    if relative:
        factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[relative.group(2)]
        return now + float(relative.group(1)) * factor
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"--at must be an ISO time like 2026-12-02T03:00:00Z or +10m; got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _steps(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part.rstrip("%")) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigurationError(
            f"--steps must be percentages like 1,5,25,50,100; got {value!r}"
        ) from None


@click.group()
def rollout() -> None:
    """Rollouts that drive themselves: timed steps, judged against stable, rolled back on
    their own (docs/rollouts.md)."""


@rollout.command("start")
@click.option("--upstream", default="canary", show_default=True, help="The canary upstream.")
@click.option("--by", default="ip", show_default=True,
              help="Who is sticky: ip, cookie:NAME, header:NAME or query:NAME.")  # fmt: skip
@click.option("--steps", default="1,5,25,50,100", show_default=True,
              help="Percentages, rising, comma-separated.")  # fmt: skip
@click.option("--hold", default="10m", show_default=True, help="How long each step lasts.")
@click.option("--max-error-rate-increase", default="0.5%", show_default=True,
              help="Allowed excess of the canary's error rate over stable's.")  # fmt: skip
@click.option("--max-p99-ratio", default=1.3, show_default=True, type=float,
              help="Allowed canary p99 / stable p99.")  # fmt: skip
@click.option("--latency-slack", default="25ms", show_default=True,
              help="p99 increase never judged a failure, whatever the ratio.")  # fmt: skip
@click.option("--min-requests", default=200, show_default=True, type=int,
              help="Requests each side needs before a step is judged.")  # fmt: skip
@click.option("--on-success", type=click.Choice(ON_SUCCESS), default="promote",
              show_default=True,
              help="After the last step: promote (mode all) or hold.")  # fmt: skip
@click.option("--confirm-url", default=None, help="Next step only once this answers 2xx.")
@click.option("--notify-url", default=None, help="Every transition is POSTed here (JSON).")
@click.option("--at", "at", default=None, help="Start later: ISO time or +10m.")
@click.option("--interval", default="5s", show_default=True,
              help="Telemetry window (each instance writes once per interval).")  # fmt: skip
@click.pass_obj
def rollout_start(ctx: Any, upstream: str, by: str, steps: str, hold: str,
                  max_error_rate_increase: str, max_p99_ratio: float, latency_slack: str,
                  min_requests: int,
                  on_success: str, confirm_url: str | None, notify_url: str | None,
                  at: str | None, interval: str) -> None:  # fmt: skip
    """Start a rollout: the first step at once (or --at), then one step per --hold."""
    # The runner (and the agent, for run) only in the commands that notify or drive: the
    # other commands, and every other canary-mw command, do not import them.
    from ..rollout.runner import notify  # noqa: PLC0415

    with _one_line_errors():
        thresholds = Thresholds(
            max_error_rate_increase=parse_fraction(
                max_error_rate_increase, "--max-error-rate-increase"
            ),
            max_p99_ratio=max_p99_ratio, min_requests=min_requests,
            latency_slack=parse_duration(latency_slack, "--latency-slack", allow_zero=True),
        )  # fmt: skip
        plan = RolloutPlan(
            upstream=upstream, by=by, steps=_steps(steps), thresholds=thresholds,
            hold=hold,  # type: ignore[arg-type]
            on_success=on_success, confirm_url=confirm_url, notify_url=notify_url,
            interval=interval,  # type: ignore[arg-type]
        )  # fmt: skip
        started = ctx.store.start_rollout(
            plan, at=None if at is None else parse_time(at), actor=ctx.actor
        )
        notify(started, "rollout start" if started.step >= 0 else "rollout schedule", ctx.actor)
    click.echo("\n".join(status_lines(ctx.store.rollout_status())))


@rollout.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def rollout_status(ctx: Any, as_json: bool) -> None:
    """The rollout, its step, and canary vs stable for the step."""
    with _one_line_errors():
        view = ctx.store.rollout_status()
    if as_json:
        click.echo(json.dumps(status_json(view), indent=2))
    else:
        click.echo("\n".join(status_lines(view)))


def _command(name: str, summary: str) -> click.Command:
    @click.pass_obj
    def run(ctx: Any) -> None:
        from ..rollout.runner import notify  # noqa: PLC0415 - see rollout_start

        with _one_line_errors():
            after = ctx.store.rollout_command(name, actor=ctx.actor)
            notify(after, f"rollout {name}", ctx.actor)
        click.echo("\n".join(status_lines(ctx.store.rollout_status())))

    return click.Command(name, callback=run, help=summary)


rollout.add_command(_command("pause", "Stop moving on (the percentage stays)."))
rollout.add_command(_command("resume", "Move on again; the current step's hold starts over."))
rollout.add_command(_command("abort", "Stop, and restore the mode and rule of before."))
rollout.add_command(_command("promote", "Finish now: everyone to the canary (mode all)."))


@rollout.command("run")
@click.option("--holder", default=None, help="This controller's name in the lease.")
@click.pass_obj
def rollout_run(ctx: Any, holder: str | None) -> None:
    """Run the controller in the foreground (instead of inside the routers); Ctrl-C stops."""
    from ..rollout.controller import RolloutAgent  # noqa: PLC0415 - only this command drives
    from ..rollout.runner import ThreadRolloutRunner  # noqa: PLC0415

    agent = RolloutAgent(ctx.store.layout, holder=holder, actor=ctx.actor)
    runner = ThreadRolloutRunner(ctx.store, agent)
    # Ctrl-C and SIGTERM end the loop after the tick in progress, never in the middle of it:
    # a KeyboardInterrupt raised inside a Redis call or a lease write could leave the
    # process stuck in cleanup (a CI run waited over 10 s for it to exit).
    stopping = {sig: signal.signal(sig, lambda *_: runner.request_stop())
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    click.echo(f"driving rollouts in {ctx.url} as {agent.holder} (Ctrl-C stops)")
    try:
        runner.run()
    finally:
        for sig, previous in stopping.items():
            signal.signal(sig, previous)
