"""What the forwarding invariant tests generate and how they judge one client's outcome.

An example is a list of waves; the clients of one wave send at once, the waves one after
another. Each client is a distinct user with a unique request id, a method, a body (framed
by length or chunked, streamed in parts) and the script the upstream answers it with.
The invariant, per client: an error, or exactly the response the upstream produced for
that client's id (status, the id in ``x-req-id``, the body). Per upstream: every request it
parses carries one id that was sent, with that client's request line, user and body
(see tests/support/scripted_upstream.py, which records the violations it sees).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, example, settings
from hypothesis import strategies as st

from tests.support.scripted_upstream import Produced, Script, ScriptedUpstream, Sent, render

__all__ = [
    "KNOWN",
    "Client",
    "Outcome",
    "case",
    "judge",
    "known_examples",
    "register",
    "scripts",
    "settings_for",
    "verdict",
    "waves",
]

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")
T = TypeVar("T")
QUIET = 5.0  # seconds the upstream gets to finish reading what was sent
_ids = itertools.count()


def settings_for(max_examples: int) -> settings:
    """CI settings: derandomized (the same examples every run, so a strict xfail cannot
    pass by luck), no example database (nothing carried between runs), no deadline (one
    example waits on sockets), no "explain" phase (it reruns a failure many more times).
    HYPOTHESIS_EXAMPLES_SCALE=10 runs ten times as many examples, for a local hunt."""
    scale = float(os.environ.get("HYPOTHESIS_EXAMPLES_SCALE", "1"))
    return settings(
        max_examples=max(1, int(max_examples * scale)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def request_body(rid: str, size: int) -> bytes:
    """A body only this client could send: its id, repeated."""
    unit = f"<{rid}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


@dataclass(frozen=True)
class Client:
    rid: str
    method: str
    body_size: int
    chunked: bool  # the request body is sent chunked, else with Content-Length
    parts: int  # pieces the body is streamed in
    pause: float  # seconds between pieces, and after the last (the upstream may answer meanwhile)
    script: Script
    abandon: int | None = None  # the client leaves once it has read this many body bytes

    @property
    def user(self) -> str:
        return f"user-{self.rid}"

    @property
    def body(self) -> bytes:
        return request_body(self.rid, self.body_size)

    @property
    def sent(self) -> Sent:
        return Sent(self.method, self.user, self.body)

    @property
    def produced(self) -> Produced:
        return render(self.script, self.rid, self.method).produced

    def __repr__(self) -> str:
        body = f"{self.body_size}B {'chunked' if self.chunked else 'length'} in {self.parts}"
        return (
            f"Client({self.rid} {self.method}, {body}{f' paused {self.pause}s' if self.pause else ''}, "
            f"{self.script!r}{'' if self.abandon is None else f', leaves after {self.abandon}B'})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))

    def pieces(self) -> list[bytes]:
        body = self.body
        step = max(1, -(-len(body) // self.parts))
        return [body[i : i + step] for i in range(0, len(body), step)]


@dataclass(frozen=True)
class Outcome:
    """What one client got: ``error`` (the exception's name and text) or a response."""

    error: str | None = None
    status: int = 0
    ids: tuple[bytes, ...] = ()
    body: bytes = b""
    abandoned: bool = False  # the client left before the end of the body


def judge(client: Client, outcome: Outcome, *, error_statuses: tuple[int, ...] = ()) -> str | None:
    """None when the outcome is allowed, else what is wrong with it. ``error_statuses``: the
    statuses a router answers with itself (without the upstream's id) when forwarding fails."""
    if outcome.error is not None:
        return None
    if outcome.status in error_statuses and not outcome.ids:
        return None
    produced = client.produced
    own = (client.rid.encode(),)
    got = f"{outcome.status} {outcome.ids} {outcome.body[:60]!r} ({len(outcome.body)} bytes)"
    if outcome.ids != own:
        return f"{client.rid} received a response for {outcome.ids}: {got}"
    if outcome.abandoned:  # what it read before leaving must be the start of its own body
        if produced.body is not None and not produced.body.startswith(outcome.body):
            return f"{client.rid} read {got} before leaving, not the start of its own body"
        return None
    if produced.body is None:
        return f"{client.rid} received a response the upstream never completed: {got}"
    if outcome.status != produced.status or outcome.body != produced.body:
        return (
            f"{client.rid} received {got}; the upstream produced {produced.status} "
            f"{produced.body[:60]!r} ({len(produced.body)} bytes)"
        )
    return None


def verdict(
    upstream: ScriptedUpstream,
    results: list[tuple[Client, Outcome]],
    since: int,
    *,
    error_statuses: tuple[int, ...] = (),
) -> None:
    """Assert the invariant for one example: every client's outcome, then what the upstream saw
    (after it has read whatever is still on its way)."""
    assert upstream.wait_quiet(QUIET), "the upstream was still busy with a request"
    wrong = [
        problem
        for client, outcome in results
        if (problem := judge(client, outcome, error_statuses=error_statuses))
    ]
    problems = wrong + [f"upstream saw: {text}" for text in upstream.violations[since:]]
    assert not problems, "\n".join(problems)


def register(upstream: ScriptedUpstream, plan: list[list[Client]]) -> int:
    for wave in plan:
        for client in wave:
            upstream.expect(client.rid, client.sent, client.script)
    return len(upstream.violations)


# -- strategies ------------------------------------------------------------------------------
QUIRKS = (
    "early", "extra", "misdeclare", "interim", "interim_body", "close", "hang_up", "cut", "drip",
    "chunk_edges", "trailers", "eof", "http10", "no_body_status", "body_anyway", "status",
)  # fmt: skip


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """Mostly well-behaved answers with up to three quirks each, so connections are reused
    between the odd ones."""
    quirks = draw(st.lists(st.sampled_from(QUIRKS), max_size=3, unique=True))
    values: dict[str, object] = {
        "body_size": draw(st.sampled_from([0, 1, 5, 16, 100, 3000, 70_000])),
        "framing": draw(st.sampled_from(["length", "length", "chunked"])),
    }
    if "status" in quirks:
        values["status"] = draw(st.sampled_from([201, 404, 500, 502]))
    if "no_body_status" in quirks:
        values["status"] = draw(st.sampled_from([204, 304]))
    if "body_anyway" in quirks:
        values["body_anyway"] = True
    if "early" in quirks:
        values["early"] = draw(st.sampled_from([0, 0, 1, 100, 70_000]))
    if "extra" in quirks:
        values["extra"] = draw(st.sampled_from(["junk", "forged"]))
    if "misdeclare" in quirks:
        values["framing"] = "length"
        values["misdeclare"] = draw(st.sampled_from([-30, -1, 1, 7]))
    if "interim" in quirks:
        values["interim"] = tuple(
            draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2, min_size=1))
        )
    if "interim_body" in quirks:  # llhttp reads a framed body for 104-199, not 100-103
        values["interim"] = (draw(st.sampled_from([100, 103, 150, 199])),)
        values["interim_body"] = draw(st.sampled_from(["chunked", "length"]))
    if "close" in quirks:
        values["close"] = True
    if "hang_up" in quirks:
        values["hang_up"] = True
    if "cut" in quirks:
        values["cut"] = draw(st.integers(0, 5000))
    if "drip" in quirks:
        values["drip"] = draw(st.sampled_from([1, 7, 100]))
    if "chunk_edges" in quirks:
        values["framing"] = "chunked"
        values["chunks"] = tuple(draw(st.lists(st.integers(1, 20), max_size=4)))
        values["chunk_style"] = draw(st.sampled_from(["upper", "zeros", "ext"]))
    if "trailers" in quirks:
        values["framing"] = "chunked"
        values["trailers"] = ((b"x-trailer", b"t"), (b"x-checksum", b"0"))
    if "eof" in quirks:
        values["framing"] = "eof"
    if "http10" in quirks:
        values["version"] = "1.0"
    return Script(**values)  # type: ignore[arg-type]


