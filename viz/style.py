"""Colours, margins and the shared figure parts of every attnlab figure, so two figures can be compared by eye.

* attention weights: :data:`ATTENTION_SCALE` on the fixed range ``[0, 1]`` (stops packed near 0, where most
  weights lie; the colour bar shows the mapping);
* per-head statistics: ``Viridis`` over the data's range, on the one layer x head grid :func:`head_grid`;
  signed values (patching effects, differences): ``RdBu`` centred at 0, positive blue;
* queries green and keys pink (AttentionViz's convention, Yeh et al. 2023); token segments keep one colour each
  across the dashboard, the notebooks and the CLI's HTML.

Speed: the dashboard redraws figures on every click, so each is described as one dict and validated once by
``go.Figure(spec)`` (about ten times faster than ``make_subplots`` and repeated ``update_*`` calls); subplots
are laid out with explicit axis domains.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

QUERY_COLOUR = "#1b9e77"
KEY_COLOUR = "#e7298a"
#: query/key -> colour.
QK_COLOURS = {"query": QUERY_COLOUR, "key": KEY_COLOUR}
#: token segment kind -> colour (``""``: a token outside every segment).
SEGMENT_COLOURS = {"text": "#1f77b4", "image": "#ff7f0e", "special": "#7f7f7f", "system": "#9467bd",
                   "register": "#d62728", "pad": "#c7c7c7", "": "#17becf"}
#: circuit edge colour per side: the writer fed the reading head's key token (src) or its query token (dest).
SIDE_COLOURS = {"src": "#1f77b4", "dest": "#ff7f0e"}
#: default plot margins (pixels).
MARGIN = {"l": 60, "r": 20, "t": 50, "b": 50}
#: Viridis with its stops packed towards 0, on the fixed range [0, 1].
ATTENTION_SCALE = [[0.0, "#440154"], [0.02, "#482878"], [0.05, "#3e4989"], [0.1, "#31688e"], [0.18, "#26828e"],
                   [0.3, "#1f9e89"], [0.45, "#35b779"], [0.65, "#6ece58"], [0.85, "#b5de2b"], [1.0, "#fde725"]]
ATTENTION_TICKS = [0, 0.1, 0.25, 0.5, 0.75, 1]


def layout_title(text: str, size: int | None = None) -> dict:
    """A layout title (``size``: font size)."""
    return {"text": text, **({"font": {"size": size}} if size else {})}


def attention_colorbar(title: str = "attention", **extra) -> dict:
    """The colour bar of the fixed attention scale."""
    return {"title": {"text": title}, "tickvals": ATTENTION_TICKS, **extra}


def attention_trace(z, **extra) -> dict:
    """A heatmap trace dict on the fixed attention scale."""
    return {"type": "heatmap", "z": z, "colorscale": ATTENTION_SCALE, "zmin": 0.0, "zmax": 1.0, **extra}


#: Invisible mark around hover labels of a :func:`hover_aliases` axis (see there).
TICK_MARK = "\u200b"


def hover_aliases(aliases: dict[str, str] | None) -> dict:
    """Category-axis settings under which hovering shows ``aliases[label]`` in place of ``label`` while the ticks
    keep ``label`` (e.g. a token's raw word piece beside its word, without a string per heatmap cell).

    Plotly applies ``labelalias`` to tick and hover labels after adding the tick prefix and suffix; hover labels
    get both, while with ``showtickprefix="first"`` and ``showticksuffix="last"`` no tick but a lone one gets
    both. So aliases keyed by ``mark + label + mark`` (an invisible mark) reach the hover only.

    Args:
        aliases: ``{category label: hover text}``; ``None`` or empty: no settings.

    Returns:
        The tick prefix and suffix settings and ``labelalias``, to merge into the axis layout.
    """
    if not aliases:
        return {}
    return {"tickprefix": TICK_MARK, "showtickprefix": "first", "ticksuffix": TICK_MARK, "showticksuffix": "last",
            "labelalias": {f"{TICK_MARK}{k}{TICK_MARK}": v for k, v in aliases.items()}}


def panel_title(text: str, x: float, y: float) -> dict:
    """A subplot's title as a paper-anchored annotation."""
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


def head_grid(values: np.ndarray, layers=None, label: str = "value", *, signed: bool = False, centre: float = 0.0,
              zrange=None, selected: tuple[int, int] | None = None, title: str | None = None, hover=None,
              annotate: bool = False) -> go.Figure:
    """The layer x head grid every per-head figure uses (statistics, VHD, sink mass, patching effects).

    Args:
        values: ``[L, H]`` the statistic (NaN where it does not apply).
        layers: layer index of each row (default ``0 .. L-1``).
        label: the statistic's name (colour-bar title and hover).
        signed: a diverging scale centred at ``centre``, symmetric about it (patching effects: 0; a ratio to
            chance: 1).
        centre: the diverging scale's midpoint.
        zrange: ``(zmin, zmax)``, or ``None`` for the data range.
        selected: ``(layer, head)`` to outline.
        title: figure title (default ``"<label> per head"``).
        hover: ``[L][H]`` extra text per cell, shown under the value (e.g. which tokens are sinks).
        annotate: write each value in its cell (small grids).

    Returns:
        A figure with one heatmap trace: rows are layers (first at the bottom), columns heads.
    """
    values = np.asarray(values, dtype=float)  # (L, H)
    rows = [str(i) for i in (range(values.shape[0]) if layers is None else layers)]
    scale: dict = {"colorscale": "Viridis"}
    if signed:
        bound = float(np.nanmax(np.abs(values - centre))) if np.isfinite(values).any() else 1.0
        scale = {"colorscale": "RdBu", "zmid": centre, "zmin": centre - bound, "zmax": centre + bound}
    elif zrange is not None:
        scale.update(zmin=zrange[0], zmax=zrange[1])
    shapes = []
    if selected is not None and str(selected[0]) in rows:
        row = rows.index(str(selected[0]))
        shapes.append({"type": "rect", "x0": selected[1] - 0.5, "x1": selected[1] + 0.5, "y0": row - 0.5,
                       "y1": row + 0.5, "line": {"color": "white", "width": 3}})
    cells: dict = {}
    if annotate:
        cells = {"text": [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in values],
                 "texttemplate": "%{text}"}
    extra = ""
    if hover is not None:
        cells["customdata"] = hover
        extra = "<br>%{customdata}"
    return go.Figure({"data": [{
        "type": "heatmap", "z": values, "x": list(range(values.shape[1])), "y": rows, "xgap": 1, "ygap": 1,
        "colorbar": {"title": {"text": label}}, **scale, **cells,
        "hovertemplate": "layer %{y}, head %{x}<br>" + label + " %{z:.3f}" + extra + "<extra></extra>"}], "layout": {
        "title": {"text": title or f"{label} per head"}, "margin": MARGIN, "shapes": shapes,
        "height": max(300, 60 + 28 * values.shape[0]), "xaxis": {"title": {"text": "head"}, "dtick": 1},
        "yaxis": {"title": {"text": "layer"}, "type": "category"}}})
