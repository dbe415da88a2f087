"""A Flask stable app wrapped in CanaryWSGI, configured from CANARY_TEST_OPTIONS (JSON), for
the WSGI servers the tests run (gunicorn, waitress, Flask's development server)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from flask import Flask, request

from canary_mw import DECISION_ENVIRON_KEY, CanaryWSGI
from canary_mw.health import HealthCheck


def with_worker_pid(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Outermost layer: every response says which worker process handled it."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return app(environ, start)

    return wrapped


def make_app() -> Any:
    options = json.loads(os.environ["CANARY_TEST_OPTIONS"])
    if "health" in options:
        options["health"] = HealthCheck(**options["health"])
    if "limits" in options:
        options["limits"] = httpx.Limits(**options["limits"])
    flask_app = Flask(__name__)

    @flask_app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE"])
    @flask_app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
    def page(path: str) -> tuple[str, int, dict[str, str]]:
        decision = request.environ.get(DECISION_ENVIRON_KEY)
        size = len(request.get_data())
        label = f"{decision.reason}:{decision.rule_id}" if decision else "none"
        return "This is version 1\n", 200, {"X-Decision": label, "X-Body-Size": str(size)}

    flask_app.wsgi_app = CanaryWSGI(flask_app.wsgi_app, **options)  # type: ignore[method-assign]
    flask_app.wsgi_app = with_worker_pid(flask_app.wsgi_app)  # type: ignore[method-assign]
    return flask_app


def run_dev_server() -> None:
    """Flask's development server, threaded, on $PORT."""
    app = make_app()
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)


if __name__ == "__main__":
    run_dev_server()
