"""Rollouts that drive themselves: telemetry windows, the judge, the lease-holding controller
(docs/rollouts.md)."""

from __future__ import annotations

from .judge import Thresholds, Verdict, Window, judge

__all__ = ["Thresholds", "Verdict", "Window", "judge"]
