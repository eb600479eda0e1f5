"""Figures for vision-aware head divergence results."""

from __future__ import annotations

import plotly.graph_objects as go

from attnlab.probes.vhd import VHDResult


def vhd_heatmap(result: VHDResult, batch: int = 0) -> go.Figure:
    """Layer x head heatmap of VHD at the aligned position.

    Args:
        result: :func:`head_divergence` output.
        batch: batch item.

    Returns:
        A figure with one heatmap trace (rows = layers, columns = heads).
    """
    z = result.vhd[:, batch]  # (L, H)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(z.shape[1])), y=list(result.layers), colorscale="Viridis", colorbar_title="VHD",
        hovertemplate="layer %{y}, head %{x}<br>VHD %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"Vision-aware head divergence at token {result.tokens[batch]!r}",
                      xaxis_title="head", yaxis_title="layer")
    return fig
