"""Figures for token-relevance results (attention rollout and attention flow)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.results import TokenRelevance
from attnlab.probes.tokens import MEAN_POOLED

OUTPUT_COLOUR = "#d62728"
INPUT_COLOUR = "#1f77b4"


def relevance_bar(result: TokenRelevance, batch: int = 0) -> go.Figure:
    """Bar chart of the relevance of every real input token; the output position is drawn in red, and a note
    above the bars says so.

    Bars are labelled word first (a WordPiece piece shows its whole word, :func:`word_of_pieces`); hovering a
    bar names its raw piece.

    Args:
        result: a :class:`RolloutResult` or :class:`FlowResult`.
        batch: batch item.

    Returns:
        A figure with one bar trace (``customdata``: each bar's raw token).
    """
    from attnlab.hooks.segments import word_of_pieces

    real = np.flatnonzero(result.mask[batch])
    out = result.positions[batch]
    tokens = list(result.tokens[batch])
    words = word_of_pieces(tokens)
    labels = [f"{n}:{words[n]}" for n in real]
    pieces = [tokens[n] if words[n] == tokens[n] else f"{tokens[n]} (piece of {words[n]})" for n in real]
    fig = go.Figure(go.Bar(
        x=labels, y=result.relevance[batch, real], name="relevance", customdata=pieces,
        hovertemplate="%{x}<br>token %{customdata}<br>relevance %{y:.4f}<extra></extra>",
        marker_color=[OUTPUT_COLOUR if n == out else INPUT_COLOUR for n in real],
    ))
    output = "the mean-pooled output" if out == MEAN_POOLED else f"output position {out}"
    notes = []
    if out != MEAN_POOLED and out in set(real.tolist()):
        notes.append({"text": f"<span style='color:{OUTPUT_COLOUR}'>■</span> red: the output token "
                              f"({labels[list(real).index(out)]}), whose relevance is traced; "
                              f"<span style='color:{INPUT_COLOUR}'>■</span> blue: input tokens",
                      "xref": "paper", "yref": "paper", "x": 0, "y": 1.0, "xanchor": "left", "yanchor": "bottom",
                      "showarrow": False, "font": {"size": 12}})
    fig.update_layout(title=f"{result.probe} relevance for {output}", annotations=notes,
                      xaxis_title="input token", yaxis_title="relevance", xaxis_type="category")
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
