"""The wsgi.input stable gets after a CanaryWSGI fallback: the chunk read before connecting,
then the server's input, through each way PEP 3333 lets an app read it."""

from __future__ import annotations

import io

import pytest

from canary_mw.forward.wsgi_http import _Replayed

CASES = {
    "lines-split-across": (b"ab\ncd", b"ef\ngh\n"),
    "no-newline-held": (b"abc", b"def\nxyz"),
    "all-held": (b"one\ntwo\n", b""),
    "nothing-held": (b"", b"q\nr"),
}


@pytest.mark.parametrize(("held", "rest"), CASES.values(), ids=CASES.keys())
def test_every_way_of_reading_gives_the_whole_body(held: bytes, rest: bytes) -> None:
    whole = held + rest
    assert _Replayed(held, io.BytesIO(rest)).read() == whole
    assert _Replayed(held, io.BytesIO(rest)).read(None) == whole
    assert list(_Replayed(held, io.BytesIO(rest))) == io.BytesIO(whole).readlines()
    assert _Replayed(held, io.BytesIO(rest)).readlines() == io.BytesIO(whole).readlines()
    for size in (1, 2, 4, 64):
        replayed, pieces = _Replayed(held, io.BytesIO(rest)), []
        while piece := replayed.read(size):
            assert len(piece) <= size
            pieces.append(piece)
        assert b"".join(pieces) == whole
        replayed, expected = _Replayed(held, io.BytesIO(rest)), io.BytesIO(whole)
        while line := replayed.readline(size):
            assert line == expected.readline(size)
        assert expected.read() == b""
