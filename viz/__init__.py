"""attnlab.viz: plotly figures of Traces and probe results; every function returns a ``go.Figure``.

One module per subject (attention, circuits, evals, massive, patterns, qk, registers, relevance, sinks, vhd) and
:mod:`attnlab.viz.style` for colours, margins and the one layer x head grid; the dashboard, the notebooks and
the CLI all call these functions.

The figures most users need are importable by name, each on first use (PEP 562)::

    from attnlab.viz import head_pattern
    head_pattern(trace, layer=3, head=5)      # one head's attention, tokens on both axes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnlab.core.exports import lazy_exports

#: public name -> module (under attnlab.viz) that owns it
_OWNERS = {
    "head_pattern": "patterns",
    "attention_heatmap": "attention",
    "compare_attention": "attention",
    "patch_overlay": "attention",
    "token_text_view": "text_view",
    "token_bar": "attention",
    "head_grid": "style",
    "stamp": "style",
    "circuit_figure": "circuits",
    "qk_small_multiples": "qk",
    "eval_bars": "evals",
    "register_norm_map": "registers",
    "sink_heatmap": "sinks",
    "relevance_bar": "relevance",
    "relevance_grid": "relevance",
    "massive_activation_plot": "massive",
    "norm_histogram": "registers",
    "artifact_map": "registers",
    "vhd_heatmap": "vhd",
    "qk_scatter": "qk",
    "qk_scatter_3d": "qk",
    "qk_heads_matrix": "qk",
    "circuit_graph_figure": "circuits",
    "patching_heatmap": "circuits",
}

__all__ = sorted(_OWNERS)

if TYPE_CHECKING:  # static tools and IDEs see the real objects
    from .attention import attention_heatmap, compare_attention, patch_overlay, token_bar
    from .text_view import token_text_view
    from .circuits import circuit_figure, circuit_graph_figure, patching_heatmap
    from .evals import eval_bars
    from .massive import massive_activation_plot
    from .patterns import head_pattern
    from .qk import qk_heads_matrix, qk_scatter, qk_scatter_3d, qk_small_multiples
    from .registers import artifact_map, norm_histogram, register_norm_map
    from .relevance import relevance_bar, relevance_grid
    from .sinks import sink_heatmap
    from .style import head_grid, stamp
    from .vhd import vhd_heatmap


__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
