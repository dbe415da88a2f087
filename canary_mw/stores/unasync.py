"""Write the blocking Store (blocking.py) from AsyncStore (store.py), so that the store's
methods are written once: ``python -m canary_mw.stores.unasync``.

The rewrite is textual and small (``async def`` → ``def``, no ``await``, the sync executor
and subscription types, ``aclose`` → ``close``), then ruff formats the result.
tests/stores/test_store_generated.py fails when blocking.py is not what this writes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["TARGET", "generate"]

SOURCE = Path(__file__).with_name("store.py")
TARGET = Path(__file__).with_name("blocking.py")

HEADER = '''"""The blocking Store. GENERATED from AsyncStore in store.py by
``python -m canary_mw.stores.unasync``: edit AsyncStore and run that, never this file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..keys import IPListRef, Probe
from ..rollout.plan import Rollout, RolloutPlan
from ..rules import RuleSet
from . import plans
from .layout import Layout, StoreState
from .plans import AuditEntry, Change, Plan, StoredConfig
from .store import (
    DEFAULT_ACTOR,
    DEFAULT_LOOKUP_TIMEOUT,
    RulesInput,
    SyncExecutor,
    SyncSubscription,
    T,
    _Plans,
    _rules_or_none,
)

__all__ = ["Store"]


'''

CLASS_DOC = '''    """Blocking access to the rule store. Build one with :func:`store_from_url`.

    Every write is atomic, bumps the version, is recorded in the audit log with ``actor``
    (default ``user@host``) and is announced to every running instance; a write that changes
    nothing does none of these (``Change.changed`` is False).

    >>> store = store_from_url("memory://")
    >>> store.add_ips("ips", ["203.0.113.7", "10.1.0.0/16"]).count
    2
    >>> store.set_mode("off").version  # the kill switch
    2
    """
'''

#: Applied in order to the AsyncStore class, docstring excluded.
REWRITES = [
    (r"\bclass AsyncStore\(", "class Store("),
    (r"\basync def ", "def "),
    (r"\bawait ", ""),
    (r"\bAsyncExecutor\b", "SyncExecutor"),
    (r"\bAsyncSubscription\b", "SyncSubscription"),
    (r"\bdef aclose\(", "def close("),
    (r"<AsyncStore ", "<Store "),
]


def _async_class(source: str) -> tuple[str, str]:
    """AsyncStore's header line and its body after the class docstring."""
    start = source.index("class AsyncStore(")
    code = source[start:]
    header, _, rest = code.partition("\n")
    doc_start = rest.index('"""')
    doc_end = rest.index('"""', doc_start + 3) + 3
    return header + "\n", rest[doc_end:].lstrip("\n")


def generate(source: str | None = None) -> str:
    """The text of blocking.py (before formatting) for the given store.py text."""
    header, body = _async_class(SOURCE.read_text() if source is None else source)
    code = header + CLASS_DOC + "\n" + body
    for pattern, replacement in REWRITES:
        code = re.sub(pattern, replacement, code)
    return HEADER + code


def main() -> None:
    TARGET.write_text(generate())
    ruff = shutil.which("ruff")
    if ruff is None:
        sys.exit(f"wrote {TARGET}; format it with ruff (not found on PATH)")
    subprocess.run([ruff, "format", str(TARGET)], check=True)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
