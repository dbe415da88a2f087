"""The exceptions canary_mw raises.

Everything derives from :class:`CanaryError`, so ``except CanaryError`` catches any of them.
"""

from __future__ import annotations

__all__ = ["CanaryError", "ConfigurationError", "RuleError", "StoreError", "UpstreamError"]


class CanaryError(Exception):
    """Base class of every canary_mw error."""


class ConfigurationError(CanaryError, ValueError):
    """An option or argument is invalid; the message says how to fix it."""


class RuleError(ConfigurationError):
    """A rule document is invalid.

    ``rule`` names the rule (its id, or its position when it has no usable id) and ``field``
    the path inside it, e.g. ``when.any[1].matches``.
    """

    def __init__(self, message: str, *, rule: str | None = None, field: str | None = None):
        self.rule = rule
        self.field = field
        where = []
        if rule is not None:
            where.append(f"rule {rule!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class StoreError(CanaryError):
    """The rule store (Redis) failed or could not be reached."""


class UpstreamError(CanaryError):
    """A canary upstream failed or could not be reached."""
