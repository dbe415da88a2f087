"""A plain WSGI stable app wrapped in CanaryWSGI, configured from CANARY_TEST_OPTIONS (JSON,
``limits`` as httpx.Limits keywords), for the real-server tests of tests/routing/test_wsgi_edges.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, MutableMapping
from typing import Any

import httpx

from canary_mw import CanaryWSGI


def stable(environ: MutableMapping[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [b"stable\n"]


def make_app() -> Any:
    options = json.loads(os.environ["CANARY_TEST_OPTIONS"])
    if "limits" in options:
        options["limits"] = httpx.Limits(**options["limits"])
    return CanaryWSGI(stable, **options)
