"""Rule regular expressions, run by RE2 so that matching time is linear in the input.

Python's ``re`` backtracks: the rule ``"^(a+)+$"`` and a 28-byte header stalled a worker for
seconds, doubling with each byte. RE2 (as in Envoy and APISIX) never backtracks; the price is
that patterns needing backtracking (backreferences, lookaround) do not compile, so they are
refused when a rule is written, with a message that says why.

This is the only module that touches ``re2`` (which ships no type hints), so the rest of the
package sees one small typed class.
"""

from __future__ import annotations

from typing import Final, final

import re2  # type: ignore[import-untyped]

__all__ = ["RE2_SYNTAX_URL", "Regex", "RegexError"]

RE2_SYNTAX_URL: Final = "https://github.com/google/re2/wiki/Syntax"

_OPTIONS = re2.Options()
# RE2 writes every refused pattern to stderr through absl logging; the refusal reaches the
# operator as a RuleError instead, so the log line would only be noise (or, for documents
# read from the store, a line per router per re-read).
_OPTIONS.log_errors = False


class RegexError(ValueError):
    """The pattern is not valid RE2 syntax; the message says why and how to fix it."""


@final
class Regex:
    """A compiled rule pattern; :meth:`search` finds it anywhere in the text, like ``re.search``.

    >>> Regex("Mobile|Android").search("Mozilla/5.0 (Linux; Android 14)")
    True
    """

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            self._compiled = re2.compile(pattern, _OPTIONS)
        except re2.error as exc:
            detail = exc.args[0] if exc.args else exc
            if isinstance(detail, bytes):
                detail = detail.decode("utf-8", "replace")
            raise RegexError(
                f"invalid regular expression {pattern!r}: {detail}. Rule regexes use RE2 "
                "syntax and run in linear time, so backreferences (\\1), lookaround "
                "((?=...), (?!...), (?<=...)) and possessive quantifiers are not available, "
                f"and \\Z is written \\z; see {RE2_SYNTAX_URL}"
            ) from None

    def search(self, text: str) -> bool:
        # Matched as UTF-8 bytes: re2's str API maps every match offset back to characters,
        # which a yes/no answer does not need. "surrogatepass" because no str must make the
        # decision raise; a lone surrogate is then bytes no pattern character matches.
        return self._compiled.search(text.encode("utf-8", "surrogatepass")) is not None

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"
