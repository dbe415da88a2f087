"""The sticky assignment cookie: once a percentage rule has placed a user, the user stays.

A sticky percentage is stable per *key* (a cookie, a header, the client address). Two things
move a user anyway: the percentage going down (a rollout holding back, an operator lowering
it), and the key changing (an anonymous visitor logging in). With ``sticky_cookie=`` set, the
first response a percentage rule decides carries a cookie naming the version it chose, and a
request that brings it back keeps that version:

- ``canary`` is kept for as long as the rule exists, whatever its percentage or the key;
- ``stable`` is kept while the percentage is no higher than when the cookie was set; once it
  rises the key decides again (or the rise would only ever reach new users) and a new cookie
  records the answer.

The cookie is bound to the rule's salt, so a new rollout (a new salt) or a deleted rule
ignores it; the kill switch and ``mode all`` are decided before any rule and override it. It
is signed (HMAC-SHA256 with ``sticky_secret``): a client cannot pick a version by writing
the cookie itself, which would make it a force cookie (``force_cookie``, off by default).

The value is ``<version>.<threshold>.<mac>``: the version named (the rule's target or
``stable``), the rule's threshold in buckets (0-10000) when it was set, and 16 bytes of
HMAC-SHA256 over the salt, the target, the verdict and the threshold, in base64url.
"""

from __future__ import annotations

import hmac
import re
from base64 import urlsafe_b64encode
from hashlib import sha256

from .errors import ConfigurationError
from .sticky import BUCKETS

__all__ = ["DEFAULT_MAX_AGE", "StickyCookie"]

#: How long a browser keeps the cookie, in seconds (one day): longer than a rollout's steps.
DEFAULT_MAX_AGE = 86_400
#: Signatures remembered (per salt, target, verdict and threshold); the map starts over when
#: full, so a client sending made-up thresholds costs one HMAC each and no memory.
_REMEMBERED = 256
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an RFC 6265 cookie-name token
_MIN_SECRET = 16


class StickyCookie:
    """The cookie's name, signing key and lifetime; reads and writes its values."""

    __slots__ = ("_header_prefix", "_key", "_signatures", "max_age", "name")

    def __init__(self, name: str, secret: str | bytes, max_age: int = DEFAULT_MAX_AGE) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"sticky_cookie must be a cookie name such as 'canary_mw_version', got {name!r}"
            )
        key = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(key, bytes) or len(key) < _MIN_SECRET:
            raise ConfigurationError(
                "sticky_cookie needs sticky_secret: a random string of at least 16 characters, "
                "the same on every instance, that signs the cookie so clients cannot choose "
                "their version; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
            raise ConfigurationError(
                f"sticky_max_age is a number of seconds >= 1 (e.g. 86400), got {max_age!r}"
            )
        self.name = name
        self.max_age = max_age
        self._key = key
        self._header_prefix = f"{name}="
        self._signatures: dict[tuple[str, str, bool, int], str] = {}

    def _value(self, salt: str, target: str, verdict: bool, threshold: int) -> str:
        found = (salt, target, verdict, threshold)
        value = self._signatures.get(found)
        if value is None:
            message = f"{salt}\0{target}\0{int(verdict)}\0{threshold}".encode()
            mac = hmac.new(self._key, message, sha256).digest()[:16]
            version = target if verdict else "stable"
            value = f"{version}.{threshold}.{urlsafe_b64encode(mac).rstrip(b'=').decode()}"
            if len(self._signatures) >= _REMEMBERED:
                self._signatures.clear()
            self._signatures[found] = value
        return value

    def pinned(self, value: str | None, salt: str, target: str, threshold: int) -> bool | None:
        """The verdict a request's cookie ``value`` pins for the rule (``salt``, ``target``,
        current ``threshold``): True (in), False (out), or None (no valid pin: decide by key).
        """
        if value is None or value.count(".") != 2:
            return None
        version, _, rest = value.partition(".")
        level = rest.partition(".")[0]
        # isascii first: str.isdigit() admits "²" and other digits int() refuses.
        digits = level.isascii() and level.isdigit() and len(level) <= 5
        if not digits or version not in (target, "stable"):
            return None
        then = int(level)
        verdict = version == target
        if then > BUCKETS or not hmac.compare_digest(
            value.encode(), self._value(salt, target, verdict, then).encode()
        ):
            return None
        if not verdict and threshold > then:
            return None  # the percentage rose since: the key decides again
        return verdict

    def set_cookie(self, salt: str, target: str, verdict: bool, threshold: int) -> bytes:
        """The Set-Cookie header value recording ``verdict`` at ``threshold``."""
        value = self._value(salt, target, verdict, threshold)
        return (
            f"{self._header_prefix}{value}; Max-Age={self.max_age}; Path=/; HttpOnly; SameSite=Lax"
        ).encode("latin-1")
