"""Fused attention with interventions and one-pass statistics.

``attention(q, k, v, ..., plan=..., stats=..., impl="auto")`` is the entry point; ``Plan``,
``LayerPlan``, ``Reweight`` and ``Gate`` describe interventions; ``Stats`` holds what a call emits.
"""

from .api import attention, resolve_impl
from .plan import Gate, LayerPlan, Plan, Reweight
from .stats import STAT_NAMES, Stats

__all__ = ["attention", "resolve_impl", "Gate", "LayerPlan", "Plan", "Reweight", "STAT_NAMES", "Stats"]
