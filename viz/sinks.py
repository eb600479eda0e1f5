"""Figures for attention-sink results."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.sinks import SinkResult


def sink_heatmap(result: SinkResult, batch: int = 0) -> go.Figure:
    """Layer x head heatmap of the attention share absorbed by sink tokens; hover lists the sinks.

    Args:
        result: :func:`sink_tokens` output.
        batch: batch item.

    Returns:
        A figure with one heatmap trace (rows = layers, columns = heads).
    """
    z = result.sink_mass[:, batch]  # (L, H)
    def names(li: int, h: int) -> str:
        found = np.flatnonzero(result.is_sink[li, batch, h])
        return ", ".join(f"{n}:{result.tokens[batch][n]}" for n in found) or "none"

    hover = [[names(li, h) for h in range(z.shape[1])] for li in range(z.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(z.shape[1])), y=list(result.layers), text=hover, colorscale="Magma",
        hovertemplate="layer %{y}, head %{x}<br>sink mass %{z:.3f}<br>sinks: %{text}<extra></extra>",
        colorbar_title="sink mass",
    ))
    fig.update_layout(title=f"Attention absorbed by sink tokens ({result.rule} rule)",
                      xaxis_title="head", yaxis_title="layer")
    fig.update_xaxes(dtick=1)  # whole heads and layers: small grids otherwise get ticks at -0.5, 0.5, ...
    fig.update_yaxes(dtick=1)
    return fig
