"""Figures the dashboard needs beyond the per-probe ones: plain arrays and tables in, ``go.Figure`` out.

Colour conventions shared by every view, so two figures can be compared by eye:

* attention weights: :data:`ATTENTION_SCALE` on the fixed range ``[0, 1]`` (stops packed near 0, where
  most weights lie; the colour bar shows the mapping);
* relevance and per-head statistics: ``Viridis`` over the data's range; signed effects: ``RdBu``
  centred at 0;
* queries green and keys pink (AttentionViz's convention).

Speed: the dashboard redraws these on every click, so each figure is described as one dict and
validated once by ``go.Figure(spec)`` (about ten times faster than ``make_subplots`` and repeated
``update_*`` calls); subplots are laid out with explicit axis domains.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import KEY_COLOUR, MARGIN, QUERY_COLOUR
from .style import SEGMENT_COLOURS as KIND_COLOURS

#: Viridis with its stops packed towards 0, on the fixed range [0, 1].
ATTENTION_SCALE = [[0.0, "#440154"], [0.02, "#482878"], [0.05, "#3e4989"], [0.1, "#31688e"], [0.18, "#26828e"],
                   [0.3, "#1f9e89"], [0.45, "#35b779"], [0.65, "#6ece58"], [0.85, "#b5de2b"], [1.0, "#fde725"]]
ATTENTION_TICKS = [0, 0.1, 0.25, 0.5, 0.75, 1]


def _title(text: str, size: int | None = None) -> dict:
    return {"text": text, **({"font": {"size": size}} if size else {})}


def _attention_colorbar(title: str = "attention", **extra) -> dict:
    return {"title": {"text": title}, "tickvals": ATTENTION_TICKS, **extra}


def _attention_heatmap_trace(z, **extra) -> dict:
    return {"type": "heatmap", "z": z, "colorscale": ATTENTION_SCALE, "zmin": 0.0, "zmax": 1.0, **extra}


def _panel_title(text: str, x: float, y: float) -> dict:
    return {"text": text, "x": x, "y": y, "xref": "paper", "yref": "paper", "showarrow": False,
            "xanchor": "center", "yanchor": "bottom", "font": {"size": 13}}


def stamp(fig: go.Figure, provenance: str, filename: str) -> go.Figure:
    """Mark a figure with where it came from: ``provenance`` as its subtitle, ``filename`` (no extension) as the
    name its PNG download gets (``layout.meta.export``; the dashboard applies it to the download button).

    Returns:
        The same figure.
    """
    fig.layout.meta = {**(fig.layout.meta or {}), "export": filename}
    if fig.layout.title.text:
        fig.layout.title.subtitle.text = provenance
        fig.layout.title.subtitle.font.size = 11
        fig.layout.margin.t = max(fig.layout.margin.t or 0, 80)
    else:
        fig.layout.title.text = provenance
        fig.layout.title.font.size = 11
    return fig


def message_figure(text: str) -> go.Figure:
    """An empty figure carrying a centred note (for views a Run cannot fill); ``layout.meta.empty`` is true."""
    return go.Figure({"data": [], "layout": {
        "annotations": [{"text": text, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                         "font": {"size": 15}}],
        "xaxis": {"visible": False}, "yaxis": {"visible": False}, "margin": MARGIN, "height": 260,
        "meta": {"empty": True}}})


def head_grid(values: np.ndarray, layers, label: str, *, signed: bool = False, zrange=None,
              selected: tuple[int, int] | None = None) -> go.Figure:
    """Every layer x head as one grid coloured by a statistic; click a cell to open the head.

    Args:
        values: ``[L, H]`` the statistic (NaN where it does not apply).
        layers: layer index of each row.
        label: the statistic's name (colour-bar title).
        signed: use a diverging scale centred at 0 (patching effects).
        zrange: ``(zmin, zmax)``, or ``None`` for the data range.
        selected: ``(layer, head)`` to outline.

    Returns:
        A figure with one heatmap trace (rows = layers, first layer at the bottom as in the other per-head
        figures of :mod:`attnlab.viz`).
    """
    values = np.asarray(values, dtype=float)  # (L, H)
    rows = [str(i) for i in layers]
    scale: dict = {"colorscale": "Viridis"}
    if signed:
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        scale = {"colorscale": "RdBu", "zmid": 0.0, "zmin": -bound, "zmax": bound}
    elif zrange is not None:
        scale.update(zmin=zrange[0], zmax=zrange[1])
    shapes = []
    if selected is not None and str(selected[0]) in rows:
        row = rows.index(str(selected[0]))
        shapes.append({"type": "rect", "x0": selected[1] - 0.5, "x1": selected[1] + 0.5, "y0": row - 0.5,
                       "y1": row + 0.5, "line": {"color": "white", "width": 3}})
    return go.Figure({"data": [{
        "type": "heatmap", "z": values, "x": list(range(values.shape[1])), "y": rows, "xgap": 1, "ygap": 1,
        "colorbar": {"title": {"text": label}}, **scale,
        "hovertemplate": "layer %{y}, head %{x}<br>" + label + " %{z:.3f}<extra></extra>"}], "layout": {
        "title": _title(f"{label} per head (click a head to open it)"), "margin": MARGIN, "shapes": shapes,
        "height": max(300, 60 + 28 * values.shape[0]), "xaxis": {"title": {"text": "head"}, "dtick": 1},
        "yaxis": {"title": {"text": "layer"}, "type": "category"}}})


#: Colour scales of the attention heatmap: the fixed ``[0, 1]`` range compares heads by eye; the others
#: spread one head's weights over the whole colour bar, which long inputs need (mean weight ``1/N``).
COLOUR_SCALES = {"fixed": "fixed 0-1", "max": "per-head max", "p99": "99th percentile", "log": "log"}
#: Above this many tokens the ``auto`` scale is the per-head max (a fixed scale leaves the map uniformly dark).
LONG_INPUT = 100
LOG_FLOOR = 1e-4


def resolve_scale(scale: str | None, n_tokens: int) -> str:
    """``scale`` itself, or for ``auto``/``None`` the per-head max above :data:`LONG_INPUT` tokens, else fixed."""
    if scale in (None, "auto"):
        return "max" if n_tokens > LONG_INPUT else "fixed"
    if scale not in COLOUR_SCALES:
        raise ValueError(f"Unknown colour scale {scale!r}; choose auto or one of {sorted(COLOUR_SCALES)}")
    return scale


def colour_range(values: np.ndarray, scale: str) -> tuple[np.ndarray, dict]:
    """The values to draw and the heatmap's colour settings for one of :data:`COLOUR_SCALES`.

    Args:
        values: attention weights (any shape), in ``[0, 1]``.
        scale: ``fixed``, ``max`` (0 to the largest value), ``p99`` (0 to the 99th percentile; the top 1%
            saturate) or ``log`` (log10 of the weights from :data:`LOG_FLOOR` to the largest, ticks in weights).

    Returns:
        ``(z, settings)``: ``z`` to draw (``log10`` of the weights for ``log``) and ``colorscale``, ``zmin``,
        ``zmax``, ``colorbar`` for the trace.
    """
    values = np.asarray(values, dtype=np.float32)  # half the bytes of float64 on the wire, 7 digits are plenty
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 1.0
    if scale == "fixed":
        return values, {"colorscale": ATTENTION_SCALE, "zmin": 0.0, "zmax": 1.0,
                        "colorbar": _attention_colorbar("attention")}
    if scale == "log":
        floor = LOG_FLOOR if top > LOG_FLOOR else top / 10
        z = np.log10(np.clip(values, floor, None)).astype(np.float32)
        exps = list(range(int(math.floor(math.log10(floor))), int(math.ceil(math.log10(max(top, floor)))) + 1))
        return z, {"colorscale": "Viridis", "zmin": math.log10(floor), "zmax": math.log10(max(top, floor * 1.0001)),
                   "colorbar": {"title": {"text": "attention (log)"}, "tickvals": exps,
                                "ticktext": [f"{10.0 ** e:g}" for e in exps]}}
    high = top if scale == "max" else float(np.percentile(finite, 99)) if finite.size else 1.0
    high = max(high, 1e-9)
    name = "per-head max" if scale == "max" else "99th percentile"
    return values, {"colorscale": "Viridis", "zmin": 0.0, "zmax": high,
                    "colorbar": {"title": {"text": f"attention ({name})"}}}


def attention_heatmap(pattern: np.ndarray, labels: list[str], title: str, *, scale: str | None = "fixed",
                      exclude_first: bool = False) -> go.Figure:
    """One head's attention pattern with token labels on both axes, in square cells.

    Every token keeps its label: the axes thin their ticks to what fits and show more as one zooms in, and
    hovering a cell names its query and key.

    Args:
        pattern: ``[Q, K]`` post-softmax attention of the real tokens.
        labels: ``"position:token"`` of those tokens (unique).
        title: figure title.
        scale: one of :data:`COLOUR_SCALES`, or ``auto``/``None`` (:func:`resolve_scale`).
        exclude_first: drop the first token's key column, whose sink weight (Xiao et al. 2024, §3) would
            otherwise set the colour range for all the rest.

    Returns:
        A heatmap (queries as rows, first at the top).
    """
    keys = labels
    if exclude_first and pattern.shape[-1] > 1:
        pattern, keys = pattern[:, 1:], labels[1:]
    scale = resolve_scale(scale, len(labels))
    z, colours = colour_range(pattern, scale)
    # the colour bar inside the paper, at a fixed place: outside it, its tick labels (whose width changes with the
    # range) push the margin, and plotly then draws everything a second time
    colours["colorbar"] = {**colours["colorbar"], "x": 0.9, "xanchor": "left", "thickness": 14}
    value = "log10 attention" if scale == "log" else "attention"
    axis = {"type": "category", "tickfont": {"size": 10}, "constrain": "domain"}
    return go.Figure({"data": [{"type": "heatmap", "z": z, "x": keys, "y": labels, **colours,
                                "hovertemplate": "query %{y}<br>key %{x}<br>" + value + " %{z:.4f}<extra></extra>"}],
                      "layout": {"title": _title(title), "margin": {**MARGIN, "l": 120, "b": 120, "t": 70},
                                 "height": 760 if len(labels) > 40 else max(420, 14 * len(labels) + 200),
                                 "xaxis": {**axis, "title": {"text": "key"}, "tickangle": -60, "domain": [0, 0.86]},
                                 "yaxis": {**axis, "title": {"text": "query"}, "autorange": "reversed",
                                           "scaleanchor": "x", "scaleratio": 1}}})


def _short(token: str, width: int = 12) -> str:
    return token if len(token) <= width else token[: width - 1] + "…"


def _token_grid(tokens, positions, values, per_row):
    rows = max(1, math.ceil(len(tokens) / per_row))
    z = np.full((rows, per_row), np.nan)
    text = [[""] * per_row for _ in range(rows)]
    custom = [[-1] * per_row for _ in range(rows)]
    for i, token in enumerate(tokens):
        r, c = divmod(i, per_row)
        z[r, c], text[r][c], custom[r][c] = values[i], _short(token), int(positions[i])
    return z, text, custom


def token_text_view(tokens: list[str], positions: list[int], attends_to: np.ndarray, attended_by: np.ndarray,
                    focus: int, per_row: int = 12) -> go.Figure:
    """The text as token cells: what the focused token attends to (top) and what attends to it (bottom).

    Hovering a cell reports its position in ``hoverData`` (``customdata``), so a callback can refocus.

    Args:
        tokens: token strings of the real tokens.
        positions: their positions in the sequence.
        attends_to: ``[n]`` the focused token's attention row.
        attended_by: ``[n]`` the attention every token pays to the focused one (its column).
        focus: index into ``tokens`` of the focused token.
        per_row: cells per line.

    Returns:
        A two-panel figure on the fixed ``[0, 1]`` attention scale; the focused cell is outlined in red.
    """
    rows = max(1, math.ceil(len(tokens) / per_row))
    name = _short(tokens[focus])
    data, shapes = [], []
    r, c = divmod(focus, per_row)
    for panel, values in ((1, attends_to), (2, attended_by)):
        z, text, custom = _token_grid(tokens, positions, values, per_row)
        axes = {"xaxis": "x" if panel == 1 else "x2", "yaxis": "y" if panel == 1 else "y2"}
        data.append(_attention_heatmap_trace(
            z, text=text, customdata=custom, texttemplate="%{text}", xgap=2, ygap=2, showscale=panel == 1,
            colorbar=_attention_colorbar(), textfont={"size": 12}, **axes,
            hovertemplate="%{text} (position %{customdata})<br>attention %{z:.3f}<extra></extra>"))
        shapes.append({"type": "rect", "x0": c - 0.5, "x1": c + 0.5, "y0": r - 0.5, "y1": r + 0.5,
                       "xref": axes["xaxis"], "yref": axes["yaxis"], "line": {"color": "red", "width": 3}})
    hidden = {"visible": False}
    return go.Figure({"data": data, "layout": {
        "title": _title("text view: hover a token (red outline: the focused token)", 13), "margin": {**MARGIN, "t": 50}, "height": max(300, 140 + 80 * rows),
        "shapes": shapes, "xaxis": {**hidden, "domain": [0, 1], "anchor": "y"},
        "yaxis": {**hidden, "domain": [0.56, 0.92], "autorange": "reversed"},
        "xaxis2": {**hidden, "domain": [0, 1], "anchor": "y2"},
        "yaxis2": {**hidden, "domain": [0.0, 0.38], "autorange": "reversed"},
        "annotations": [_panel_title(f"what {name!r} (position {positions[focus]}) attends to", 0.5, 0.93),
                        _panel_title(f"what attends to {name!r}", 0.5, 0.39)]}})


def patch_overlay(image_uri: str | None, grid: np.ndarray, title: str, *, value_label: str = "attention",
                  attention_scale: bool = True) -> go.Figure:
    """The input image beside the same image with per-patch values painted over its patch grid.

    Args:
        image_uri: the image as a data URI, or ``None`` (only the grid is drawn).
        grid: ``[rows, cols]`` values, row-major like the patches in the sequence.
        title: the right panel's title.
        value_label: colour-bar title.
        attention_scale: use the fixed ``[0, 1]`` attention scale; otherwise Viridis over the data range.

    Returns:
        A two-panel figure (image | overlay); the overlay's heatmap is the last trace.
    """
    rows, cols = grid.shape
    scale = {"colorscale": ATTENTION_SCALE, "zmin": 0.0, "zmax": 1.0, "colorbar": _attention_colorbar(value_label)} \
        if attention_scale else {"colorscale": "Viridis", "colorbar": {"title": {"text": value_label}}}
    data, images, notes = [], [], [_panel_title("input image", 0.22, 1.0), _panel_title(title, 0.76, 1.0)]
    if image_uri is not None:
        data.append({"type": "image", "source": image_uri, "hoverinfo": "skip", "xaxis": "x", "yaxis": "y"})
        images.append({"source": image_uri, "xref": "x2", "yref": "y2", "x": -0.5, "y": -0.5, "sizex": cols,
                       "sizey": rows, "xanchor": "left", "yanchor": "top", "sizing": "stretch", "layer": "below"})
    else:
        notes.append({"text": "image not available", "showarrow": False, "xref": "x domain", "yref": "y domain",
                      "x": 0.5, "y": 0.5})
    data.append({"type": "heatmap", "z": grid, "opacity": 0.6 if image_uri else 1.0, "xaxis": "x2", "yaxis": "y2",
                 "hovertemplate": "patch row %{y}, col %{x}<br>" + value_label + " %{z:.3f}<extra></extra>", **scale})
    hidden = {"visible": False}
    return go.Figure({"data": data, "layout": {
        "margin": MARGIN, "height": 380, "images": images, "annotations": notes,
        "xaxis": {**hidden, "domain": [0, 0.44], "anchor": "y"},
        "yaxis": {**hidden, "domain": [0, 0.95], "anchor": "x", "scaleanchor": "x", "autorange": "reversed"},
        "xaxis2": {**hidden, "domain": [0.54, 0.98], "anchor": "y2", "range": [-0.5, cols - 0.5]},
        "yaxis2": {**hidden, "domain": [0, 0.95], "anchor": "x2", "scaleanchor": "x2", "range": [rows - 0.5, -0.5]}}})


def token_bar(labels: list[str], weights: np.ndarray, title: str, *, highlight: int | None = None,
              axis_title: str = "attention") -> go.Figure:
    """Bars of one value per token (e.g. a token's attention row); ``highlight`` marks one bar in red."""
    colours = ["#d62728" if i == highlight else QUERY_COLOUR for i in range(len(labels))]
    legend = " (red: the token itself)" if highlight is not None else ""
    return go.Figure({"data": [{"type": "bar", "x": labels, "y": weights, "marker": {"color": colours},
                                "hovertemplate": "%{x}<br>" + axis_title + " %{y:.3f}<extra></extra>"}], "layout": {
        "title": _title(title + legend), "margin": {**MARGIN, "b": 100}, "height": 340,
        "xaxis": {"title": {"text": "token"}, "tickangle": -60, "type": "category"},
        "yaxis": {"title": {"text": axis_title}}}})


def _qk_groups(frame: pd.DataFrame, colour_by: str) -> tuple[list[tuple[str, pd.DataFrame, dict]], bool]:
    """Groups of points and their marker colour for a colouring (``kind``, ``position`` or ``segment``)."""
    if colour_by == "position":
        return [("points", frame, {"color": frame["position"].to_numpy(), "coloraxis": "coloraxis"})], True
    key = "kind" if colour_by == "kind" else "segment"
    palette = {"query": QUERY_COLOUR, "key": KEY_COLOUR} if key == "kind" else KIND_COLOURS
    return [(str(v), part, {"color": palette.get(str(v), "#17becf")}) for v, part in frame.groupby(key, sort=True)], False


def _position_axis() -> dict:
    return {"colorscale": "Viridis", "colorbar": {"title": {"text": "position"}}}


def qk_small_multiples(frames: list[tuple[str, pd.DataFrame]], colour_by: str, title: str, cols: int = 4) -> go.Figure:
    """Every head of a layer as a small scatter of its joint query-key embedding (AttentionViz matrix view).

    Args:
        frames: ``(head label, points)`` per head, points as in :func:`attnlab.viz.qk.qk_scatter`.
        colour_by: ``kind``, ``position`` or ``segment``.
        title: figure title.
        cols: panels per row.

    Returns:
        One equal-scaled panel per head; every point's ``customdata`` is its panel's index in ``frames`` (a click
        names the head).
    """
    rows = max(1, math.ceil(len(frames) / cols))
    gap_x, gap_y = 0.03, 0.08 / rows
    width, height = (1 - gap_x * (cols - 1)) / cols, (1 - gap_y * (rows - 1)) / rows
    data, layout, notes, shown = [], {}, [], set()
    continuous = False
    for i, (label, frame) in enumerate(frames):
        r, c = divmod(i, cols)
        n = "" if i == 0 else str(i + 1)
        x0, y1 = c * (width + gap_x), 1 - r * (height + gap_y)
        layout[f"xaxis{n}"] = {"domain": [x0, x0 + width], "anchor": f"y{n}", "showticklabels": False,
                               "constrain": "domain"}
        # equal scales: distances in the joint embedding are what the layout means (Yeh et al. 2023)
        layout[f"yaxis{n}"] = {"domain": [y1 - height, y1], "anchor": f"x{n}", "showticklabels": False,
                               "scaleanchor": f"x{n}", "scaleratio": 1, "constrain": "domain"}
        notes.append(_panel_title(label, x0 + width / 2, y1))
        groups, continuous = _qk_groups(frame, colour_by)
        for name, part, marker in groups:
            data.append({"type": "scatter", "x": part["x"].to_numpy(), "y": part["y"].to_numpy(), "mode": "markers",
                         "name": name, "legendgroup": name, "showlegend": name not in shown and not continuous,
                         "customdata": [i] * len(part), "hovertemplate": f"{label}: click to open<extra></extra>",
                         "marker": {**marker, "size": 4}, "xaxis": f"x{n}", "yaxis": f"y{n}"})
            shown.add(name)
    layout.update({"title": _title(title), "margin": {**MARGIN, "t": 70}, "height": 60 + 190 * rows,
                   "legend": {"title": {"text": colour_by}}, "annotations": notes})
    if continuous:
        layout["coloraxis"] = _position_axis()
    return go.Figure({"data": data, "layout": layout})


def _lattice_position(name: str, n_heads: int) -> tuple[float, float] | None:
    if name == "embed":
        return -1.0, (n_heads - 1) / 2
    if "." in name:
        layer, head = name.split(".")
        return float(layer), float(head)
    return None


def circuit_figure(edges: pd.DataFrame, n_layers: int, n_heads: int, min_strength: float = 0.0) -> go.Figure:
    """Head communication graph: heads on a layer x head lattice, lines from upstream writers to readers.

    Args:
        edges: rows with ``upstream``, ``downstream`` (``"L.H"`` or ``"embed"``), ``side`` (``src``/``dest``),
            ``strength``.
        n_layers, n_heads: the lattice.
        min_strength: edges below this strength are hidden.

    Returns:
        Lines per side (key-side reads blue, query-side reads orange), wider for stronger edges, with an arrow
        from writer to reader, and head nodes sized by their number of edges.
    """
    shown = edges[edges["strength"] >= min_strength]
    data, degree, arrows = [], {}, []
    for side, colour in (("src", "#1f77b4"), ("dest", "#ff7f0e")):
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
        "title": {**_title(f"Head communication graph ({len(shown)} edges with strength ≥ {min_strength:g})"),
                  "subtitle": {"text": "strength: share among the upstream heads' contributions (embeddings and MLPs "
                                       "not counted; the table's share_of_all counts every writer)"}},
        "margin": {**MARGIN, "t": 90}, "height": 480, "annotations": arrows,
        "legend": {"orientation": "h", "y": -0.18},
        "xaxis": {"title": {"text": "layer"}, "dtick": 1, "range": [-1.8 if "embed" in degree else -0.5, n_layers - 0.5]},
        "yaxis": {"title": {"text": "head"}, "dtick": 1, "autorange": "reversed"}}})


