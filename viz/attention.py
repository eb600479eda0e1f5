"""Attention figures: one head's pattern, the text view, the patch overlay, per-token bars and a method's
attention beside the baseline's. Plain arrays in, ``go.Figure`` out; colours from :mod:`attnlab.viz.style`."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from .style import (ATTENTION_SCALE, MARGIN, QUERY_COLOUR, attention_colorbar, attention_trace, layout_title,
                    panel_title)

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
                        "colorbar": attention_colorbar("attention")}
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
                      "layout": {"title": layout_title(title), "margin": {**MARGIN, "l": 120, "b": 120, "t": 70},
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
        data.append(attention_trace(
            z, text=text, customdata=custom, texttemplate="%{text}", xgap=2, ygap=2, showscale=panel == 1,
            colorbar=attention_colorbar(), textfont={"size": 12}, **axes,
            hovertemplate="%{text} (position %{customdata})<br>attention %{z:.3f}<extra></extra>"))
        shapes.append({"type": "rect", "x0": c - 0.5, "x1": c + 0.5, "y0": r - 0.5, "y1": r + 0.5,
                       "xref": axes["xaxis"], "yref": axes["yaxis"], "line": {"color": "red", "width": 3}})
    hidden = {"visible": False}
    return go.Figure({"data": data, "layout": {
        "title": layout_title("text view: hover a token (red outline: the focused token)", 13), "margin": {**MARGIN, "t": 50}, "height": max(300, 140 + 80 * rows),
        "shapes": shapes, "xaxis": {**hidden, "domain": [0, 1], "anchor": "y"},
        "yaxis": {**hidden, "domain": [0.56, 0.92], "autorange": "reversed"},
        "xaxis2": {**hidden, "domain": [0, 1], "anchor": "y2"},
        "yaxis2": {**hidden, "domain": [0.0, 0.38], "autorange": "reversed"},
        "annotations": [panel_title(f"what {name!r} (position {positions[focus]}) attends to", 0.5, 0.93),
                        panel_title(f"what attends to {name!r}", 0.5, 0.39)]}})


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
    scale = {"colorscale": ATTENTION_SCALE, "zmin": 0.0, "zmax": 1.0, "colorbar": attention_colorbar(value_label)} \
        if attention_scale else {"colorscale": "Viridis", "colorbar": {"title": {"text": value_label}}}
    data, images, notes = [], [], [panel_title("input image", 0.22, 1.0), panel_title(title, 0.76, 1.0)]
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
        "title": layout_title(title + legend), "margin": {**MARGIN, "b": 100}, "height": 340,
        "xaxis": {"title": {"text": "token"}, "tickangle": -60, "type": "category"},
        "yaxis": {"title": {"text": axis_title}}}})


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
        data.append(attention_trace(z, x=labels, y=labels, showscale=i == 0, hovertemplate=hover,
                                             colorbar=attention_colorbar(x=0.64), xaxis=f"x{n}", yaxis=f"y{n}"))
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
                   "annotations": [panel_title(t, sum(d) / 2, 0.93) for t, d in zip(names, domains)]})
    return go.Figure({"data": data, "layout": layout})
