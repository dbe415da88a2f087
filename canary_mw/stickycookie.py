"""The sticky assignment cookie: once a percentage rule has placed a user, the user stays.

A sticky percentage is stable per *key* (a cookie, a header, the client address). Two things
move a user anyway: the percentage going down (a rollout holding back, an operator lowering
it), and the key changing (an anonymous visitor logging in). With ``sticky_cookie=`` set, the
first response a percentage rule decides for a request that has the key carries a cookie
naming the version the rule chose, and a request that brings it back keeps that version:

- the rule's upstream is kept for as long as the rule exists, whatever its percentage or
  the key;
- ``stable`` is kept while the rule's share is no higher than when the cookie was set; once
  it rises the key decides again (or the rise would only ever reach new users) and a new
  cookie records the answer.

The cookie is bound to the rule's salt: a rollout's rule has its own, so another rollout
ignores it; a rule re-created with the same salt honours it again (``canary-mw percent set``
salts by the rule id unless told ``--salt``). The kill switch and ``mode all`` are decided
before any rule and override it. It is signed (HMAC-SHA256 with ``sticky_secret``), so a
client cannot pick a version by writing it (that would make it a force cookie, which is off
by default), and it expires on the server as in the browser: a copy kept or shared past
``sticky_max_age`` is refused.

The value is ``<version>.<threshold>.<expires>.<mac>``: the version named (the rule's target,
which may hold dots, or ``stable``), the rule's threshold in buckets (0-10000) when it was set,
when it expires (Unix seconds, rounded up to the minute so that one value serves a minute of
placements), and 16 bytes of HMAC-SHA256 over the salt, the target, the verdict, the threshold
and the expiry, in base64url.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable
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


def _is_number(text: str, most: int) -> bool:
    """1 to ``most`` ASCII digits (isascii first: str.isdigit() admits "²" and other digits
    that int() refuses)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


class StickyCookie:
    """The cookie's name, signing key and lifetime; reads and writes its values."""

    __slots__ = ("_clock", "_header_prefix", "_key", "_signatures", "max_age", "name")

    def __init__(
        self,
        name: str,
        secret: str | bytes,
        max_age: int = DEFAULT_MAX_AGE,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
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
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 60:
            raise ConfigurationError(
                f"sticky_max_age is a number of seconds >= 60 (e.g. 86400), got {max_age!r}"
            )
        self.name = name
        self.max_age = max_age
        self._key = key
        self._clock = clock
        self._header_prefix = f"{name}="
        self._signatures: dict[tuple[str, str, bool, int, int], str] = {}

    def _value(self, salt: str, target: str, verdict: bool, threshold: int, expires: int) -> str:
        found = (salt, target, verdict, threshold, expires)
        value = self._signatures.get(found)
        if value is None:
            message = f"{salt}\0{target}\0{int(verdict)}\0{threshold}\0{expires}".encode()
            mac = hmac.new(self._key, message, sha256).digest()[:16]
            version = target if verdict else "stable"
            signature = urlsafe_b64encode(mac).rstrip(b"=").decode()
            value = f"{version}.{threshold}.{expires}.{signature}"
            if len(self._signatures) >= _REMEMBERED:
                self._signatures.clear()
            self._signatures[found] = value
        return value

    def pinned(self, value: str | None, salt: str, target: str, share: int) -> bool | None:
        """Whether a request's cookie ``value`` keeps the user on the rule's ``target``
        (True), on stable (False), or places nobody (None: absent, forged, expired, another
        rule's, or a stable placement the rule's ``share`` in buckets has risen past)."""
        if value is None:
            return None
        parts = value.rsplit(".", 3)
        if len(parts) != 4:
            return None
        version, level, expiry, _ = parts
        if not (_is_number(level, 5) and _is_number(expiry, 12)):
            return None
        if version not in (target, "stable"):
            return None
        then, expires = int(level), int(expiry)
        verdict = version == target
        if then > BUCKETS or expires <= self._clock():
            return None
        expected = self._value(salt, target, verdict, then, expires)
        if not hmac.compare_digest(value.encode(), expected.encode()):
            return None
        if not verdict and share > then:
            return None  # the rule's share rose since: the key decides again
        return verdict

    def set_cookie(self, salt: str, target: str, verdict: bool, share: int) -> bytes:
        """The Set-Cookie header value placing a user on ``target`` (``verdict``) or stable,
        at the rule's current ``share`` in buckets."""
        expires = math.ceil((self._clock() + self.max_age) / 60) * 60
        value = self._value(salt, target, verdict, share, expires)
        return (
            f"{self._header_prefix}{value}; Max-Age={self.max_age}; Path=/; HttpOnly; SameSite=Lax"
        ).encode("latin-1")
