"""Figures for attention-sink results."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.sinks import SinkResult

from .style import head_grid


def sink_heatmap(result: SinkResult, batch: int = 0) -> go.Figure:
    """Layer x head grid of the attention share absorbed by sink tokens; hovering a head lists its sinks.

    Args:
        result: :func:`sink_tokens` output.
        batch: batch item.

    Returns:
        A figure with one heatmap trace (rows = layers, columns = heads).
    """
    z = result.sink_mass[:, batch]  # (L, H)

    def names(li: int, h: int) -> str:
        found = np.flatnonzero(result.is_sink[li, batch, h])
        return "sinks: " + (", ".join(f"{n}:{result.tokens[batch][n]}" for n in found) or "none")

    hover = [[names(li, h) for h in range(z.shape[1])] for li in range(z.shape[0])]
    return head_grid(z, result.layers, "sink mass", hover=hover,
                     title=f"Attention absorbed by sink tokens ({result.rule} rule)")
