"""Figures for token-relevance results (attention rollout and attention flow)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.results import TokenRelevance
from attnlab.probes.tokens import MEAN_POOLED

OUTPUT_COLOUR = "#d62728"
INPUT_COLOUR = "#1f77b4"


def relevance_bar(result: TokenRelevance, batch: int = 0) -> go.Figure:
    """Bar chart of the relevance of every real input token; the output position is drawn in red.

    Args:
        result: a :class:`RolloutResult` or :class:`FlowResult`.
        batch: batch item.

    Returns:
        A figure with one bar trace.
    """
    real = np.flatnonzero(result.mask[batch])
    out = result.positions[batch]
    labels = [f"{n}:{result.tokens[batch][n]}" for n in real]
    fig = go.Figure(go.Bar(
        x=labels, y=result.relevance[batch, real], name="relevance",
        marker_color=[OUTPUT_COLOUR if n == out else INPUT_COLOUR for n in real],
    ))
    output = "the mean-pooled output" if out == MEAN_POOLED else f"output position {out}"
    fig.update_layout(title=f"{result.probe} relevance for {output}",
                      xaxis_title="input token", yaxis_title="relevance")
    return fig


def relevance_grid(result: TokenRelevance, batch: int = 0, segment: int = 0) -> go.Figure:
    """Heatmap of the relevance of one image span's patches on its patch grid.

    Args:
        result: a :class:`RolloutResult` or :class:`FlowResult`.
        batch: batch item.
        segment: which image span (in sequence order) of that item.

    Returns:
        A figure with one heatmap trace, first patch row at the top.

    Raises:
        ValueError: the item has no image span with a grid at that index.
    """
    grids = result.grids(batch)
    if not 0 <= segment < len(grids):
        raise ValueError(
            f"Batch item {batch} has {len(grids)} image span(s) with a patch grid; pick segment < {len(grids)}"
        )
    fig = go.Figure(go.Heatmap(z=grids[segment].values, colorscale="Viridis", colorbar_title="relevance"))
    fig.update_layout(title=f"{result.probe} relevance on the patch grid ({grids[segment].segment.label or 'image'})",
                      xaxis_title="patch column", yaxis_title="patch row")
    fig.update_yaxes(autorange="reversed")
    return fig
