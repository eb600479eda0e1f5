"""Every probe by name, with what it needs captured: the one list the CLI, ``capture --for`` and the dashboard ask.

``PROBES[name](trace, **options)`` runs a probe the generic ``attnlab probe NAME RUN`` command serves and returns a
result with ``to_frame()``, ``to_dict()`` and ``save(run)``. VHD compares two passes, so it lives in
``PAIR_PROBES`` as ``fn(trace, other, **options)``. The QK embedding and the circuit graph take options (and the
circuit graph the model's weights) that their own commands (``probe qk-embed``, ``probe circuits``) collect.
:data:`REGISTRY` holds them all; :func:`capture_for` and :func:`runnable` answer what to capture for a set of
probes and which probes a Run's captured fields allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from attnlab.core.trace import Trace

from .circuits import circuit_graph
from .flow import attention_flow
from .head_scores import induction_scores, previous_token_scores
from .massive import massive_activations
from .qk_heads import embed_all_heads
from .registers import high_norm_tokens
from .results import ProbeResult
from .rollout import attention_rollout
from .sinks import sink_tokens
from .vhd import head_divergence
from .visual_sinks import visual_sinks


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: how it is called and what it reads.

    Attributes:
        name: its CLI name (``attnlab probe NAME``).
        fn: the function.
        needs: the Capture options it reads; a tuple inside lists alternatives (any one suffices).
        traces: 1, or 2 for a probe that compares two passes of the same prompt (VHD: with and without the image).
        model: it also reads the model's weights (the circuit graph).
        generic: ``attnlab probe NAME RUN`` runs it with its defaults; otherwise a command of its own collects its
            options.
        summary: one line for listings.
        square: it reads self-attention maps (queries and keys one sequence), so cross-attention Traces are refused.
    """

    name: str
    fn: Callable[..., ProbeResult]
    needs: tuple
    traces: int = 1
    model: bool = False
    generic: bool = True
    summary: str = ""
    square: bool = False

    def missing(self, captured: Iterable[str]) -> list[str]:
        """The needs ``captured`` does not meet (``"pattern|stats"`` for an unmet alternative)."""
        have = set(captured)
        return ["|".join(n) if isinstance(n, tuple) else n for n in self.needs
                if not (have & set(n) if isinstance(n, tuple) else n in have)]


REGISTRY: dict[str, ProbeSpec] = {spec.name: spec for spec in (
    ProbeSpec("rollout", attention_rollout, ("pattern",), summary="attention rollout (Abnar & Zuidema 2020)",
              square=True),
    ProbeSpec("flow", attention_flow, ("pattern",), summary="attention flow as max-flow (Abnar & Zuidema 2020)",
              square=True),
    ProbeSpec("sinks", sink_tokens, (("pattern", "stats"),), summary="attention sink tokens (Xiao et al. 2024)"),
    ProbeSpec("massive", massive_activations, ("resid",), summary="massive activations (Sun et al. 2024)"),
    ProbeSpec("visual-sinks", visual_sinks, ("resid",),
              summary="visual sink tokens of an LVLM (Kang et al. 2025); pattern adds the image-centric heads"),
    ProbeSpec("registers", high_norm_tokens, ("resid",), summary="high-norm artifact tokens (Darcet et al. 2024)"),
    ProbeSpec("induction", induction_scores, ("pattern",), summary="induction score per head (Olsson et al. 2022)",
              square=True),
    ProbeSpec("previous-token", previous_token_scores, ("pattern",), summary="previous-token score per head",
              square=True),
    ProbeSpec("vhd", head_divergence, ("head_out",), traces=2, generic=False,
              summary="vision-aware head divergence, with vs without the image"),
    ProbeSpec("qk-embed", embed_all_heads, ("qk",), generic=False,
              summary="joint query-key embedding per head (AttentionViz, Yeh et al. 2023)"),
    ProbeSpec("circuits", circuit_graph, ("pattern", "qk", "head_out", "resid"), model=True, generic=False,
              summary="head communication graph (sparse attention decomposition, Franco & Crovella 2024)"),
)}

#: the probes ``attnlab probe NAME RUN`` serves: name -> function of one Trace.
PROBES: dict[str, Callable[..., ProbeResult]] = {n: s.fn for n, s in REGISTRY.items() if s.generic and s.traces == 1}
#: probes that compare two passes: name -> ``fn(trace, other)``.
PAIR_PROBES: dict[str, Callable[..., ProbeResult]] = {n: s.fn for n, s in REGISTRY.items() if s.traces == 2}


def get_spec(name: str) -> ProbeSpec:
    """The registry entry of ``name``; ValueError listing the probes otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown probe {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def get_probe(name: str) -> Callable[..., ProbeResult]:
    """The probe called ``name`` (single- or two-Trace); ValueError listing the names otherwise."""
    return get_spec(name).fn


def capture_for(names: Iterable[str]) -> str:
    """The ``--capture`` list that lets every named probe run: each need, the first of any alternatives that no
    other need already meets.

    Example:
        >>> capture_for(["sinks", "massive"])
        'stats,resid'
    """
    specs = [get_spec(n) for n in names]
    plain = [n for s in specs for n in s.needs if not isinstance(n, tuple)]
    chosen = list(dict.fromkeys(plain))
    for alternatives in (n for s in specs for n in s.needs if isinstance(n, tuple)):
        if not set(alternatives) & set(chosen):
            chosen.append(alternatives[-1])  # the cheapest: stats before the full pattern
    return ",".join(chosen)


def runnable(captured: Iterable[str], cross: bool = False) -> list[str]:
    """Names of the probes whose needs ``captured`` (a Trace's captured fields) meets, in registry order; with
    ``cross`` (a cross-attention Trace) not those that read self-attention maps."""
    captured = set(captured)
    return [name for name, spec in REGISTRY.items() if not spec.missing(captured) and not (cross and spec.square)]


def run_probe(name: str, trace: Trace, other: Trace | None = None, **options) -> ProbeResult:
    """Run probe ``name``; two-Trace probes need ``other`` (ValueError naming it when missing).

    Raises:
        ValueError: an unknown name, a missing or superfluous ``other``, or a Trace without what the probe reads
            (naming the ``--capture`` option that adds it).
    """
    spec = get_spec(name)
    if spec.model:
        raise ValueError(f"Probe {name!r} also reads the model's weights; run `attnlab probe {name} RUN` "
                         f"(or call {spec.fn.__name__} with the model)")
    lacking = spec.missing(trace.meta.captured)
    if lacking:
        raise ValueError(f"Probe {name!r} needs {' and '.join(lacking)} captured; this Trace has "
                         f"{', '.join(trace.meta.captured) or 'nothing'}. Capture again with --capture "
                         f"{capture_for([name])} (or --for {name})")
    if spec.traces == 2:
        if other is None:
            raise ValueError(f"Probe {name!r} compares two passes; pass the second Trace as other=...")
        return spec.fn(trace, other, **options)
    if other is not None:
        raise ValueError(f"Probe {name!r} takes one Trace; drop other=...")
    return spec.fn(trace, **options)
