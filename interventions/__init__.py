"""Interventions that change what a model computes: Plans from probe results (VAR, VHR, ACT, head masks) run
inside the attention kernels, and causal checks (activation and path patching, known-circuit tracing) that run a
model under :mod:`attnlab.hooks.edits`.

Each name is imported on first use (PEP 562), so ``import attnlab.interventions`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnlab.core.exports import lazy_exports

#: public name -> module (under attnlab.interventions) that owns it
_OWNERS = {
    "mask_plan": "heads",
    "parse_heads": "heads",
    "scale_heads_plan": "heads",
    "activation_patching": "patching",
    "path_patching": "patching",
    "PatchingResult": "patching",
    "trace_circuits": "known_circuits",
}

__all__ = sorted(_OWNERS)

if TYPE_CHECKING:  # static tools and IDEs see the real objects
    from .heads import mask_plan, parse_heads, scale_heads_plan
    from .known_circuits import trace_circuits
    from .patching import PatchingResult, activation_patching, path_patching

__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
