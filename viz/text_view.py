"""The bertviz-style text view of attention: tokens laid out as wrapped text, each cell coloured by attention.

Cells are as wide as their tokens and wrap like a paragraph (:func:`token_lines`); one panel shows what the focus
token attends to, the other what attends to it, in the manner of bertviz (Vig, 2019).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .attention import colour_range
from .style import MARGIN, layout_title, panel_title

#: The text view's line width, in characters of its monospace font: at 11 px (~6.6 px a character) a line fits
#: a half-width column of 480 px or more; in a narrower one plotly shrinks the text inside each cell to fit.
LINE_CHARS = 72
#: Room around a token's text inside its cell, in characters.
CELL_PAD = 1.5
TEXT_FONT = {"family": "Menlo, Consolas, 'DejaVu Sans Mono', monospace", "size": 11}


def cell_text(token: str) -> str:
    """A token as its cell shows it: whitespace made visible (``↵`` newline, ``⇥`` tab, ``␣`` a blank token),
    plotly's markup characters escaped; cut with ``…`` only when longer than a whole line."""
    shown = token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥") or "␣"
    if not shown.strip():
        shown = "␣" * len(shown)
    width = int(LINE_CHARS - CELL_PAD)
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return escape_markup(shown)


def escape_markup(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` escaped, so plotly draws ``<s>`` or ``<br>`` tokens as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text_length(shown: str) -> int:
    """Characters ``shown`` (a :func:`cell_text`) draws: each escaped entity is one."""
    return len(shown.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def token_lines(widths: list[float], line: float = LINE_CHARS) -> tuple[list[int], list[float]]:
    """Wrap cells of the given widths into lines, like words of a paragraph.

    Args:
        widths: ``[n]`` each cell's width (characters), at most ``line``.
        line: the line width.

    Returns:
        ``(rows, starts)``: ``[n]`` each cell's line and ``[n]`` its left edge; cells of a line do not overlap
        and end within ``line``.
    """
    rows, starts, row, x = [], [], 0, 0.0
    for w in widths:
        if x > 0 and x + w > line:
            row, x = row + 1, 0.0
        rows.append(row)
        starts.append(x)
        x += w
    return rows, starts


def token_text_view(tokens: list[str], positions: list[int], attends_to: np.ndarray, attended_by: np.ndarray,
                    focus: int, words: list[str] | None = None, *, keys: dict | None = None) -> go.Figure:
    """The text as coloured token cells (bertviz, circuitsvis): what the focused token attends to (top) and
    what attends to it (bottom).

    Each cell is as wide as its token (a monospace font; lines wrap at :data:`LINE_CHARS`), so no label is cut
    or overlaps another at any length. Each panel colours 0 to its own largest value (the focused token's row,
    and its column), like the heatmap's per-head max: at 400 tokens a fixed 0-1 scale is uniformly dark.
    Clicking a cell reports its position in ``clickData`` (``customdata[0]``), so a callback can refocus;
    hovering shows the whole token, its word and its weight.

    Args:
        tokens: ``[n]`` token strings of the cells (the queries').
        positions: ``[n]`` their positions in the sequence (``-1``: a cell one cannot focus, an image span).
        attends_to: ``[n]`` the focused token's attention row (``[k]`` over ``keys`` when given).
        attended_by: ``[n]`` the attention every token pays to the focused one (its column); with ``keys``, the
            attention every query pays to the key ``keys["outline"]``.
        focus: index into ``tokens`` of the focused token.
        words: ``[n]`` the word each token belongs to (shown on hover where it differs from the token).
        keys: for cross-attention, where keys are another sequence's tokens: ``tokens``, ``positions``, ``words``
            (each ``[k]``) of the top panel's cells and ``outline``, the index of the key the bottom panel is about.
            Key cells cannot be clicked to focus (``customdata[0]`` is ``-1``): the focus is a query.

    Returns:
        Two horizontal bar traces (one cell a bar: ``base`` its left edge, ``x`` its width, ``y`` its line,
        ``text`` its label), then the labels of each as a text scatter; the focused cell (with ``keys``: the
        outlined key, and the focused query) is outlined in red.
    """
    name = escape_markup(tokens[focus]).replace("\n", "↵")
    if keys is None:
        top = (tokens, positions, words, focus, True)
        titles = (f"what {name} (position {positions[focus]}) attends to", f"what attends to {name}")
    else:
        top = (keys["tokens"], keys["positions"], keys.get("words"), keys["outline"], False)
        key = escape_markup(keys["tokens"][keys["outline"]]).replace("\n", "↵")
        titles = (f"what {name} (position {positions[focus]}) attends to, over the keys",
                  f"what attends to key {key} (the one {name} attends to most); click a query to focus it")
    domains = ([0.54, 0.94], [0.0, 0.40])
    panels = [_text_panel(*top[:3], attends_to, top[3], top[4], 1, domains[0], "row max"),
              _text_panel(tokens, positions, words, attended_by, focus, True, 2, domains[1],
                          "column max")]
    lines = max(p["lines"] for p in panels)
    hidden = {"visible": False, "fixedrange": True}
    x = {**hidden, "range": [0, LINE_CHARS], "domain": [0, 1]}
    y = {**hidden, "range": [lines - 0.5, -0.5]}
    return go.Figure({"data": [p["bar"] for p in panels] + [p["labels"] for p in panels], "layout": {
        "title": layout_title("text view: click a token to focus it (red outline)", 13),
        "margin": {**MARGIN, "l": 10, "t": 60}, "height": 150 + 46 * lines, "shapes": [p["shape"] for p in panels],
        "bargap": 0, "plot_bgcolor": "white",
        "xaxis": {**x, "anchor": "y"}, "yaxis": {**y, "domain": domains[0], "anchor": "x"},
        "xaxis2": {**x, "anchor": "y2"}, "yaxis2": {**y, "domain": domains[1], "anchor": "x2"},
        "annotations": [panel_title(titles[0], 0.5, domains[0][1]), panel_title(titles[1], 0.5, domains[1][1])]}})


def _text_panel(tokens: list[str], positions: list[int], words: list[str] | None, values: np.ndarray, outline: int,
                clickable: bool, panel: int, domain: list[float], what: str) -> dict:
    """One panel of :func:`token_text_view`: ``bar`` (the cells, coloured by ``values`` ``[n]``), ``labels`` (their
    text), ``shape`` (the red outline of cell ``outline``) and ``lines`` (how many lines the cells wrap onto)."""
    shown = [cell_text(t) for t in tokens]
    widths = [text_length(t) + CELL_PAD for t in shown]
    rows, starts = token_lines(widths)
    hover = []
    for token, word, n in zip(tokens, words or tokens, positions):
        name = escape_markup(token).replace("\n", "↵")
        extra = f" (word {escape_markup(word)})" if word != token else ""
        hover.append(f"{name}{extra}<br>position {n}" if n >= 0 else f"{name} (all its patches)")
    values = np.asarray(values, dtype=np.float32)
    _, colours = colour_range(values, "max")
    axes = {"xaxis": "x" if panel == 1 else "x2", "yaxis": "y" if panel == 1 else "y2"}
    clicks = [int(n) if clickable else -1 for n in positions]
    bar = {"type": "bar", "orientation": "h", "base": starts, "x": widths, "y": rows, "width": 0.86,
           "text": shown, "textposition": "none", "hovertext": hover,
           "customdata": [[c, float(v)] for c, v in zip(clicks, values)],
           "hovertemplate": "%{hovertext}<br>attention %{customdata[1]:.4f}<extra></extra>", "showlegend": False,
           "marker": {"color": values, "colorscale": colours["colorscale"], "cmin": 0.0, "cmax": colours["zmax"],
                      "showscale": True, "line": {"width": 0},
                      "colorbar": {"title": {"text": f"attention<br>(0 to {what})", "font": {"size": 11}},
                                   "len": 0.4, "y": domain[0], "yanchor": "bottom", "thickness": 12}},
           **axes}
    # the labels as a text-only scatter over the cells: bars with inside text measure and fit each label,
    # ~4x slower to draw at 400 tokens; dark text on the light (high) end of Viridis, white on the rest
    top = max(colours["zmax"], 1e-9)
    labels = {"type": "scatter", "mode": "text", "x": [b + w / 2 for b, w in zip(starts, widths)], "y": rows,
              "text": shown, "hoverinfo": "skip", "showlegend": False, "cliponaxis": False,
              "textfont": {**TEXT_FONT, "color": ["#111" if v / top > 0.6 else "#fff" for v in values]}, **axes}
    shape = {"type": "rect", "x0": starts[outline], "x1": starts[outline] + widths[outline],
             "y0": rows[outline] - 0.5, "y1": rows[outline] + 0.5, "xref": axes["xaxis"], "yref": axes["yaxis"],
             "line": {"color": "red", "width": 3}}
    return {"bar": bar, "labels": labels, "shape": shape, "lines": (rows[-1] + 1) if rows else 1}
