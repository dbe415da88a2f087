"""The public API is ``canary_mw`` itself: every name the README, the docs and the examples
import comes from there, every name in ``__all__`` is importable, and ``import canary_mw``
needs nothing the routers do not (Starlette is only the admin app's)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import canary_mw

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").rglob("*.md")]
)
SOURCES = sorted((ROOT / "examples").rglob("*.py"))
#: ``from canary_mw.x import y`` and ``import canary_mw.x``: a path into the implementation.
DEEP_IMPORT = re.compile(r"^\s*(from\s+canary_mw\.[\w.]+\s+import\b|import\s+canary_mw\.)", re.M)


def python_of(path: Path) -> list[str]:
    """The Python a reader copies: a source file, or a page's ```python blocks."""
    if path.suffix == ".py":
        return [path.read_text()]
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)


def test_the_pages_and_examples_are_found() -> None:
    names = {path.name for path in [*PAGES, *SOURCES]}
    assert {"README.md", "configuration.md", "admin-api.md", "quickstart_fastapi.py"} <= names
    assert sum(len(python_of(path)) for path in [*PAGES, *SOURCES]) >= 10


@pytest.mark.parametrize("path", [*PAGES, *SOURCES], ids=lambda path: str(path.relative_to(ROOT)))
def test_users_import_only_from_canary_mw(path: Path) -> None:
    deep = [match.group(0).strip() for match in DEEP_IMPORT.finditer(path.read_text())]
    assert deep == [], f"import these names from canary_mw itself: {deep}"


@pytest.mark.parametrize("path", [*PAGES, *SOURCES], ids=lambda path: str(path.relative_to(ROOT)))
def test_every_name_imported_from_canary_mw_is_public(path: Path) -> None:
    for source in python_of(path):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module == "canary_mw":
                for alias in node.names:
                    assert alias.name in canary_mw.__all__, alias.name


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("from canary_mw.health import HealthCheck\n", True),
        ("    import canary_mw.admin.api\n", True),
        ("from canary_mw import HealthCheck\n", False),
        ("the canary_mw.health logger\n", False),
    ],
)
def test_the_deep_import_pattern(text: str, found: bool) -> None:
    assert bool(DEEP_IMPORT.search(text)) is found


def test_every_public_name_is_importable_and_none_is_internal() -> None:
    for name in canary_mw.__all__:
        assert getattr(canary_mw, name) is not None, name
        assert not name.startswith("_") or name == "__version__", name
    assert canary_mw.__all__ == sorted(canary_mw.__all__, key=lambda n: (not n.isupper(), n))


def test_the_names_the_docs_promise_are_public() -> None:
    promised = {
        "CanaryConfig", "EngineSettings", "HealthCheck", "Metrics", "metrics_asgi_app",
        "metrics_wsgi_app", "store_from_url", "async_store_from_url", "Store", "AsyncStore",
        "Engine", "AsyncEngine", "HTTP11Transport", "HTTP11SyncTransport", "AiohttpTransport",
        "admin_app", "openresty_rules",
    }  # fmt: skip
    assert promised <= set(canary_mw.__all__)


#: Run in a fresh interpreter where importing Starlette fails: the routers need none of it
#: (only the admin app does), and the admin app says what to install.
WITHOUT_STARLETTE = """
import sys
sys.modules["starlette"] = None  # any import of it raises ModuleNotFoundError
import canary_mw
from canary_mw.admin.cli import main
router = canary_mw.CanaryRouter(lambda *a: None, canary_url="http://canary:8000")
blocking = canary_mw.CanaryWSGI(lambda *a: [], canary_url="http://canary:8000")
try:
    canary_mw.admin_app
except ModuleNotFoundError as exc:
    print(exc)
"""


def test_canary_mw_imports_without_starlette() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_STARLETTE],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pip install 'canary-mw[admin]'" in done.stdout
