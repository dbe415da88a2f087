"""Write the documentation's fault table (docs/faults.md) from the suite's results.

pytest                        # the fault tests write .fault-results.json
python -m tests.support.fault_table   # rewrites the table between the markers in docs/faults.md
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.support.faultlog import RESULTS, ROOT

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
#: Combinations of unnamed parameters listed in a grouped row; more are only counted.
MAX_LISTED = 6


def grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test for the variants that passed with nothing measured to show (e.g. a
    body size x transport grid): their parameter values listed, ``a / b / c``."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row["outcome"] != "pass" or row["observed"] or not row.get("params"):
            out.append(row)
            continue
        key = (row["area"], row["test"].partition("[")[0], row["template"], row["expected"])
        if key not in groups:
            groups[key] = []
            out.append({"group": key})  # keeps the place of the group's first variant
        groups[key].append(row)
    for index, row in enumerate(out):
        if "group" in row:
            variants = groups[row["group"]]
            out[index] = {**variants[0], "case": _summary(variants)}
    return out


def _summary(variants: list[dict[str, Any]]) -> str:
    """``upload 0 / 1 / 65535 B [httpx, aiohttp] (12 variants)``: the values of the
    parameters the case names, then the combinations of the others (or just how many)."""
    template = variants[0]["template"]
    named: dict[str, list[str]] = {}
    rest: list[str] = []
    for variant in variants:
        others = []
        for name, value in variant["params"].items():
            if "{" + name + "}" in template:
                if value not in named.setdefault(name, []):
                    named[name].append(value)
            else:
                others.append(value)
        if others and " ".join(others) not in rest:
            rest.append(" ".join(others))
    case = template.format(**{name: " / ".join(values) for name, values in named.items()})
    if rest and len(rest) <= MAX_LISTED:
        case += f" [{', '.join(rest)}]"
    return case + (f" ({len(variants)} variants)" if len(variants) > 1 else "")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| area | case | expected | outcome |", "|---|---|---|---|"]
    for row in grouped(rows):
        outcome = row["outcome"] + (f" ({row['observed']})" if row["observed"] else "")
        cells = (row["area"], row["case"], row["expected"], outcome)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists():
        print(f"no results at {RESULTS}: run pytest first", file=sys.stderr)
        return 1
    rows = json.loads(RESULTS.read_text())
    page = ROOT / "docs" / "faults.md"
    text = page.read_text()
    if BEGIN not in text or END not in text:
        print(f"docs/faults.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}")
    failed = sum(row["outcome"] == "FAIL" for row in rows)
    print(f"{len(rows)} cases, {failed} failed, written to {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
