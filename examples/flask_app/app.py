"""The classic two-version demo, with Flask: one app, run twice.

Canary:  MESSAGE="This is version 2" flask --app app:create_app run --port 8001
Stable:  CANARY_URL=http://127.0.0.1:8001 CANARY_MW_STORE=redis://127.0.0.1:6379/0 \\
         gunicorn -w 2 -b 127.0.0.1:8000 'app:create_app()'

The stable run wraps itself in CanaryWSGI, so the clients, cookies and users you put into
Redis get the canary's answer instead of its own.
"""

from __future__ import annotations

import json
import os

from flask import Flask

from canary_mw import CanaryWSGI


def create_app() -> Flask:
    message = os.environ.get("MESSAGE", "This is version 1")
    app = Flask(__name__)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def get_message(path: str) -> str:
        return message + "\n"

    canary_url = os.environ.get("CANARY_URL")
    if canary_url:  # this is the stable deployment: route some traffic to the canary
        app.wsgi_app = CanaryWSGI(  # type: ignore[method-assign]
            app.wsgi_app,
            store=os.environ.get("CANARY_MW_STORE", "redis://127.0.0.1:6379/0"),
            canary_url=canary_url,
            # Addresses of your load balancers, e.g. '["10.0.0.0/8"]': only their
            # X-Forwarded-For is believed. Empty: the socket peer is the client.
            trusted_proxies=json.loads(os.environ.get("TRUSTED_PROXIES", "[]")),
        )
    return app
