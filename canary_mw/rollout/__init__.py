"""Rollouts that drive themselves: telemetry windows, the judge, the lease-holding controller
(docs/rollouts.md)."""

from __future__ import annotations

from .judge import Thresholds, Verdict, Window, judge
from .plan import Rollout, RolloutPlan

__all__ = ["Rollout", "RolloutPlan", "Thresholds", "Verdict", "Window", "judge"]
