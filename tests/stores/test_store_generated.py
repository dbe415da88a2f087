"""The blocking Store is generated from AsyncStore (canary_mw/stores/unasync.py), so the two
cannot drift: blocking.py must be exactly what the generator writes from store.py today."""

from __future__ import annotations

import ast
import inspect

from canary_mw.stores import AsyncStore, Store
from canary_mw.stores.unasync import TARGET, generate


def test_blocking_py_is_what_asyncstore_generates() -> None:
    generated = ast.dump(ast.parse(generate()))
    on_disk = ast.dump(ast.parse(TARGET.read_text()))
    assert generated == on_disk, (
        "canary_mw/stores/blocking.py is out of date or was edited by hand: edit AsyncStore "
        "in store.py, then run python -m canary_mw.stores.unasync"
    )


def test_a_change_to_asyncstore_shows_in_the_generated_store() -> None:
    source = inspect.getsource(inspect.getmodule(AsyncStore))  # type: ignore[arg-type]
    changed = source.replace("async def members(", "async def members_renamed(", 1)
    assert "def members_renamed(" in generate(changed)
    assert ast.dump(ast.parse(generate(changed))) != ast.dump(ast.parse(TARGET.read_text()))


def public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_the_two_stores_have_the_same_methods_and_signatures() -> None:
    blocking, asynchronous = public(Store), public(AsyncStore)
    asynchronous["close"] = asynchronous.pop("aclose")
    assert blocking.keys() == asynchronous.keys()
    for name, signature in blocking.items():
        other = asynchronous[name]
        assert list(signature.parameters) == list(other.parameters), name
        defaults = [p.default for p in signature.parameters.values()]
        assert defaults == [p.default for p in other.parameters.values()], name
    assert not any(inspect.iscoroutinefunction(method) for method in vars(Store).values())
