"""attnlab.probes: pure functions from Traces to typed results (none of them runs a model).

The probes most users need are importable by name; each is imported on first use (PEP 562), so
``import attnlab.probes`` stays light::

    from attnlab.probes import attention_rollout, sink_tokens
    result = sink_tokens(trace)            # a SinkResult; result.to_frame() for a table

``run_probe(name, trace)`` runs one by its CLI name (``rollout``, ``sinks`` ...).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from attnlab.core.exports import lazy_exports

#: public name -> module (under attnlab.probes) that owns it
_OWNERS = {
    "attention_rollout": "rollout",
    "attention_flow": "flow",
    "sink_tokens": "sinks",
    "massive_activations": "massive",
    "sink_overlap": "massive",
    "visual_sinks": "visual_sinks",
    "high_norm_tokens": "registers",
    "artifact_properties": "artifact_properties",
    "norm_threshold": "norm_threshold",
    "head_divergence": "vhd",
    "vhr_heads": "vhd",
    "induction_scores": "head_scores",
    "previous_token_scores": "head_scores",
    "circuit_graph": "circuits",
    "QKEmbedding": "qk_embedding",
    "embed_all_heads": "qk_heads",
    "run_probe": "registry",
    "get_probe": "registry",
    "ProbeResult": "results",
}

__all__ = sorted(_OWNERS)

if TYPE_CHECKING:  # static tools and IDEs see the real objects
    from .artifact_properties import artifact_properties
    from .circuits import circuit_graph
    from .flow import attention_flow
    from .head_scores import induction_scores, previous_token_scores
    from .massive import massive_activations, sink_overlap
    from .norm_threshold import norm_threshold
    from .qk_embedding import QKEmbedding
    from .qk_heads import embed_all_heads
    from .registers import high_norm_tokens
    from .registry import get_probe, run_probe
    from .results import ProbeResult
    from .rollout import attention_rollout
    from .sinks import sink_tokens
    from .vhd import head_divergence, vhr_heads
    from .visual_sinks import visual_sinks


__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)


class _Package(types.ModuleType):
    """Keeps ``attnlab.probes.visual_sinks`` (and the other probes named like their module) the function.

    Importing a submodule binds it on its package, so once anything imported ``attnlab.probes.visual_sinks``
    the name would turn into the module. The module stays importable: ``from attnlab.probes.visual_sinks import
    sink_score`` reads it from ``sys.modules``.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _OWNERS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
