"""Figures of joint query-key embeddings (AttentionViz's single-head and matrix views).

Every function takes a fitted :class:`~attnlab.probes.qk_embedding.QKEmbedding`, its ``points_`` table, or a
:class:`~attnlab.probes.qk_heads.QKHeadsEmbedding`, and returns a ``go.Figure``; nothing is shown or saved.

Colour encodings (``color=``): ``kind`` (queries green, keys pink, as in the paper), a categorical column
(``segment``, ``category`` = token type) with one trace per value, or a numeric column (``position``, ``norm``,
``input``, ``patch_row``, ``patch_col``) on a shared colour scale with one trace per kind. Outside ``kind``,
queries are circles and keys diamonds. Hovering a point shows its token, kind, position and input.

Example:
    >>> emb = QKEmbedding(method="pca").fit(trace, layer=0, head=0)  # doctest: +SKIP
    >>> qk_scatter(emb, color="position")                            # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import MARGIN, QK_COLOURS, SEGMENT_COLOURS, layout_title, panel_title

KIND_COLORS = QK_COLOURS
KIND_SYMBOLS = {"query": "circle", "key": "diamond"}
CATEGORICAL = ("kind", "segment", "category")
NUMERIC = ("position", "norm", "input", "patch_row", "patch_col")
AXIS_NAMES = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}
_HOVER = "%{customdata[0]}<br>%{customdata[1]} at position %{customdata[2]}, input %{customdata[3]}<extra></extra>"


def _points(source) -> pd.DataFrame:
    frame = getattr(source, "points_", source)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"Expected a fitted QKEmbedding or its points_ table, got {type(source).__name__}")
    missing = {"kind", "token", "position", "input", "x", "y"} - set(frame.columns)
    if missing:
        raise ValueError(f"The points table lacks columns {sorted(missing)}; pass QKEmbedding(...).fit(...).points_")
    return frame


def axis_titles(method: str | None, n: int) -> list[str]:
    """``["t-SNE 1", "t-SNE 2", ...]`` for a projection method (``"dim 1"`` when unknown)."""
    prefix = AXIS_NAMES.get(method or "", "dim ")
    return [f"{prefix}{i + 1}" for i in range(n)]


def _check_color(frame: pd.DataFrame, color: str) -> None:
    if color not in CATEGORICAL + NUMERIC:
        raise ValueError(f"Unknown colour encoding {color!r}; choose from {CATEGORICAL + NUMERIC}")
    if color not in frame.columns:
        raise ValueError(f"The points table has no {color!r} column")


def _trace(part: pd.DataFrame, dims: tuple[str, ...], name: str, marker: dict, **kw):
    """One marker trace; ``customdata`` per point is ``(token, kind, position, input, batch item)``."""
    batch = part["batch"] if "batch" in part else part["input"]
    custom = np.stack([part["token"].astype(str), part["kind"], part["position"], part["input"], batch], axis=1)
    coords = {axis: part[axis].to_numpy() for axis in dims}
    cls = go.Scatter3d if len(dims) == 3 else go.Scattergl
    return cls(**coords, mode="markers", name=name, marker=marker, customdata=custom, hovertemplate=_HOVER, **kw)


def point_traces(frame: pd.DataFrame, color: str = "kind", dims: tuple[str, ...] = ("x", "y"), size: float = 4,
                 showlegend: bool = True) -> list:
    """The marker traces of one head's points for a colour encoding (see the module docstring)."""
    _check_color(frame, color)
    traces = []
    if color == "kind":
        for kind in ("query", "key"):
            part = frame[frame["kind"] == kind]
            traces.append(_trace(part, dims, kind, dict(color=KIND_COLORS[kind], size=size), legendgroup=kind,
                                 showlegend=showlegend))
    elif color in CATEGORICAL:
        for value in sorted(frame[color].astype(str).unique()):
            part = frame[frame[color].astype(str) == value]
            symbols = part["kind"].map(KIND_SYMBOLS).to_numpy()
            marker = dict(size=size, symbol=symbols)
            if color == "segment" and value in SEGMENT_COLOURS:
                marker["color"] = SEGMENT_COLOURS[value]  # the segment colours of every other figure
            traces.append(_trace(part, dims, value or "(none)", marker, legendgroup=value, showlegend=showlegend))
    else:
        for kind in ("query", "key"):
            part = frame[frame["kind"] == kind]
            marker = dict(size=size, symbol=KIND_SYMBOLS[kind], color=part[color].to_numpy(dtype=float),
                          coloraxis="coloraxis")
            traces.append(_trace(part, dims, kind, marker, legendgroup=kind, showlegend=showlegend))
    return traces


def faithfulness_note(faith: dict | None) -> str:
    """One line saying how far a layout can be trusted (``""`` without measurements): the distance-logit
    Spearman in the picture and in the joint space, and how often the nearest key is the most attended one."""
    if not faith:
        return ""
    layout, joint = faith["layout_correlation"], faith["joint_correlation"]
    verdict = "distance tracks attention" if layout <= -0.3 else "weakly faithful" if layout < 0 else \
        "distance does NOT track attention here"
    return (f"{verdict}: Spearman(distance, logit) {layout:.2f} in this picture ({joint:.2f} before projecting); "
            f"nearest key = most attended key for {faith['nearest_key']:.0%} of queries "
            f"(chance {faith['nearest_key_chance']:.0%})")


def _title(frame: pd.DataFrame, title: str | None) -> str:
    """``title`` (default: the layer, head and method), over the faithfulness note when the points carry one."""
    attrs = frame.attrs
    where = f"layer {attrs['layer']}, head {attrs['head']}" if attrs.get("layer") is not None else "one head"
    main = title if title is not None else f"Queries and keys, {where} ({attrs.get('method', 'embedding')})"
    note = faithfulness_note(attrs.get("faithfulness"))
    return main + (f"<br><sup>{note}</sup>" if note else "")