def compare_attention(base: np.ndarray, method: np.ndarray, labels: list[str], titles: tuple[str, str]) -> go.Figure:
    """Baseline and method attention side by side, and their difference (method - baseline).

    Args:
        base, method: ``[Q, K]`` attention of the same tokens.
        labels: token labels.
        titles: the two panels' titles.

    Returns:
        Three heatmaps: baseline, method (fixed attention scale) and the difference (``RdBu`` around 0); every
        token keeps its label at any length (ticks thin to what fits, zoom shows more, hover names each cell).
    """
    diff = method - base
    bound = max(float(np.abs(diff).max()), 1e-6)
    hover = "query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"
    data, layout = [], {}
    domains = ([0, 0.27], [0.35, 0.62], [0.72, 0.96])
    for i, z in enumerate((base, method)):
        n = "" if i == 0 else str(i + 1)
        data.append(_attention_heatmap_trace(z, x=labels, y=labels, showscale=i == 0, hovertemplate=hover,
                                             colorbar=_attention_colorbar(x=0.64), xaxis=f"x{n}", yaxis=f"y{n}"))
    data.append({"type": "heatmap", "z": diff, "x": labels, "y": labels, "colorscale": "RdBu", "zmid": 0,
                 "zmin": -bound, "zmax": bound, "colorbar": {"title": {"text": "Δ"}, "x": 1.0}, "hovertemplate": hover,
                 "xaxis": "x3", "yaxis": "y3"})
    for i, domain in enumerate(domains):
        n = "" if i == 0 else str(i + 1)
        layout[f"xaxis{n}"] = {"domain": domain, "anchor": f"y{n}", "type": "category", "tickangle": -60,
                               "tickfont": {"size": 9}}
        layout[f"yaxis{n}"] = {"domain": [0, 0.92], "anchor": f"x{n}", "type": "category", "autorange": "reversed",
                               "showticklabels": i == 0, "tickfont": {"size": 9}}
    names = (*titles, "difference (method - baseline)")
    layout.update({"margin": {**MARGIN, "l": 100, "b": 100}, "height": 460,
                   "annotations": [_panel_title(t, sum(d) / 2, 0.93) for t, d in zip(names, domains)]})
    return go.Figure({"data": data, "layout": layout})


