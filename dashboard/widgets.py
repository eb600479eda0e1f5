"""Small layout helpers shared by the pages (components, not figures)."""

from __future__ import annotations

import pandas as pd
from dash import MATCH, Input, Output, State, clientside_callback, dash_table, dcc, html

from attnlab.core.trace_files import meta_of
from .analyses import NotAvailable
from .data import axis_side

HIDDEN = {"display": "none"}

#: No cloud upload ("Share chart"/sendDataToCloud, "Edit in Chart Studio"): figures of private Runs stay on this
#: machine. The download name is set per figure from ``layout.meta.export`` (assets/viewstate.js).
GRAPH_CONFIG = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False,
                "modeBarButtonsToRemove": ["sendDataToCloud", "editInChartStudio"],
                "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "attnlab"}}


def page_header(title: str, description: str) -> html.Div:
    """The title and one-line description of a page."""
    return html.Div([html.H1(title), html.P(description, className="lead")], className="page-header")


def graph(component_id: str, label: str, **style) -> html.Div:
    """A graph with a loading indicator, in a container labelled for screen readers, and a "Data (.csv)" button
    that downloads what the figure draws (assets/figure_data.js; one row per point or heatmap cell), named like
    the figure's PNG."""
    extra = {"style": style} if style else {}
    return html.Div([dcc.Loading(dcc.Graph(id=component_id, config=GRAPH_CONFIG, **extra), delay_show=300, type="dot"),
                     html.Div([html.Button("Data (.csv)", id={"type": "figure-data", "graph": component_id},
                                           className="button button-quiet", n_clicks=0,
                                           title="download the numbers this figure draws, as CSV (as drawn: log10 under a log colour scale)"),
                               dcc.Download(id={"type": "figure-download", "graph": component_id})],
                              className="export")],
                    role="figure", **{"aria-label": label})


# One callback serves every graph's data button (pattern-matching ids); the CSV is built in the browser from the
# figure as drawn, so it holds exactly what the reader sees.
clientside_callback(
    "function(n, id) { return n ? window.attnlab.figureDownload(id.graph) : window.dash_clientside.no_update; }",
    Output({"type": "figure-download", "graph": MATCH}, "data"),
    Input({"type": "figure-data", "graph": MATCH}, "n_clicks"), State({"type": "figure-data", "graph": MATCH}, "id"),
    prevent_initial_call=True)


def control(label: str, component, help: str | None = None, help_id: str | None = None) -> html.Div:
    """A labelled control, with a help popover when ``help`` is given (the texts: :mod:`.help_texts`);
    ``help_id`` names a container around the popover, for a callback that swaps it (a :func:`help_tip`)."""
    tip = help_tip(help) if help else None
    title = [label, html.Span(tip, id=help_id) if help_id else tip] if tip else label
    return html.Div([html.Label(title, htmlFor=getattr(component, "id", None), className="control-label"), component],
                    className="control")


def help_tip(text: str) -> html.Span:
    """A "?" that shows ``text`` while hovered or focused (keyboard: Tab to it); screen readers read it too."""
    return html.Span("?", className="help", tabIndex=0, role="note", title=text,
                     **{"data-help": text, "aria-label": text})


def provenance(run_id, run, trace: str | None, item=None, **extra) -> tuple[str, str]:
    """``(subtitle, filename)`` naming a figure's Run, model, trace, item and ``extra`` (``layer=2, head=3``).

    Example:
        >>> provenance("0:minilm", run, "main", 0, layer=2, head=3)     # doctest: +SKIP
        ('Run 0:minilm · all-MiniLM-L6-v2 · trace main · item 0 · layer 2 · head 3',
         'attnlab_0-minilm_all-MiniLM-L6-v2_main_item0_layer2_head3')
    """
    model = str((run.info.model or {}).get("name", "?")).rstrip("/").split("/")[-1] if run is not None else "?"
    parts = [f"Run {run_id}", model] + ([f"trace {trace}"] if trace else []) + \
        ([f"item {item}"] if item is not None else []) + [f"{k} {v}" for k, v in extra.items() if v is not None]
    names = [str(run_id), model] + ([str(trace)] if trace else []) + ([f"item{item}"] if item is not None else []) + \
        [f"{k}{v}" for k, v in extra.items() if v is not None]
    filename = "_".join(["attnlab", *("".join(c if c.isalnum() or c in ".-" else "-" for c in n) for n in names)])
    return " · ".join(parts), filename


def radio(component_id: str, options=None, value=None) -> dcc.RadioItems:
    """Inline radio buttons (keyboard: Tab to the group, arrows or Space to choose)."""
    return dcc.RadioItems(id=component_id, options=options or [], value=value, inline=True, className="radio")


def message_area(component_id: str) -> html.Div:
    """Where a page's callbacks report errors and notes."""
    return html.Div(id=component_id, className="messages", **{"aria-live": "polite"})


def layer_options(header: dict) -> list[dict]:
    """Options for the captured layers of a trace."""
    return [{"label": str(i), "value": int(i)} for i in header["layers"]]


def head_options(header: dict) -> list[dict]:
    """Options for the heads of a trace's model."""
    return [{"label": str(h), "value": h} for h in range(meta_of(header).n_heads)]


def keep(current, options: list[dict], default=None):
    """``current`` when it is one of the options' values, else ``default`` (or the first option)."""
    values = [o["value"] for o in options]
    if current in values:
        return current
    if default in values:
        return default
    return values[0] if values else None


