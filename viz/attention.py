"""Attention figures: one head's pattern, the text view, the patch overlay, per-token bars and a method's
attention beside the baseline's. Plain arrays in, ``go.Figure`` out; colours from :mod:`attnlab.viz.style`."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from .style import (ATTENTION_SCALE, MARGIN, QUERY_COLOUR, attention_colorbar, attention_trace, hover_aliases, layout_title, panel_title)

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
                      exclude_first: bool = False, hover_labels: dict[str, str] | None = None,
                      key_labels: list[str] | None = None,
                      key_hover_labels: dict[str, str] | None = None) -> go.Figure:
    """One head's attention pattern with token labels on both axes, in square cells.

    Every token keeps its label: the axes thin their ticks to what fits and show more as one zooms in, and
    hovering a cell names its query and key.

    Args:
        pattern: ``[Q, K]`` post-softmax attention of the real tokens.
        labels: ``[Q]`` ``"position:token"`` of the query tokens (unique); the keys' too unless ``key_labels``.
        title: figure title.
        scale: one of :data:`COLOUR_SCALES`, or ``auto``/``None`` (:func:`resolve_scale`).
        exclude_first: drop the first token's key column, whose sink weight (Xiao et al. 2024, §3) would
            otherwise set the colour range for all the rest.
        hover_labels: ``{label: text}`` shown on hover in place of some labels (a word piece's raw form);
            the axes keep ``labels`` (:func:`attnlab.viz.style.hover_aliases`).
        key_labels: ``[K]`` labels of the key tokens when they are another sequence's (cross-attention: the
            encoder's tokens, the queries the decoder's); ``None``: the keys are the queries.
        key_hover_labels: as ``hover_labels``, for ``key_labels``.

    Returns:
        A heatmap (queries as rows, first at the top; keys as columns).

    Raises:
        ValueError: labels that do not match the pattern's ``[Q, K]``.
    """
    keys, key_hover = (labels, hover_labels) if key_labels is None else (key_labels, key_hover_labels)
    if (len(labels), len(keys)) != np.shape(pattern):
        raise ValueError(f"The pattern is {list(pattern.shape)} (queries x keys) but got {len(labels)} query and "
                         f"{len(keys)} key labels; give one label per row and column (key_labels for cross-attention)")
    if exclude_first and pattern.shape[-1] > 1:
        pattern, keys = pattern[:, 1:], keys[1:]
    scale = resolve_scale(scale, max(len(labels), len(keys)))
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
                                 "xaxis": {**axis, **hover_aliases(key_hover), "title": {"text": "key"},
                                           "tickangle": -60, "domain": [0, 0.86]},
                                 "yaxis": {**axis, **hover_aliases(hover_labels), "title": {"text": "query"},
                                           "autorange": "reversed",
                                           "scaleanchor": "x", "scaleratio": 1}}})


#: The minimap's most blocks per axis, and the window (tokens per axis) a click on it zooms the heatmap to.
MINIMAP_CELLS = 96
ZOOM_TOKENS = 40


def max_pool(matrix: np.ndarray, cells: int = MINIMAP_CELLS) -> tuple[np.ndarray, int, int]:
    """``matrix`` cut into blocks of ``bq x bk`` cells, each block its largest value (a lone strong weight stays).

    Args:
        matrix: ``[Q, K]`` values.
        cells: the most blocks per axis; ``bq = ceil(Q / cells)``, ``bk = ceil(K / cells)``.

    Returns:
        ``(pooled, bq, bk)``: ``pooled`` is ``[ceil(Q / bq), ceil(K / bk)]``; block ``(i, j)`` covers rows
        ``i*bq .. (i+1)*bq - 1`` and columns ``j*bk .. (j+1)*bk - 1`` (the last ones may be shorter).
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    bq, bk = (max(1, math.ceil(n / max(cells, 1))) for n in matrix.shape)
    rows = np.maximum.reduceat(matrix, np.arange(0, matrix.shape[0], bq), axis=0)
    return np.maximum.reduceat(rows, np.arange(0, matrix.shape[1], bk), axis=1), bq, bk


def view_rectangle(view) -> dict:
    """The minimap's outline of the window the heatmap shows.

    Args:
        view: ``((x0, x1), (y0, y1))`` axis ranges of the heatmap (token indices, in any order); an axis given as
            ``None`` is shown whole (the outline spans that axis's domain).

    Returns:
        A ``rect`` layout shape on the minimap's axes.
    """
    (xs, ys) = view
    shape = {"type": "rect", "line": {"color": "red", "width": 2}, "fillcolor": "rgba(0,0,0,0)"}
    for axis, span in (("x", xs), ("y", ys)):
        if span is None:
            shape.update({f"{axis}ref": f"{axis} domain", f"{axis}0": 0, f"{axis}1": 1})
        else:
            shape.update({f"{axis}ref": axis, f"{axis}0": float(min(span)), f"{axis}1": float(max(span))})
    return shape