def qk_scatter(source, color: str = "kind", title: str | None = None, size: float = 4) -> go.Figure:
    """2-D scatter of one head's joint query-key embedding.

    Args:
        source: a fitted ``QKEmbedding`` or its ``points_`` (columns ``kind, token, position, input, x, y``).
        color: ``kind`` | ``segment`` | ``category`` | ``position`` | ``norm`` | ``input`` | ``patch_row`` |
            ``patch_col``.
        title: figure title; default names the layer, head and method. A fitted embedding adds a line below it
            saying how faithful the picture is (:func:`faithfulness_note`).
        size: marker size in pixels.

    Returns:
        The figure: one trace per kind or category, equal axis scales.
    """
    frame = _points(source)
    fig = go.Figure(point_traces(frame, color, ("x", "y"), size))
    xt, yt = axis_titles(frame.attrs.get("method"), 2)
    fig.update_layout(title=_title(frame, title), xaxis_title=xt, yaxis_title=yt, template="plotly_white",
                      legend_title_text=color)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    if color in NUMERIC:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar_title=color))
    return fig


def qk_scatter_3d(source, color: str = "kind", title: str | None = None, size: float = 3) -> go.Figure:
    """3-D scatter of a head embedded with ``n_components=3`` (same encodings as :func:`qk_scatter`)."""
    frame = _points(source)
    if "z" not in frame.columns:
        raise ValueError("This embedding is 2-D; fit QKEmbedding(n_components=3) for a 3-D figure")
    fig = go.Figure(point_traces(frame, color, ("x", "y", "z"), size))
    xt, yt, zt = axis_titles(frame.attrs.get("method"), 3)
    fig.update_layout(title=_title(frame, title), scene=dict(xaxis_title=xt, yaxis_title=yt, zaxis_title=zt,
                                                             aspectmode="data"),
                      template="plotly_white", legend_title_text=color)
    if color in NUMERIC:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar_title=color))
    return fig


def qk_heads_matrix(result, color: str = "kind", size: float = 2, max_points: int | None = None,
                    seed: int = 0) -> go.Figure:
    """AttentionViz's matrix view: one small 2-D joint embedding per head, rows = layers, columns = heads.

    Args:
        result: a :class:`~attnlab.probes.qk_heads.QKHeadsEmbedding` (from ``embed_all_heads``).
        color: colour encoding, as in :func:`qk_scatter`.
        size: marker size.
        max_points: draw at most this many points per head (the same random subset in every cell; ``None`` = all).
        seed: seed of that subset.

    Returns:
        The figure with ``len(layers) * len(heads)`` subplots titled ``L{layer} H{head} ρ {rho}``, ``rho`` the
        Spearman correlation of distance and logit in that head's picture (negative = the layout can be read).
    """
    layers, heads = list(result.layers), list(result.heads)
    n_points = len(result.points)
    keep = np.arange(n_points)
    if max_points is not None and max_points < n_points:
        keep = np.sort(np.random.default_rng(seed).choice(n_points, max_points, replace=False))
    titles = [f"L{l} H{h} ρ {result.layout_correlations[r, c]:+.2f}" for r, l in enumerate(layers)
              for c, h in enumerate(heads)]
    fig = make_subplots(rows=len(layers), cols=len(heads), subplot_titles=titles,
                        horizontal_spacing=0.01 if len(heads) > 6 else 0.04,
                        vertical_spacing=0.03 if len(layers) > 6 else 0.08)
    for r, layer in enumerate(layers, start=1):
        for c, head in enumerate(heads, start=1):
            frame = result.head_frame(layer, head).iloc[keep]
            for trace in point_traces(frame, color, ("x", "y"), size, showlegend=(r, c) == (1, 1)):
                fig.add_trace(trace, row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(title=f"Joint query-key embeddings of {len(layers) * len(heads)} heads ({result.method})<br><sup>"
                            "ρ: Spearman(distance in the panel, attention logit); near 0 or positive, the panel's "
                            "geometry does not show the head's attention</sup>",
                      template="plotly_white", height=max(300, 170 * len(layers)), width=max(400, 170 * len(heads)),
                      legend_title_text=color)
    if color in NUMERIC:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar_title=color))
    return fig


def _qk_groups(frame: pd.DataFrame, colour_by: str) -> tuple[list[tuple[str, pd.DataFrame, dict]], bool]:
    """Groups of points and their marker colour for a colouring (``kind``, ``position`` or ``segment``)."""
    if colour_by == "position":
        return [("points", frame, {"color": frame["position"].to_numpy(), "coloraxis": "coloraxis"})], True
    key = "kind" if colour_by == "kind" else "segment"
    palette = QK_COLOURS if key == "kind" else SEGMENT_COLOURS
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
        notes.append(panel_title(label, x0 + width / 2, y1))
        groups, continuous = _qk_groups(frame, colour_by)
        for name, part, marker in groups:
            data.append({"type": "scatter", "x": part["x"].to_numpy(), "y": part["y"].to_numpy(), "mode": "markers",
                         "name": name, "legendgroup": name, "showlegend": name not in shown and not continuous,
                         "customdata": [i] * len(part), "hovertemplate": f"{label}: click to open<extra></extra>",
                         "marker": {**marker, "size": 4}, "xaxis": f"x{n}", "yaxis": f"y{n}"})
            shown.add(name)
    layout.update({"title": layout_title(title), "margin": {**MARGIN, "t": 70}, "height": 60 + 190 * rows,
                   "legend": {"title": {"text": colour_by}}, "annotations": notes})
    if continuous:
        layout["coloraxis"] = _position_axis()
    return go.Figure({"data": data, "layout": layout})