def as_int(value, default: int | None = None) -> int | None:
    """An int from a query-string value (``None`` when absent or malformed)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def table(component_id: str, frame: pd.DataFrame, page_size: int = 12, **kwargs) -> dash_table.DataTable:
    """A sortable table of a DataFrame (floats rounded for reading)."""
    data, columns = table_data(frame)
    return dash_table.DataTable(
        id=component_id, data=data, columns=columns,
        page_size=page_size, sort_action="native", style_table={"overflowX": "auto"}, export_format="csv",
        export_headers="display",
        style_cell={"fontFamily": "inherit", "fontSize": 13, "padding": "4px 8px", "textAlign": "left"},
        style_header={"fontWeight": "bold"}, **kwargs)


def table_data(frame: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """``(data, columns)`` of a DataTable for a DataFrame, as callbacks return them."""
    shown = frame.copy()
    for col in shown.select_dtypes("float").columns:
        shown[col] = shown[col].round(4)
    for col in shown.columns:
        if shown[col].dtype == object:
            shown[col] = shown[col].map(lambda v: v if isinstance(v, (str, int, float, type(None))) else str(v))
    return shown.to_dict("records"), [{"name": str(c), "id": str(c)} for c in shown.columns]


def token_axis_labels(tokens: list[str], positions) -> list[str]:
    """``"position:word"`` labels, word first: a WordPiece piece of a split word shows its whole word
    (``"6:playing"`` for ``##ing``; Wu et al. 2016, §4.1); other tokens show themselves. Unique per position.

    Args:
        tokens: ``[N]`` the item's token strings.
        positions: the positions to label.

    Returns:
        One label per position; :func:`token_piece_hover` gives the raw pieces for hover.
    """
    from attnlab.hooks.segments import word_of_pieces

    words = word_of_pieces(list(tokens))
    return [f"{int(n)}:{words[int(n)]}" for n in positions]


def token_piece_hover(tokens: list[str], positions) -> dict[str, str]:
    """``{axis label: hover label}`` for the labels of :func:`token_axis_labels` whose token is a piece of a
    split word: the hover names the raw piece (``"6:playing (piece ##ing)"``). Tokens that are whole words
    are left out (their hover is the label itself)."""
    labels = token_axis_labels(tokens, positions)
    return {label: f"{label} (piece {tokens[int(n)]})" for label, n in zip(labels, positions)
            if label.split(":", 1)[1] != tokens[int(n)]}


def axis_labels(header: dict, item: int, positions, axis: str) -> tuple[list[str], dict[str, str]]:
    """Labels of the tokens at ``positions`` along one axis of a trace's attention maps, and their hover aliases.

    Every view that labels queries or keys goes through here, so a cross-attention trace's keys are labelled
    with the encoder's tokens (:func:`attnlab.dashboard.data.axis_side`) and its queries with the decoder's.

    Args:
        header: the trace header.
        item: batch item.
        positions: ``[n]`` real positions along that axis.
        axis: ``"query"`` (rows) or ``"key"`` (columns).

    Returns:
        ``(labels, hover)``: :func:`token_axis_labels` and :func:`token_piece_hover` of that side's tokens.
    """
    tokens = axis_side(header, axis)["tokens"][item]
    return token_axis_labels(tokens, positions), token_piece_hover(tokens, positions)


def token_options(header: dict, item: int, positions, *, by_index: bool = False, axis: str = "query") -> list[dict]:
    """Dropdown options for the real tokens of an item, word first (:func:`token_axis_labels`); a piece of a
    split word names its raw piece in the option's hover (``title``).

    Args:
        header: the trace header.
        item: batch item.
        positions: the positions to offer.
        by_index: ``value`` is the index into ``positions`` (what the probes take) rather than the position.
        axis: the side the positions are on (:func:`attnlab.dashboard.data.axis_side`); the queries by default.
    """
    tokens = axis_side(header, axis)["tokens"][item]
    pieces = token_piece_hover(tokens, positions)
    options = []
    for i, (n, label) in enumerate(zip(positions, token_axis_labels(tokens, positions))):
        option = {"label": label.replace(":", ": ", 1), "value": i if by_index else int(n)}
        if label in pieces:
            option["title"] = f"word piece {tokens[int(n)]}"
        options.append(option)
    return options


def timing_bars(timings: dict[str, float]) -> html.Div:
    """Seconds per phase of a Run as a table of HTML bars (no plotly: the landing page renders before
    plotly.js, ~5 MB, has been loaded and parsed on a first visit).

    Args:
        timings: ``{phase: seconds}``; empty: a note instead of bars.
    """
    if not timings:
        return html.P("This Run recorded no timings.", className="note")
    longest = max(max(float(s) for s in timings.values()), 1e-9)
    rows = [html.Tr([html.Th(name), html.Td(html.Div(className="timing-bar", title=f"{float(s):.3f} s",
                                                     style={"width": f"{100 * float(s) / longest:.1f}%"})),
                     html.Td(f"{float(s):.3f} s", className="timing-value")]) for name, s in timings.items()]
    return html.Div([html.H3("Timings"), html.Table(html.Tbody(rows), className="plain timings",
                                                    **{"aria-label": "seconds per phase"})])


def require_traces(run, what: str, capture: str | None = None) -> None:
    """:class:`NotAvailable` (shown as a note, not an error) when ``run`` holds result tables only; the note names
    the ``--capture`` fields that would feed the view (``"pattern"``), when given."""
    if not run.manifest["traces"]:
        option = f" --capture {capture}" if capture else ""
        raise NotAvailable(f"This Run holds result tables only (no traces); {what} needs a captured trace: "
                           f"make one with `attnlab capture{option}`.")


def shown_if(available: bool) -> dict:
    """A container's style: shown, or hidden when the Run cannot fill it."""
    return {} if available else HIDDEN