def eval_bars(summary: pd.DataFrame, metric: str) -> go.Figure:
    """One metric of an eval summary table per method, grouped by task and split."""
    frame = summary.dropna(subset=[metric]) if metric in summary else summary.iloc[0:0]
    data = []
    if len(frame):
        frame = frame.assign(group=frame["task"].astype(str) + " / " + frame["split"].astype(str))
        for method, part in frame.groupby("method", sort=False):
            data.append({"type": "bar", "x": part["group"].tolist(), "y": part[metric].to_numpy(), "name": str(method),
                         "hovertemplate": "%{x}<br>" + metric + " %{y:.3f}<extra>" + str(method) + "</extra>"})
    return go.Figure({"data": data, "layout": {
        "barmode": "group", "title": _title(f"{metric} by method"), "margin": MARGIN, "height": 360,
        "legend": {"title": {"text": "method"}}, "xaxis": {"title": {"text": "task / split"}},
        "yaxis": {"title": {"text": metric}}}})


def register_norm_map(result, batch: int, layer: int, model: str) -> go.Figure:
    """:func:`attnlab.viz.registers.artifact_map` titled with the model and whether it has register tokens."""
    from attnlab.viz.registers import artifact_map

    fig = artifact_map(result, batch=batch, layer=layer)
    regs = "with" if result.register_mask.any() else "without"
    fig.update_layout(title=f"{model} ({regs} registers): token norms at layer {result.layers[layer]}", height=420)
    return fig
