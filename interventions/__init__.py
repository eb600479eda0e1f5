"""Interventions that change where a model looks: functions from probe results to Plans."""

from .heads import mask_plan, parse_heads, scale_heads_plan

__all__ = ["mask_plan", "parse_heads", "scale_heads_plan"]
