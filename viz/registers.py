"""Figures for high-norm (register) artifact results."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.registers import RegisterResult


def norm_histogram(result: RegisterResult, layer: int = -1, bins: int = 60) -> go.Figure:
    """Histogram of patch-token norms at one layer, with the artifact threshold as a vertical line.

    Args:
        result: :func:`high_norm_tokens` output.
        layer: index into ``result.layers`` (-1: the output).
        bins: number of histogram bins.

    Returns:
        A figure with one histogram trace (and a threshold line when artifacts were found).
    """
    norms = result.norms[layer][result.patch_mask]  # (patches,)
    fig = go.Figure(go.Histogram(x=norms, nbinsx=bins, name="patch tokens"))
    cut = result.thresholds[layer]
    if not np.isnan(cut):
        fig.add_vline(x=float(cut), line_dash="dash", line_color="red", annotation_text=f"threshold {cut:.1f}")
    fig.update_layout(title=f"Patch-token norms at layer {result.layers[layer]}", xaxis_title="token norm",
                      yaxis_title="patch tokens")
    return fig


def artifact_map(result: RegisterResult, batch: int = 0, layer: int = -1, segment: int = 0) -> go.Figure:
    """Patch-grid heatmap of token norms with the artifact patches marked.

    Args:
        result: :func:`high_norm_tokens` output.
        batch: batch item.
        layer: index into ``result.layers``.
        segment: which image span of the item.

    Returns:
        A figure with a heatmap trace and a scatter trace of the artifact cells.
    """
    norms = result.grids(batch, layer, values="norm")
    flags = result.grids(batch, layer, values="artifact")
    if not 0 <= segment < len(norms):
        raise ValueError(
            f"Batch item {batch} has {len(norms)} image span(s) with a patch grid; pick segment < {len(norms)}"
        )
    rows, cols = np.nonzero(flags[segment].values)
    fig = go.Figure(go.Heatmap(z=norms[segment].values, colorscale="Viridis", colorbar_title="norm"))
    fig.add_trace(go.Scatter(x=cols, y=rows, mode="markers", name="artifact",
                             marker={"symbol": "x", "color": "red", "size": 10}))
    fig.update_layout(title=f"Token norms on the patch grid, layer {result.layers[layer]}",
                      xaxis_title="patch column", yaxis_title="patch row")
    fig.update_yaxes(autorange="reversed")
    return fig


def register_norm_map(result, batch: int, layer: int, model: str) -> go.Figure:
    """:func:`attnlab.viz.registers.artifact_map` titled with the model and whether it has register tokens."""
    fig = artifact_map(result, batch=batch, layer=layer)
    regs = "with" if result.register_mask.any() else "without"
    fig.update_layout(title=f"{model} ({regs} registers): token norms at layer {result.layers[layer]}", height=420)
    return fig