def attention_minimap(matrix: np.ndarray, view=None, cells: int = MINIMAP_CELLS) -> go.Figure:
    """An overview of one head's whole pattern for long inputs, to see where to zoom the heatmap.

    Args:
        matrix: ``[Q, K]`` the attention the heatmap draws (same rows and columns).
        view: ``((x0, x1), (y0, y1))`` the key and query index ranges the heatmap shows, outlined in red
            (:func:`view_rectangle`); ``None``: no outline.
        cells: the most blocks per axis (:func:`max_pool`).

    Returns:
        One heatmap of the block maxima, coloured 0 to the matrix's largest value (the heatmap's per-head max);
        both axes in token indices (cell ``i`` spans ``i - 0.5 .. i + 0.5``, as on the heatmap), equal scales,
        no tick labels, queries from the top.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    pooled, bq, bk = max_pool(matrix, cells)
    z, colours = colour_range(pooled, "max")
    n_q, n_k = matrix.shape
    axis = {"showticklabels": False, "ticks": "", "showgrid": False, "zeroline": False, "fixedrange": True,
            "constrain": "domain"}
    return go.Figure({"data": [{
        "type": "heatmap", "z": z, "x": (np.arange(pooled.shape[1]) * bk + (bk - 1) / 2).tolist(),
        "y": (np.arange(pooled.shape[0]) * bq + (bq - 1) / 2).tolist(), **colours, "showscale": False,
        "hovertemplate": f"queries ~%{{y:.0f}}, keys ~%{{x:.0f}} ({bq}x{bk} block)<br>largest weight %{{z:.4f}}"
                         "<extra></extra>"}], "layout": {
        "title": layout_title("overview: click to zoom the heatmap there", 12), "height": 320,
        "margin": {**MARGIN, "l": 30, "r": 30, "b": 30}, "shapes": [view_rectangle(view)] if view else [],
        "xaxis": {**axis, "range": [-0.5, n_k - 0.5], "title": {"text": "key"}},
        "yaxis": {**axis, "range": [n_q - 0.5, -0.5], "title": {"text": "query"}, "scaleanchor": "x",
                  "scaleratio": 1}}})


def zoom_window(centre: float, n: int, size: int = ZOOM_TOKENS) -> list[float]:
    """The axis range of a window of ``size`` tokens centred on ``centre``, moved to fit in ``[0, n)``.

    Returns:
        ``[start - 0.5, end - 0.5]``: the window shows tokens ``start .. end - 1`` (``end - start = min(size, n)``).
    """
    start = int(round(centre)) - size // 2
    start = max(0, min(start, n - size))
    return [start - 0.5, min(start + size, n) - 0.5]


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
              axis_title: str = "attention", hover_labels: dict[str, str] | None = None) -> go.Figure:
    """Bars of one value per token (e.g. a token's attention row); ``highlight`` marks one bar in red;
    ``hover_labels`` as in :func:`attention_heatmap` (a word piece's raw form on hover)."""
    colours = ["#d62728" if i == highlight else QUERY_COLOUR for i in range(len(labels))]
    legend = " (red: the token itself)" if highlight is not None else ""
    return go.Figure({"data": [{"type": "bar", "x": labels, "y": weights, "marker": {"color": colours},
                                "hovertemplate": "%{x}<br>" + axis_title + " %{y:.3f}<extra></extra>"}], "layout": {
        "title": layout_title(title + legend), "margin": {**MARGIN, "b": 100}, "height": 340,
        "xaxis": {"title": {"text": "token"}, "tickangle": -60, "type": "category", **hover_aliases(hover_labels)},
        "yaxis": {"title": {"text": axis_title}}}})


def compare_attention(base: np.ndarray, method: np.ndarray, labels: list[str], titles: tuple[str, str],
                      hover_labels: dict[str, str] | None = None) -> go.Figure:
    """Baseline and method attention side by side, and their difference (method - baseline).

    Args:
        base, method: ``[Q, K]`` attention of the same tokens.
        labels: token labels.
        titles: the two panels' titles.
        hover_labels: as in :func:`attention_heatmap` (a word piece's raw form on hover, the axes keep ``labels``).

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
                               "tickfont": {"size": 9}, **hover_aliases(hover_labels)}
        layout[f"yaxis{n}"] = {"domain": [0, 0.92], "anchor": f"x{n}", "type": "category", "autorange": "reversed",
                               "showticklabels": i == 0, "tickfont": {"size": 9}, **hover_aliases(hover_labels)}
    names = (*titles, "difference (method - baseline)")
    layout.update({"margin": {**MARGIN, "l": 100, "b": 100}, "height": 460,
                   "annotations": [panel_title(t, sum(d) / 2, 0.93) for t, d in zip(names, domains)]})
    return go.Figure({"data": data, "layout": layout})
