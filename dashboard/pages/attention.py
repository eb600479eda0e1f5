"""Attention: one head's pattern with token labels, a clickable text view, and image-patch overlays."""

from __future__ import annotations

import dash
import numpy as np
from dash import Input, Output, State, callback, ctx, dcc, html

from attnlab.core.trace_files import meta_of
from attnlab.dashboard import ids
from attnlab.dashboard.analyses import NotAvailable
from attnlab.dashboard.app import current_data
from attnlab.dashboard.data import axis_side, image_segments, is_cross, trace_header
from attnlab.dashboard.errors import guarded, message
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.help_texts import VIEWS
from attnlab.dashboard.summaries import attention_matrix, grid_values, real_positions, text_cells
from attnlab.dashboard.viewstate import as_list, sync_url, wanted
from attnlab.dashboard.widgets import (HIDDEN, as_int, axis_labels, control, graph, head_options, help_tip, keep,
                                       layer_options, message_area, page_header, provenance, radio, require_traces,
                                       shown_if, token_options)
from attnlab.viz.attention import (COLOUR_SCALES, LONG_INPUT, attention_heatmap, attention_minimap, patch_overlay,
                                   resolve_scale, view_rectangle, zoom_window)
from attnlab.viz.text_view import token_text_view
from attnlab.viz.style import message_figure, stamp

dash.register_page(__name__, path="/attention", name="Attention", title="attnlab · Attention", order=2)

SCALES = [{"label": "auto", "value": "auto"}] + [{"label": v, "value": k} for k, v in COLOUR_SCALES.items()]
SINK = "hide-first"
sync_url(ids.ATTN_URL, {"layer": ids.ATTN_LAYER, "head": ids.ATTN_HEAD, "scale": ids.ATTN_SCALE, "sink": ids.ATTN_SINK,
                        "focus": ids.ATTN_FOCUS, "query": ids.ATTN_QUERY})


def layout(layer=None, head=None, scale=None, sink=None, focus=None, query=None, **_query) -> html.Div:
    """Layer, head and colour-scale selectors (initial values from the query), the heatmap, text and image views."""
    return html.Div([
        page_header("Attention", "Pick a layer and a head. Click a token in the text view (or a heatmap row, or "
                                 "choose it under Focus token) to see what it attends to and what attends to it; "
                                 "hover shows the whole token. Zoom the heatmap (drag a box) to read every label."),
        dcc.Store(id=ids.ATTN_URL), dcc.Store(id=ids.ATTN_WANTED, data={"focus": focus, "query": query}),
        html.Div([control("Layer", radio(ids.ATTN_LAYER, value=as_int(layer)), help=HELP[ids.ATTN_LAYER]),
                  control("Head", radio(ids.ATTN_HEAD, value=as_int(head)), help=HELP[ids.ATTN_HEAD]),
                  control("Colour scale", radio(ids.ATTN_SCALE, SCALES, scale if scale in COLOUR_SCALES else "auto"),
                          help=HELP[ids.ATTN_SCALE]),
                  control("Sink column", dcc.Checklist(id=ids.ATTN_SINK, inline=True, value=as_list(sink), options=[
                      {"label": "hide the first token's column", "value": SINK}]), help=HELP[ids.ATTN_SINK])],
                 className="controls", id=ids.ATTN_CONTROLS),
        message_area(ids.ATTN_MESSAGE),
        dcc.Store(id=ids.ATTN_DRAWN),
        html.Div([
            html.Div([html.Button("Download the matrix (.npy)", id=ids.ATTN_DATA_BUTTON,
                                  className="button button-quiet", n_clicks=0), dcc.Download(id=ids.ATTN_DATA)],
                     className="export"),
            html.Div([control("Focus token", dcc.Dropdown(id=ids.ATTN_FOCUS, clearable=False,
                                                          placeholder="the model's output token"),
                              help=HELP[ids.ATTN_FOCUS])], className="controls"),
            html.Div([html.Div([graph(ids.ATTN_HEATMAP, "attention pattern heatmap"),
                                html.Div([html.P(["Overview of the whole pattern ", help_tip(VIEWS["minimap"])],
                                                 className="note"),
                                          graph(ids.ATTN_MINIMAP, "minimap: the whole pattern, click to zoom"),
                                          dcc.Store(id=ids.ATTN_MINIMAP_SHAPE)],
                                         id=ids.ATTN_MINIMAP_BOX, style=HIDDEN)]),
                      graph(ids.ATTN_TEXT, "text view")],
                     className="two-columns"),
            html.Div([html.H2("Attention over the image"),
                      control("Query token", dcc.Dropdown(id=ids.ATTN_QUERY, clearable=False),
                              help=HELP[ids.ATTN_QUERY]),
                      graph(ids.ATTN_IMAGE, "attention painted over the image patches")],
                     id=ids.ATTN_IMAGE_BOX, style=HIDDEN)], id=ids.ATTN_BODY),
    ])


