"""How a rollout reads: the notification JSON, ``rollout status`` lines and its ``--json``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from ..metrics import BUCKETS
from ..outcome import STABLE
from .judge import Window, judge, quantile
from .plan import Rollout, step_of

__all__ = ["event_for", "lines_from_json", "status_json", "status_lines"]


def event_for(rollout: Rollout, action: str, actor: str) -> dict[str, Any]:
    """The notification for a transition (what ``--notify-url`` receives)."""
    return {
        "event": action, "rollout": rollout.id, "status": rollout.status,
        "upstream": rollout.plan.upstream, "step": rollout.step + 1,
        "steps": len(rollout.plan.steps), "percent": rollout.percent, "reason": rollout.reason,
        "verdict": rollout.verdict, "actor": actor, "time": time.time(),
    }  # fmt: skip


def _window_json(window: Window) -> dict[str, Any]:
    rate = window.errors / window.requests if window.requests else None
    p99 = quantile(window.buckets, BUCKETS, 0.99) if window.requests else None
    return {**window.to_json(), "error_rate": rate, "p99": p99}


def status_json(view: Mapping[str, Any]) -> dict[str, Any]:
    rollout: Rollout | None = view["rollout"]
    windows: Mapping[str, Window] = view.get("windows", {})
    return {
        "rollout": None if rollout is None else rollout.to_json(),
        "windows": {target: _window_json(window) for target, window in windows.items()},
        "baseline": view.get("baseline", "step"),
    }


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _verdict_line(verdict: Mapping[str, Any]) -> str:
    parts = []
    metrics = verdict.get("metrics", {})
    errors, latency = metrics.get("errors"), metrics.get("latency")
    if errors:
        parts.append(f"errors {errors['result']}: {errors['increase'] * 100:+.2f} points "
                     f"(z {errors['z']:.1f})")  # fmt: skip
    if latency:
        parts.append(f"latency {latency['result']}: p99 ratio {latency['p99_ratio']:.2f}, "
                     f"P(canary slower) {latency['p_canary_slower']:.2f}")  # fmt: skip
    sample = metrics.get("sample")
    if sample:
        parts.append(
            f"waiting for {sample['min_requests']} requests a side (canary "
            f"{sample['canary_requests']}, stable {sample['stable_requests']})"
        )
    return f"last verdict: {verdict.get('outcome')} ({'; '.join(parts)})"


def status_lines(view: Mapping[str, Any], now: float | None = None) -> list[str]:
    rollout: Rollout | None = view["rollout"]
    if rollout is None:
        return ["no rollout has been started"]
    now = time.time() if now is None else now
    plan = rollout.plan
    lines = [
        f"rollout {rollout.id}  {rollout.status}  step {step_of(plan.steps, rollout.step)}  "
        f"{plan.upstream} by {plan.by}  steps {','.join(f'{s:g}' for s in plan.steps)}"
    ]
    if rollout.status == "scheduled":
        lines.append(f"starts in {_duration(rollout.start_at - now)}")
    elif rollout.status in ("running", "waiting"):
        lines.append(
            f"held {_duration(now - rollout.step_started)} of "
            f"{_duration(rollout.hold_until - rollout.step_started)}"
            + (f" (held again {rollout.extensions}x)" if rollout.extensions else "")
        )
    if rollout.reason:
        lines.append(f"reason: {rollout.reason}")
    windows: Mapping[str, Window] = view.get("windows", {})
    if windows:
        lines.append(f"{'':10}{'requests':>10}{'errors':>8}{'error rate':>12}{'p99':>10}")
        for target in (plan.upstream, STABLE):
            window = windows.get(target)
            if window is None:
                continue
            data = _window_json(window)
            rate = "-" if data["error_rate"] is None else f"{data['error_rate'] * 100:.2f}%"
            p99 = "-" if data["p99"] is None else f"{data['p99'] * 1000:.0f} ms"
            name = (
                f"{target}*" if target == STABLE and view.get("baseline") == "rollout" else target
            )
            lines.append(f"{name:10}{window.requests:>10}{window.errors:>8}{rate:>12}{p99:>10}")
        if view.get("baseline") == "rollout":
            lines.append("* since the rollout began: in this step stable served too few")
    canary, stable = windows.get(plan.upstream), windows.get(STABLE)
    if rollout.status in ("running", "waiting") and canary is not None and stable is not None:
        # What the judge would say of the step so far (the controller acts on the same).
        now_verdict = judge(canary, stable, plan.thresholds).to_json()
        lines.append(_verdict_line(now_verdict).replace("last verdict:", "so far:", 1))
    if rollout.verdict:
        lines.append(_verdict_line(rollout.verdict))
    return lines


def lines_from_json(data: Mapping[str, Any], now: float | None = None) -> list[str]:
    """``status_lines`` for a ``status_json`` view (what ``canary-mw status`` keeps)."""
    record = data.get("rollout")
    if record is None:
        return []
    windows = {
        target: Window(int(w["requests"]), int(w["errors"]), tuple(w["buckets"]))
        for target, w in data.get("windows", {}).items()
    }
    rollout = Rollout.loads(json.dumps(record))
    view = {"rollout": rollout, "windows": windows, "baseline": data.get("baseline", "step")}
    return status_lines(view, now)
