"""The admin API's rollout endpoints (docs/admin-api.md, docs/rollouts.md): ``GET /rollout``,
``POST /rollout`` (start), ``POST /rollout/{command}`` (pause, resume, abort, promote).
They run inside AdminAPI's envelope (token, JSON body, errors as 422 / 503)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ConfigurationError
from ..rollout.judge import Thresholds
from ..rollout.plan import RolloutPlan, parse_duration, parse_fraction
from ..rollout.render import status_json
from ..rollout.runner import notify

__all__ = ["COMMANDS", "START_FIELDS", "rollout_routes"]

COMMANDS = ("pause", "resume", "abort", "promote")
START_FIELDS = (
    "upstream", "by", "steps", "hold", "max_error_rate_increase", "max_p99_ratio",
    "min_requests", "on_success", "confirm_url", "notify_url", "at", "interval", "latency_slack",
)  # fmt: skip


def plan_from_body(body: Mapping[str, Any]) -> tuple[RolloutPlan, float | None]:
    """The plan a ``POST /rollout`` body asks for, and its start time (epoch seconds)."""
    unknown = sorted(set(body) - set(START_FIELDS))
    if unknown:
        raise ConfigurationError(f"unexpected field(s) {unknown}; allowed: {list(START_FIELDS)}")
    limits: dict[str, Any] = {}
    if "max_error_rate_increase" in body:
        limits["max_error_rate_increase"] = parse_fraction(
            body["max_error_rate_increase"], "max_error_rate_increase"
        )
    for name in ("max_p99_ratio", "min_requests"):
        if name in body:
            limits[name] = body[name]
    if "latency_slack" in body:
        slack = body["latency_slack"]
        limits["latency_slack"] = parse_duration(slack, "latency_slack", allow_zero=True)
    options = {name: body[name] for name in START_FIELDS[:4] if name in body}
    options |= {name: body[name] for name in START_FIELDS[7:10] if name in body}
    options |= {name: body[name] for name in ("interval",) if name in body}
    if "steps" in options and not isinstance(options["steps"], list):
        raise ConfigurationError("steps must be a list of percentages, e.g. [1, 5, 25, 50, 100]")
    if "steps" in options:
        options["steps"] = tuple(options["steps"])
    try:
        plan = RolloutPlan(thresholds=Thresholds(**limits), **options)
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from None
    at = body.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
        raise ConfigurationError("at must be a time in seconds since the epoch")
    return plan, None if at is None else float(at)


def rollout_routes(api: Any) -> list[Route]:
    """The routes, bound to an AdminAPI (its store, envelope and thread pool)."""

    async def view(action: str | None = None) -> Response:
        data = status_json(await api.call(api.store.rollout_status))
        if action is not None:  # what a write did, like every other write's answer
            version = (await api.call(api.store.get_config)).version
            data = {"changed": True, "action": action, "version": version, **data}
        return JSONResponse(data)

    async def get(request: Request, p: dict[str, Any]) -> Response:
        return await view()

    async def start(request: Request, p: dict[str, Any]) -> Response:
        plan, at = plan_from_body(p["body"])
        started = await api.call(api.store.start_rollout, plan, at=at, actor=p["actor"])
        action = "rollout start" if started.step >= 0 else "rollout schedule"
        await api.call(notify, started, action, p["actor"])
        return await view(action)

    async def command(request: Request, p: dict[str, Any]) -> Response:
        name = request.path_params["command"]
        if name not in COMMANDS:
            return JSONResponse({"detail": f"use one of /rollout/{{{','.join(COMMANDS)}}}"},
                                status_code=404)  # fmt: skip
        after = await api.call(api.store.rollout_command, name, actor=p["actor"])
        await api.call(notify, after, f"rollout {name}", p["actor"])
        return await view(f"rollout {name}")

    e = api.endpoint
    return [
        Route("/rollout", e(get), methods=["GET"]),
        Route("/rollout", e(start, body=True), methods=["POST"]),
        Route("/rollout/{command}", e(command), methods=["POST"]),
    ]
