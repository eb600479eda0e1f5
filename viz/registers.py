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
        A figure with a heatmap trace and a scatter trace of the artifact cells (red x), which the legend
        names with the threshold rule (shown even when no patch crosses it).
    """
    norms = result.grids(batch, layer, values="norm")
    flags = result.grids(batch, layer, values="artifact")
    if not 0 <= segment < len(norms):
        raise ValueError(
            f"Batch item {batch} has {len(norms)} image span(s) with a patch grid; pick segment < {len(norms)}"
        )
    rows, cols = np.nonzero(flags[segment].values)
    fig = go.Figure(go.Heatmap(z=norms[segment].values, colorscale="Viridis", colorbar_title="norm"))
    cut = result.thresholds[layer]
    rule = f"norm above {cut:.1f}" if not np.isnan(cut) else "norm above the threshold"
    fig.add_trace(go.Scatter(x=cols, y=rows, mode="markers", name=f"high-norm artifact ({rule})",
                             marker={"symbol": "x", "color": "red", "size": 10},
                             hovertemplate="artifact patch: row %{y}, col %{x}<extra></extra>"))
    fig.update_layout(title=f"Token norms on the patch grid, layer {result.layers[layer]}",
                      xaxis_title="patch column", yaxis_title="patch row", showlegend=True,
                      legend={"orientation": "h", "x": 1, "y": 1.02, "xanchor": "right", "yanchor": "bottom"})
    fig.update_yaxes(autorange="reversed")
    return fig


def register_norm_map(result, batch: int, layer: int, model: str) -> go.Figure:
    """:func:`attnlab.viz.registers.artifact_map` titled with the model and whether it has register tokens."""
    fig = artifact_map(result, batch=batch, layer=layer)
    regs = "with" if result.register_mask.any() else "without"
    fig.update_layout(title=f"{model} ({regs} registers): token norms at layer {result.layers[layer]}", height=420)
    return fig
