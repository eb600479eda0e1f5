"""Figures for circuits: the head communication graph and layer x head grids of patching effects.

Both take results or plain tables and return a ``go.Figure``; nothing here runs a model. The dashboard, the
notebooks and the CLI draw circuits with these same functions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import MARGIN, SIDE_COLOURS, head_grid, layout_title


def _head_xy(name: str) -> tuple[int, int]:
    """``(layer, head)`` of a head named ``"L.H"``."""
    layer, head = str(name).split(".")
    return int(layer), int(head)


def _edge_table(graph) -> tuple[pd.DataFrame, int, int]:
    """``(edges, n_layers, n_heads)`` from a CircuitGraph or its edge table (sizes then read off the names)."""
    if not isinstance(graph, pd.DataFrame):
        return graph.to_frame(), graph.n_layers, graph.n_heads
    names = pd.concat([graph["upstream"], graph["downstream"]]).astype(str)
    xy = [_head_xy(n) for n in names if "." in n] or [(0, 0)]  # "embed" is not on the lattice
    return graph, max(p[0] for p in xy) + 1, max(p[1] for p in xy) + 1


def _edge_hover(row) -> str:
    """An edge's hover text, naming the strength's denominator (upstream heads) and, when stored, the share
    among every writer."""
    text = (f"{row.upstream} → {row.downstream}<br>side {row.side}<br>strength {row.strength:.3f} "
            "(share among upstream heads)")
    if hasattr(row, "share_of_all"):
        text += f"<br>share of all writers {row.share_of_all:.3f}"
    if hasattr(row, "components"):
        text += f"<br>components {list(row.components)}"
    return text


def _lattice_position(name: str, n_heads: int) -> tuple[float, float] | None:
    if name == "embed":
        return -1.0, (n_heads - 1) / 2
    if "." in name:
        layer, head = name.split(".")
        return float(layer), float(head)
    return None


def circuit_figure(edges: pd.DataFrame, n_layers: int, n_heads: int, min_strength: float = 0.0,
                   title_text: str | None = None) -> go.Figure:
    """Head communication graph: heads on a layer x head lattice, lines from upstream writers to readers.

    Args:
        edges: rows with ``upstream``, ``downstream`` (``"L.H"`` or ``"embed"``), ``side`` (``src``/``dest``),
            ``strength``.
        n_layers, n_heads: the lattice.
        min_strength: edges below this strength are hidden.
        title_text: the title (default: the number of edges shown).

    Returns:
        Lines per side (:data:`~attnlab.viz.style.SIDE_COLOURS`: key-side reads blue, query-side reads orange),
        wider for stronger edges, with an arrow from writer to reader; one hover point per edge at its middle
        (``name="edges"``: writer, reader, side, strength, components); head nodes sized by their number of
        edges (``name="heads"``).
    """
    shown = edges[edges["strength"] >= min_strength]
    data, degree, arrows = [], {}, []
    for side, colour in SIDE_COLOURS.items():
        part = shown[shown["side"] == side]
        for lo, hi, width in ((0.0, 0.35, 1.5), (0.35, 0.6, 3.5), (0.6, math.inf, 6.0)):
            xs, ys = [], []
            for up, down, strength in zip(part["upstream"], part["downstream"], part["strength"]):
                a, b = _lattice_position(str(up), n_heads), _lattice_position(str(down), n_heads)
                if a is None or b is None or not lo <= strength < hi:
                    continue
                xs += [a[0], b[0], None]
                ys += [a[1], b[1], None]
                arrows.append({"x": b[0], "y": b[1], "ax": a[0], "ay": a[1], "xref": "x", "yref": "y", "axref": "x",
                               "ayref": "y", "text": "", "showarrow": True, "arrowhead": 2, "arrowsize": 1.2,
                               "arrowwidth": min(width, 3.0), "arrowcolor": colour, "standoff": 7, "opacity": 0.8})
            if xs:
                data.append({"type": "scatter", "x": xs, "y": ys, "mode": "lines", "opacity": 0.7,
                             "line": {"color": colour, "width": width}, "hoverinfo": "skip",
                             "name": f"{'key' if side == 'src' else 'query'}-side read, strength "
                                     + (f"≥ {lo:g}" if hi == math.inf else f"{lo:g}–{hi:g}")})
    middles = [(row, _lattice_position(str(row.upstream), n_heads), _lattice_position(str(row.downstream), n_heads))
               for row in shown.itertuples(index=False)]
    middles = [(row, a, b) for row, a, b in middles if a is not None and b is not None]
    data.append({"type": "scatter", "name": "edges", "mode": "markers", "showlegend": False,
                 "x": [(a[0] + b[0]) / 2 for _, a, b in middles], "y": [(a[1] + b[1]) / 2 for _, a, b in middles],
                 "marker": {"size": 9, "color": "rgba(0,0,0,0)"}, "hoverinfo": "text",
                 "hovertext": [_edge_hover(row) for row, _, _ in middles]})
    for up, down in zip(shown["upstream"], shown["downstream"]):
        for name in (str(up), str(down)):
            degree[name] = degree.get(name, 0) + 1
    node_x = [layer for layer in range(n_layers) for _ in range(n_heads)]
    node_y = [head for _ in range(n_layers) for head in range(n_heads)]
    names = [f"{x}.{y}" for x, y in zip(node_x, node_y)]
    data.append({"type": "scatter", "x": node_x, "y": node_y, "mode": "markers", "name": "heads",
                 "marker": {"size": [8 + 3 * min(degree.get(n, 0), 6) for n in names], "color": "#444",
                            "line": {"color": "white", "width": 1}},
                 "text": [f"head {n}, {degree.get(n, 0)} edges" for n in names], "hovertemplate": "%{text}<extra></extra>"})
    if "embed" in degree:
        data.append({"type": "scatter", "x": [-1], "y": [(n_heads - 1) / 2], "mode": "markers+text", "text": ["embed"],
                     "name": "embeddings", "textposition": "middle left", "marker": {"size": 12, "color": "#2ca02c"}})
    return go.Figure({"data": data, "layout": {
        "title": {**layout_title(title_text or f"Head communication graph ({len(shown)} edges with strength ≥ "
                                          f"{min_strength:g})"),
                  "subtitle": {"text": "strength: share among the upstream heads' contributions (embeddings and MLPs "
                                       "not counted; the table's share_of_all counts every writer)"}},
        "margin": {**MARGIN, "t": 90}, "height": 480, "annotations": arrows,
        "legend": {"orientation": "h", "y": -0.18},
        "xaxis": {"title": {"text": "layer"}, "dtick": 1, "range": [-1.8 if "embed" in degree else -0.5, n_layers - 0.5]},
        "yaxis": {"title": {"text": "head"}, "dtick": 1, "autorange": "reversed"}}})


def circuit_graph_figure(graph, *, min_strength: float = 0.0, title: str | None = None) -> go.Figure:
    """:func:`circuit_figure` of a :class:`~attnlab.probes.circuits.CircuitGraph` or its edge table
    (``to_frame()``; the lattice's size is then read off the head names)."""
    frame, n_layers, n_heads = _edge_table(graph)
    return circuit_figure(frame, n_layers, n_heads, min_strength, title)


def patching_heatmap(result, *, title: str | None = None) -> go.Figure:
    """Normalised patching effects (0 = corrupted, 1 = clean) per layer and head, on :func:`head_grid`.

    Args:
        result: a :class:`~attnlab.interventions.patching.PatchingResult` or an ``[L, H]`` array.
        title: figure title; by default it names the method and direction.
    """
    if isinstance(result, np.ndarray):
        return head_grid(result, label="effect", signed=True, title=title or "Patching effect", annotate=True)
    what = f"{result.method} patching ({result.direction})"
    if result.receivers:
        what += " → " + ", ".join(f"{l}.{h}" for l, h in result.receivers) + f" [{result.receiver_inputs}]"
    return head_grid(result.effect, label="effect", signed=True, title=title or what, annotate=True)