@st.composite
def clients(draw: st.DrawFn) -> Client:
    method = draw(st.sampled_from(METHODS))
    size = 0
    if method not in ("GET", "HEAD"):
        size = draw(st.sampled_from([0, 1, 10, 1000, 20_000, 200_000]))
    return Client(
        rid=f"q{next(_ids)}",
        method=method,
        body_size=size,
        chunked=draw(st.booleans()),
        parts=draw(st.integers(1, 6)),
        pause=draw(st.sampled_from([0.0, 0.0, 0.001, 0.001, 0.02])),
        script=draw(scripts()),
        abandon=draw(st.sampled_from([None, None, None, None, 0, 1, 50, 5000])),
    )


def waves(max_wave: int = 3, max_waves: int = 4) -> st.SearchStrategy[list[list[Client]]]:
    """Clients in waves: each wave at once, the waves in turn (so connections get reused)."""
    return st.lists(
        st.lists(clients(), min_size=1, max_size=max_wave), min_size=1, max_size=max_waves
    )


# -- the findings, as explicit examples (run first, every time, by every property test) ---------
def case(rid: str, method: str = "GET", size: int = 0, **options: object) -> Client:
    """A client written by hand: ``options`` are the body's (chunked, parts, pause) and the
    script's."""
    chunked = bool(options.pop("chunked", False))
    parts = int(options.pop("parts", 1))  # type: ignore[call-overload]
    pause = float(options.pop("pause", 0.0))  # type: ignore[arg-type]
    return Client(rid, method, size, chunked, parts, pause, Script(**options))  # type: ignore[arg-type]


#: httpx.HTTPTransport: the bytes after A's response (a whole forged one) became B's response.
FORGED_AFTER_A_RESPONSE = [
    [case("ex-forged-a", body_size=0, extra="forged")],
    [case("ex-forged-b", body_size=0)],
]
#: HTTP11Transport before 1626415: the upstream answered A after its head; the rest of A's
#: body was never sent but the connection was reused, so B's request became A's body.
EARLY_ANSWER_DESYNC = [
    [case("ex-early-a", "POST", 10, parts=2, pause=0.02, body_size=0, early=0)],
    [case("ex-early-b")],
]
#: HTTP11Transport under uvloop: the upstream answered and closed while a chunked body was
#: still streaming; the last write went to a closed transport (RuntimeError, a 500). Fixed
#: in 66f0b59.
CLOSED_MID_UPLOAD = [
    [case("ex-closed-a", "POST", 10, chunked=True, pause=0.02, early=0, version="1.0")],
]
KNOWN = (FORGED_AFTER_A_RESPONSE, EARLY_ANSWER_DESYNC, CLOSED_MID_UPLOAD)


def known_examples(test: T) -> T:
    """Run each finding's minimal example first: a strict xfail then fails the same way
    on every run, and a fix is proven on the case that showed the bug."""
    for plan in reversed(KNOWN):
        test = example(plan=plan)(test)
    return test
