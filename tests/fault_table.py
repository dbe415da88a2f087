"""Write the README's fault table from the suite's results.

pytest -m fault            # or the whole suite; writes .fault-results.json
python -m tests.fault_table   # rewrites the table between the markers in README.md
"""

from __future__ import annotations

import json
import sys

from tests.faultlog import RESULTS, ROOT

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| area | case | expected | outcome |", "|---|---|---|---|"]
    for row in rows:
        outcome = row["outcome"] + (f" ({row['observed']})" if row["observed"] else "")
        cells = (row["area"], row["case"], row["expected"], outcome)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists():
        print(f"no results at {RESULTS}: run pytest first", file=sys.stderr)
        return 1
    rows = json.loads(RESULTS.read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}")
    failed = sum(row["outcome"] == "FAIL" for row in rows)
    print(f"{len(rows)} cases, {failed} failed, written to {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
