"""What CanaryRouter (ASGI) and CanaryWSGI do alike when they are made: take the options
whole into one CanaryConfig, compose the parts for their side, and keep, as attributes, what
the request path reads (each attribute read there is paid per request)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import CanaryConfig, Side, compose

__all__ = ["Router"]


class Router:
    """The part of a router that is the same on both sides (not used on its own)."""

    def __init__(
        self, app: Any, config: CanaryConfig | None, options: Mapping[str, Any], side: Side
    ):
        self.app = app
        #: Every option, validated (the keyword options are CanaryConfig's fields).
        self.config = config = CanaryConfig.from_options(config, options)
        self._parts = parts = compose(config, side)
        self.store: Any = parts.store
        self.engine: Any = parts.engine
        self.metrics = parts.metrics
        self._forwarder: Any = parts.forwarder
        self._checker: Any = parts.checker
        self._resolver = config.resolver
        self._record = parts.record
        self._ejected = parts.ejected
        self._targets = parts.targets
        #: The mirror document in force (shadow traffic), None while mirroring is off: the
        #: only thing a request reads of mirroring when it is off.
        self._mirror: Any = None
        parts.engine.builder.mirror_watchers.append(self._mirror_changed)

    def _mirror_changed(self, mirror: Any) -> None:
        self._mirror = mirror
