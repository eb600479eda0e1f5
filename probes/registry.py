"""The probes the CLI can run by name (``attnlab probe NAME RUN``), and what each needs captured.

``PROBES[name](trace, **options)`` returns a result with ``to_frame()`` and ``to_dict()``.
VHD compares two passes, so it lives in ``PAIR_PROBES`` as ``fn(trace, other, **options)``.
"""

from __future__ import annotations

from typing import Callable

from attnlab.core.trace import Trace

from .flow import attention_flow
from .massive import massive_activations
from .registers import high_norm_tokens
from .results import ProbeResult
from .rollout import attention_rollout
from .sinks import sink_tokens
from .vhd import head_divergence
from .visual_sinks import visual_sinks

PROBES: dict[str, Callable[..., ProbeResult]] = {
    "rollout": attention_rollout,
    "flow": attention_flow,
    "sinks": sink_tokens,
    "massive": massive_activations,
    "visual-sinks": visual_sinks,
    "registers": high_norm_tokens,
}

PAIR_PROBES: dict[str, Callable[..., ProbeResult]] = {
    "vhd": head_divergence,
}

#: Capture options each probe needs; a tuple inside lists alternatives (any one suffices).
CAPTURE_NEEDS: dict[str, tuple] = {
    "rollout": ("pattern",),
    "flow": ("pattern",),
    "sinks": (("pattern", "stats"),),
    "massive": ("resid",),
    "visual-sinks": ("resid",),  # plus "pattern" for the image-centric heads
    "registers": ("resid",),
    "vhd": ("head_out",),  # on both Traces
}


def get_probe(name: str) -> Callable[..., ProbeResult]:
    """The probe called ``name`` (single- or two-Trace); ValueError listing the names otherwise."""
    found = PROBES.get(name) or PAIR_PROBES.get(name)
    if found is None:
        raise ValueError(f"Unknown probe {name!r}; choose from {sorted(PROBES) + sorted(PAIR_PROBES)}")
    return found


def run_probe(name: str, trace: Trace, other: Trace | None = None, **options) -> ProbeResult:
    """Run probe ``name``; two-Trace probes need ``other`` (ValueError naming it when missing)."""
    fn = get_probe(name)
    if name in PAIR_PROBES:
        if other is None:
            raise ValueError(f"Probe {name!r} compares two passes; pass the second Trace as other=...")
        return fn(trace, other, **options)
    if other is not None:
        raise ValueError(f"Probe {name!r} takes one Trace; drop other=...")
    return fn(trace, **options)
