"""Figures for circuits: the head communication graph and layer x head heatmaps of patching effects.

Both take probe results (or plain tables) and return a ``go.Figure``; nothing here runs a model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

#: Edge colour per side: the writer fed the reading head's key token (src) or its query token (dest).
SIDE_COLOURS = {"src": "#1f77b4", "dest": "#d62728"}


def _head_xy(name: str) -> tuple[int, int]:
    layer, head = str(name).split(".")
    return int(layer), int(head)


def _edge_table(graph) -> tuple[pd.DataFrame, int, int]:
    """``(edges, n_layers, n_heads)`` from a CircuitGraph or its edge table (sizes then read off the names)."""
    if not isinstance(graph, pd.DataFrame):
        return graph.to_frame(), graph.n_layers, graph.n_heads
    xy = [_head_xy(n) for n in pd.concat([graph["upstream"], graph["downstream"]])] or [(0, 0)]
    return graph, max(p[0] for p in xy) + 1, max(p[1] for p in xy) + 1


def _edge_hover(row) -> str:
    """An edge's hover text, naming the strength's denominator (upstream heads) and, when stored, the share
    among every writer."""
    text = (f"{row.upstream} → {row.downstream}<br>side {row.side}<br>strength {row.strength:.3f} "
            "(share among upstream heads)")
    if hasattr(row, "share_of_all"):
        text += f"<br>share of all writers {row.share_of_all:.3f}"
    return text + f"<br>components {list(row.components)}"


def circuit_graph_figure(graph, *, min_strength: float = 0.0,
                         title: str = "Head communication (sparse attention decomposition)") -> go.Figure:
    """Heads as nodes on a layer x head grid, edges from writing heads to the heads that read them.

    Args:
        graph: a :class:`~attnlab.probes.circuits.CircuitGraph` or its edge table (``to_frame()``).
        min_strength: hide weaker edges.
        title: figure title.

    Returns:
        A figure with one line trace per edge (width and opacity from the strength, colour by side,
        solid for src and dotted for dest; in table order) followed by one marker trace of the heads
        (``name="heads"``).
    """
    frame, n_layers, n_heads = _edge_table(graph)
    frame = frame[frame["strength"] >= min_strength]
    fig = go.Figure()
    top = float(frame["strength"].max()) if len(frame) else 1.0
    for row in frame.itertuples(index=False):
        (x0, y0), (x1, y1) = _head_xy(row.upstream), _head_xy(row.downstream)
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", name=f"{row.upstream} → {row.downstream} ({row.side})",
            line={"color": SIDE_COLOURS.get(row.side, "grey"), "width": 1 + 7 * row.strength / top,
                  "dash": "solid" if row.side == "src" else "dot"},
            opacity=0.35 + 0.65 * row.strength / top, showlegend=False, hoverinfo="text",
            hovertext=_edge_hover(row)))
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    fig.add_trace(go.Scatter(x=layer, y=head, mode="markers+text", name="heads", hoverinfo="text",
                             text=[f"{l}.{h}" for l, h in zip(layer, head)], textposition="top center",
                             marker={"size": 14, "color": "#444"}))
    fig.update_layout(title=title, showlegend=False, plot_bgcolor="white",
                      xaxis={"title": "layer", "tickmode": "linear", "dtick": 1, "zeroline": False},
                      yaxis={"title": "head", "tickmode": "linear", "dtick": 1, "zeroline": False})
    return fig


def head_heatmap(values: np.ndarray, *, title: str, colorbar: str, zmid: float | None = 0.0) -> go.Figure:
    """A layer x head heatmap (layers as rows, bottom to top) with the values written in the cells.

    Args:
        values: ``[L, H]``.
        title: figure title.
        colorbar: colour bar label.
        zmid: value at the centre of the diverging colour scale; ``None`` for a sequential scale.
    """
    values = np.asarray(values, dtype=float)
    n_layers, n_heads = values.shape
    text = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in values]
    heat = go.Heatmap(z=values, x=list(range(n_heads)), y=list(range(n_layers)), text=text, texttemplate="%{text}",
                      colorscale="RdBu" if zmid is not None else "Viridis", reversescale=zmid is not None,
                      zmid=zmid, colorbar={"title": colorbar},
                      hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>")
    fig = go.Figure(heat)
    fig.update_layout(title=title, xaxis={"title": "head", "dtick": 1}, yaxis={"title": "layer", "dtick": 1})
    return fig


def patching_heatmap(result, *, title: str | None = None) -> go.Figure:
    """Normalised patching effects (0 = corrupted, 1 = clean) per layer and head.

    Args:
        result: a :class:`~attnlab.interventions.patching.PatchingResult` or an ``[L, H]`` array.
        title: figure title; by default it names the method and direction.
    """
    if isinstance(result, np.ndarray):
        return head_heatmap(result, title=title or "Patching effect", colorbar="effect")
    what = f"{result.method} patching ({result.direction})"
    if result.receivers:
        what += " → " + ", ".join(f"{l}.{h}" for l, h in result.receivers) + f" [{result.receiver_inputs}]"
    return head_heatmap(result.effect, title=title or what, colorbar="effect")
