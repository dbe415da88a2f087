"""What every ``canary-mw`` command shares: the store it talks to and who acts (the
context click hands each command), and how a refused value or a failed store is reported.
A module of its own so that the command groups kept in other modules (``mirror``,
``rollout``) and ``cli.py``, which gathers them, import it without importing each other."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..errors import CanaryError
from ..stores import Change, Store, store_from_url
from . import render

__all__ = ["Context", "one_line_errors", "pass_context", "report_change"]


class Context:
    """The store URL and actor of one ``canary-mw`` invocation; the store is opened on first
    use (``canary-mw --help`` or a usage error never connects)."""

    def __init__(self, url: str, actor: str):
        self.url = url
        self.actor = actor
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            if self.url.startswith("memory://"):
                # A memory store lives inside this one process: a change made here is gone
                # when the command exits, and no running app ever sees it.
                click.echo(
                    f"warning: {self.url} is a store inside this canary-mw process only; no "
                    "running app can see it. Give the Redis URL your apps use (--store URL or "
                    "CANARY_MW_STORE).",
                    err=True,
                )
            self._store = store_from_url(self.url)
        return self._store


pass_context = click.make_pass_decorator(Context)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A value canary_mw refuses, or an unreachable store: one line on stderr, exit status 1.
    A command line click cannot parse (unknown option, missing argument, a value of the
    wrong type or not among the choices) is click's usage error instead: exit status 2."""
    try:
        yield
    except CanaryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def report_change(change: Change, what: str) -> None:
    """One line saying what a write changed (the new version, what it was)."""
    click.echo(render.change_line(change, what))
