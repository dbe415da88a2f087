"""Records the outcome of every test marked ``@pytest.mark.fault(area, case, expected)``.

The fault and hostile-input suite (issue 7) is also the source of the fault table in docs/faults.md:
each marked test adds one row (area, case, expected outcome, passed or failed, and what it
measured when it says so through the ``observed`` fixture). ``python -m tests.support.fault_table``
turns the file written here into that table.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Where the results go; one JSON list of rows, rewritten at the end of each run.
RESULTS = Path(os.environ.get("CANARY_FAULT_RESULTS", ROOT / ".fault-results.json"))

_rows: dict[str, dict[str, Any]] = {}
_collected: set[str] = set()  # node ids this session collected (see below)
_files: set[str] = set()  # and their files


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault(area, case, expected): a fault/hostile-input case for docs/faults.md"
    )


@pytest.fixture
def observed(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``observed("p99 3.1 ms")``: a measured figure to show next to the case's outcome."""

    def note(text: str) -> None:
        request.node.user_properties.append(("observed", text))

    return note


def _params(item: pytest.Item) -> dict[str, str]:
    """The test's parameters that read as text (numbers, names), as strings."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    return {
        name: str(value)
        for name, value in callspec.params.items()
        if isinstance(value, (str, int, float))
    }


def case_text(template: str, params: dict[str, str]) -> str:
    """The case as the table shows it: the template filled in; parameters it does not name
    (e.g. the HTTP parser) in brackets."""
    rest = [value for name, value in params.items() if "{" + name + "}" not in template]
    return template.format(**params) + (f" [{' '.join(rest)}]" if rest else "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    marker = item.get_closest_marker("fault")
    if marker is None or report.when not in ("call", "setup"):
        return report
    if report.when == "setup" and report.passed:
        return report  # the call phase decides
    area, template, expected = marker.args
    params = _params(item)
    notes = "; ".join(str(text) for key, text in item.user_properties if key == "observed")
    _rows[item.nodeid] = {
        "area": area, "case": case_text(template, params), "expected": expected,
        "outcome": "pass" if report.passed else ("skipped" if report.skipped else "FAIL"),
        "observed": notes, "test": item.nodeid, "template": template, "params": params,
    }  # fmt: skip
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test this session collected, before -m / -k deselect any: a row of a file it
    collected whose test is not among them belongs to a test that no longer exists (or a
    parameter that changed), and leaves the table."""
    for item in items:
        _collected.add(item.nodeid)
        _files.add(item.nodeid.partition("::")[0])


def _still_exists(test: str) -> bool:
    file = test.partition("::")[0]
    if file in _files:
        return test in _collected
    return (ROOT / file).exists()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _rows:
        return
    # Read, merge, write under a lock: parallel workers (pytest -n) finish at once.
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous: dict[str, dict[str, Any]] = {}
        if RESULTS.exists():  # a partial run (-k, one file) updates its rows, keeps the rest
            try:
                previous = {row["test"]: row for row in json.loads(RESULTS.read_text())}
            except (ValueError, KeyError, TypeError):
                previous = {}
        previous = {test: row for test, row in previous.items() if _still_exists(test)}
        previous.update(_rows)
        RESULTS.write_text(json.dumps(sorted(previous.values(), key=_order), indent=1) + "\n")


def _order(row: dict[str, Any]) -> tuple[str, str]:
    return (row["area"], row["test"])