@callback(Output(ids.ATTN_CONTROLS, "style"), Output(ids.ATTN_BODY, "style"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id, trace):
    """The control bar and the views, hidden for a Run without traces or a trace with neither patterns nor queries
    and keys (the heatmap's note says what capture would fill them)."""
    data = current_data()
    run = data.run(run_id)
    shown = shown_if(bool(run.manifest["traces"]) and _drawable(data, run, trace))
    return shown, shown


def _drawable(data, run, trace) -> bool:
    """Whether some captured layer of the trace stored attention patterns, or queries and keys."""
    return any(data.has_field(run, trace, layer, "pattern")
               or (data.has_field(run, trace, layer, "q") and data.has_field(run, trace, layer, "k"))
               for layer in trace_header(run, trace)["layers"])


@callback(Output(ids.ATTN_LAYER, "options"), Output(ids.ATTN_LAYER, "value"), Output(ids.ATTN_HEAD, "options"),
          Output(ids.ATTN_HEAD, "value"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          State(ids.ATTN_LAYER, "value"), State(ids.ATTN_HEAD, "value"))
@guarded([], None, [], None, report=False)
def selectors(run_id, trace, layer, head):
    """The trace's captured layers and its model's heads; a layer or head the new Run also has stays."""
    run = current_data().run(run_id)
    if not run.manifest["traces"]:
        return [], None, [], None
    header = trace_header(run, trace)
    layers, heads = layer_options(header), head_options(header)
    return layers, keep(layer, layers), heads, keep(head, heads)


def _matrix(data, run, trace, layer, head, item):
    """``attention_matrix`` with a note (not an error) when the trace has neither patterns nor q and k."""
    if layer in trace_header(run, trace)["layers"] and not (data.has_field(run, trace, layer, "pattern")
            or (data.has_field(run, trace, layer, "q") and data.has_field(run, trace, layer, "k"))):
        raise NotAvailable("This trace stored neither attention patterns nor queries and keys: capture with "
                           "Capture(pattern=True) or Capture(qk=True) to see attention maps.")
    return attention_matrix(data, run, trace, layer, head, item)


@callback(Output(ids.ATTN_HEATMAP, "figure"), Output(ids.ATTN_MESSAGE, "children"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"),
          Input(ids.ATTN_LAYER, "value"), Input(ids.ATTN_HEAD, "value"), Input(ids.ATTN_SCALE, "value"),
          Input(ids.ATTN_SINK, "value"))
@guarded(lambda: message_figure("no attention to show"))
def heatmap(run_id, trace, item, layer, head, scale="auto", sink=()):
    data = current_data()
    run = data.run(run_id)
    require_traces(run, "the attention view", "pattern")
    header = trace_header(run, trace)  # a Run without this trace is explained in the message
    if layer is None or head is None:
        return message_figure("no layer chosen"), message("This trace captured no layers.", "note")
    matrix, real, source = _matrix(data, run, trace, layer, head, item or 0)
    labels, hover = axis_labels(header, item or 0, real, "query")
    key_labels, key_hover = axis_labels(header, item or 0, real_positions(data, run, trace, item or 0, "key"), "key")
    note = None if source == "pattern" else message(
        "No pattern was stored; the map is recomputed as softmax(q·k/√d) from the stored queries and keys.", "note")
    scale = resolve_scale(scale, max(matrix.shape))
    figure = attention_heatmap(matrix, labels, f"layer {layer}, head {head}", scale=scale,
                               exclude_first=SINK in (sink or []), hover_labels=hover, key_labels=key_labels,
                               key_hover_labels=key_hover)
    figure.layout.meta = {"view": {"run": run_id, "trace": trace, "item": item or 0, "layer": layer, "head": head,
                                   "sink": SINK in (sink or []), "scale": scale}}
    return stamp(figure, *provenance(run_id, run, trace, item or 0, layer=layer, head=head, scale=scale)), note


# The text view and the minimap follow the heatmap instead of the selectors: their requests leave once the heatmap's
# figure has arrived, so the browser draws the heatmap first (at 400 tokens each drawing takes ~150-300 ms of the one
# thread). A patch of the heatmap (a zoom from the minimap) leaves the view as it was, so nothing else is redrawn;
# every full redraw names a different view (the scale and sink column included), which resets the minimap's outline.
dash.clientside_callback(
    """function(fig, current) {
        const m = fig && fig.layout && fig.layout.meta, view = (m && m.view) || null;
        return JSON.stringify(view) === JSON.stringify(current) ? window.dash_clientside.no_update : view;
    }""",
    Output(ids.ATTN_DRAWN, "data"), Input(ids.ATTN_HEATMAP, "figure"), State(ids.ATTN_DRAWN, "data"))


@callback(Output(ids.ATTN_MINIMAP, "figure"), Output(ids.ATTN_MINIMAP_BOX, "style"),
          Output(ids.ATTN_MINIMAP_SHAPE, "data"), Input(ids.ATTN_DRAWN, "data"))
@guarded(lambda: message_figure("no overview"), HIDDEN, None, report=False)
def minimap(drawn):
    """The overview of the matrix the heatmap draws (``drawn``: its ``layout.meta.view``), shown only above
    :data:`LONG_INPUT` tokens; it follows the heatmap, so the heatmap is drawn first."""
    if not drawn:
        return dash.no_update, HIDDEN, None
    data = current_data()
    run = data.run(drawn["run"])
    matrix, _, _ = _matrix(data, run, drawn["trace"], drawn["layer"], drawn["head"], drawn["item"])
    if max(matrix.shape) <= LONG_INPUT:
        return dash.no_update, HIDDEN, None
    if drawn.get("sink") and matrix.shape[-1] > 1:
        matrix = matrix[:, 1:]  # the heatmap's columns: the minimap's coordinates are the heatmap's
    figure = attention_minimap(matrix)
    figure = stamp(figure, *provenance(drawn["run"], run, drawn["trace"], drawn["item"], layer=drawn["layer"],
                                       head=drawn["head"], view="overview"))
    return figure, {}, list(matrix.shape)


def relayout_view(relayout: dict | None):
    """The window a heatmap's ``relayoutData`` shows, as :func:`attnlab.viz.attention.view_rectangle` takes it.

    Returns:
        ``((x0, x1) | None, (y0, y1) | None)`` (``None``: that axis whole, after a zoom-out or autorange), or
        ``None`` when the event changed neither axis (a resize).
    """
    if not relayout:
        return None
    spans, touched = [], False
    for axis in ("xaxis", "yaxis"):
        span = relayout.get(f"{axis}.range")
        if span is None and f"{axis}.range[0]" in relayout and f"{axis}.range[1]" in relayout:
            span = (relayout[f"{axis}.range[0]"], relayout[f"{axis}.range[1]"])
        touched = touched or span is not None or f"{axis}.autorange" in relayout
        spans.append(tuple(float(v) for v in span) if span is not None else None)
    return tuple(spans) if touched else None


@callback(Output(ids.ATTN_MINIMAP, "figure", allow_duplicate=True), Input(ids.ATTN_HEATMAP, "relayoutData"),
          State(ids.ATTN_MINIMAP_SHAPE, "data"), prevent_initial_call=True)
def minimap_follows_zoom(relayout, shape):
    """The minimap's outline moved to the heatmap's zoom (a patch: the minimap is not redrawn)."""
    view = relayout_view(relayout)
    if not shape or view is None:
        raise dash.exceptions.PreventUpdate
    patch = dash.Patch()
    patch["layout"]["shapes"] = [view_rectangle(view)] if any(v is not None for v in view) else []
    return patch


@callback(Output(ids.ATTN_HEATMAP, "figure", allow_duplicate=True),
          Output(ids.ATTN_MINIMAP, "figure", allow_duplicate=True), Input(ids.ATTN_MINIMAP, "clickData"),
          State(ids.ATTN_MINIMAP_SHAPE, "data"), prevent_initial_call=True)
def zoom_to_minimap_click(click, shape):
    """A click on the minimap zooms the heatmap to :data:`~attnlab.viz.attention.ZOOM_TOKENS` tokens around it
    (patches of the axis ranges, so the big figure is not sent again) and moves the minimap's outline there.

    Args:
        click: the minimap's ``clickData`` (``points[0]``: ``x`` key index, ``y`` query index).
        shape: ``[Q, K]`` of the matrix drawn.
    """
    try:
        x, y = float(click["points"][0]["x"]), float(click["points"][0]["y"])
        n_q, n_k = int(shape[0]), int(shape[1])
    except (TypeError, KeyError, IndexError, ValueError):
        raise dash.exceptions.PreventUpdate
    xs, ys = zoom_window(x, n_k), zoom_window(y, n_q)
    heatmap_patch, minimap_patch = dash.Patch(), dash.Patch()
    heatmap_patch["layout"]["xaxis"]["range"] = xs
    heatmap_patch["layout"]["xaxis"]["autorange"] = False
    heatmap_patch["layout"]["yaxis"]["range"] = ys[::-1]  # queries from the top
    heatmap_patch["layout"]["yaxis"]["autorange"] = False
    minimap_patch["layout"]["shapes"] = [view_rectangle((xs, ys))]
    return heatmap_patch, minimap_patch


@callback(Output(ids.ATTN_DATA, "data"), Input(ids.ATTN_DATA_BUTTON, "n_clicks"), State(ids.ATTN_DRAWN, "data"),
          prevent_initial_call=True)
def download_matrix(_n, drawn):
    """The shown head's ``[q, k]`` attention over the real queries and keys as ``.npy`` (float32), named like the
    figure."""
    import io

    if not drawn:
        raise dash.exceptions.PreventUpdate
    data = current_data()
    run = data.run(drawn["run"])
    matrix, _, _ = _matrix(data, run, drawn["trace"], drawn["layer"], drawn["head"], drawn["item"])
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(matrix, dtype=np.float32))  # (q, k) queries x keys
    _, name = provenance(drawn["run"], run, drawn["trace"], drawn["item"], layer=drawn["layer"], head=drawn["head"])
    return dcc.send_bytes(buffer.getvalue(), f"{name}.npy")


@callback(Output(ids.ATTN_FOCUS, "options"), Output(ids.ATTN_FOCUS, "value", allow_duplicate=True),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"),
          State(ids.ATTN_FOCUS, "value"), State(ids.ATTN_WANTED, "data"), prevent_initial_call="initial_duplicate")
@guarded([], None, report=False)
def focus_options(run_id, trace, item, current=None, requested=None):
    """The text tokens one can focus (word first, the raw piece on hover), for keyboard use, and the focus: kept
    while it is one of them, else the URL's ``focus``, else none (the output token); a Run switch clears it. The
    focus is a query (a heatmap row): a cross-attention trace offers its decoder tokens."""
    data = current_data()
    run = data.run(run_id)
    if not run.manifest["traces"]:
        return [], None
    header = trace_header(run, trace)
    patches = {n for s in image_segments(header, item or 0) for n in range(s.start, s.end)}
    real = [int(n) for n in real_positions(data, run, trace, item or 0) if int(n) not in patches]
    options = token_options(header, item or 0, real)
    return options, wanted(current, options, (requested or {}).get("focus"), None)


@callback(Output(ids.ATTN_FOCUS, "value"), Input(ids.ATTN_TEXT, "clickData"), Input(ids.ATTN_HEATMAP, "clickData"),
          State(ids.ATTN_FOCUS, "value"), prevent_initial_call=True)
def focus(text_click, click, current):
    """The focused position: the clicked text-view cell (``customdata[0]``) or heatmap row (``"position:..."``);
    hovering only shows a token. Image cells (position ``-1``) keep the current focus."""
    # runs on clicks only (focus_options sets the focus a page opens with, from the URL)
    try:
        if ctx.triggered_id == ids.ATTN_TEXT:
            position = int(text_click["points"][0]["customdata"][0])
        elif ctx.triggered_id == ids.ATTN_HEATMAP:
            position = int(str(click["points"][0]["y"]).split(":", 1)[0])
        else:
            return current
    except (TypeError, KeyError, IndexError, ValueError):
        return current
    return position if position >= 0 else current


@callback(Output(ids.ATTN_TEXT, "figure"), Input(ids.ATTN_DRAWN, "data"), Input(ids.ATTN_FOCUS, "value"))
def text_view_of_heatmap(drawn, position):
    """The text view of the head the heatmap shows (``drawn``: its ``layout.meta.view``)."""
    if not drawn:
        return message_figure("no text view")
    return text_view(drawn["run"], drawn["trace"], drawn["item"], drawn["layer"], drawn["head"], position)


@guarded(lambda: message_figure("no text view"), report=False)
def text_view(run_id, trace, item, layer, head, position):
    """What the focused query attends to and what attends to it, as token cells; a cross-attention trace's key
    panel shows the encoder's tokens (:func:`~attnlab.dashboard.summaries.text_cells`)."""
    try:
        data = current_data()
        run = data.run(run_id)
        matrix, real, _ = _matrix(data, run, trace, layer, head, item or 0)
    except (ValueError, TypeError):  # the heatmap callback reports the cause
        return message_figure("no text view")
    header = trace_header(run, trace)
    patches = {n for s in image_segments(header, item or 0) for n in range(s.start, s.end)}
    text = [int(n) for n in real if int(n) not in patches]
    if position not in text:
        position = text[-1] if meta_of(header).causal or is_cross(header) else text[0]  # the output token
    keys = real_positions(data, run, trace, item or 0, "key") if is_cross(header) else None
    cells = text_cells(header, item or 0, matrix, real, position, keys=keys)
    key_cells = cells.get("keys")
    if key_cells is not None:
        key_cells = {**key_cells, "words": _cell_words(header, item or 0, key_cells, "key")}
    figure = token_text_view(cells["tokens"], cells["positions"], np.asarray(cells["attends_to"]),
                             np.asarray(cells["attended_by"]), cells["focus"],
                             words=_cell_words(header, item or 0, cells, "query"), keys=key_cells)
    return stamp(figure, *provenance(run_id, run, trace, item or 0, layer=layer, head=head, view="text"))


def _cell_words(header: dict, item: int, cells: dict, axis: str) -> list[str]:
    """The word each text-view cell's token belongs to (an image cell: its own label), along ``axis``."""
    from attnlab.hooks.segments import word_of_pieces  # imports torch: not at page load

    words = word_of_pieces(list(axis_side(header, axis)["tokens"][item]))
    return [words[n] if n >= 0 else t for t, n in zip(cells["tokens"], cells["positions"])]


@callback(Output(ids.ATTN_QUERY, "options"), Output(ids.ATTN_QUERY, "value"), Output(ids.ATTN_IMAGE_BOX, "style"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"), State(ids.ATTN_QUERY, "value"),
          State(ids.ATTN_WANTED, "data"))
@guarded([], None, HIDDEN, report=False)
def query_options(run_id, trace, item, current, requested=None):
    """The text tokens whose attention the image overlay paints, and the one chosen: kept while valid, else the
    URL's ``query``, else the output token (the last for a causal model); hidden for an item whose keys hold no
    image (a cross-attention trace's keys are the encoder's tokens)."""
    try:
        data = current_data()
        run = data.run(run_id)
        header = trace_header(run, trace)
        patches = {n for s in image_segments(header, item or 0) for n in range(s.start, s.end)}
        real = real_positions(data, run, trace, item or 0)
    except (ValueError, TypeError):  # the heatmap callback reports the cause
        return [], None, HIDDEN
    if not image_segments(header, item or 0, "key"):
        return [], None, HIDDEN
    options = token_options(header, item or 0, [n for n in real if n not in patches])
    default = options[-1]["value"] if meta_of(header).causal and options else (options[0]["value"] if options else None)
    return options, wanted(current, options, (requested or {}).get("query"), default), {}


@callback(Output(ids.ATTN_IMAGE, "figure"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          Input(ids.ITEM, "value"), Input(ids.ATTN_LAYER, "value"), Input(ids.ATTN_HEAD, "value"),
          Input(ids.ATTN_QUERY, "value"))
@guarded(lambda: message_figure("no attention to paint"), report=False)
def image_view(run_id, trace, item, layer, head, query):
    try:
        data = current_data()
        run = data.run(run_id)
        header = trace_header(run, trace)
        if query is None or not image_segments(header, item or 0, "key"):
            return dash.no_update  # the box is hidden: redrawing it would only cost time
        matrix, real, _ = attention_matrix(data, run, trace, layer, head, item or 0)
        keys = real_positions(data, run, trace, item or 0, "key")
    except (ValueError, TypeError):  # the heatmap callback reports the cause
        return message_figure("no attention to paint")
    row = np.flatnonzero(real == query)
    if not row.size:
        return message_figure("pick a query token")
    grid, label = grid_values(axis_side(header, "key"), item or 0, matrix[row[0]], keys)
    token = header["tokens"][item or 0][query]
    figure = patch_overlay(data.image_uri(run, item or 0), grid, f"attention of {query}:{token} to {label} patches")
    return stamp(figure, *provenance(run_id, run, trace, item or 0, layer=layer, head=head, query=query))
