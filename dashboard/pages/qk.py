"""QK embedding: AttentionViz views of queries and keys in one space, per head and for all heads of a layer."""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from attnlab.core.trace_files import meta_of
from attnlab.dashboard import ids
from attnlab.dashboard.analyses import qk_head, qk_heads, qk_layers, token_attention
from attnlab.dashboard.app import current_data
from attnlab.dashboard.data import is_cross, trace_header
from attnlab.dashboard.errors import guarded
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.viewstate import sync_url
from attnlab.dashboard.widgets import (HIDDEN, as_int, axis_labels, control, graph, keep, message_area, page_header,
                                       provenance, radio, require_traces, shown_if)
from attnlab.probes.registry import capture_for
from attnlab.viz.attention import token_bar
from attnlab.viz.qk import qk_small_multiples
from attnlab.viz.style import message_figure, stamp
from attnlab.viz.qk import qk_scatter
from attnlab.viz.style import MARGIN

dash.register_page(__name__, path="/qk", name="QK embedding", title="attnlab · QK embedding", order=5)

COLOURS = [{"label": "query / key", "value": "kind"}, {"label": "position", "value": "position"},
           {"label": "token type", "value": "segment"}]
METHODS = [{"label": "PCA", "value": "pca"}, {"label": "t-SNE", "value": "tsne"},
           {"label": "UMAP (slow first time)", "value": "umap"}]


sync_url(ids.QK_URL, {"layer": ids.QK_LAYER, "head": ids.QK_HEAD, "colour": ids.QK_COLOUR,
                      "projection": ids.QK_METHOD})


def layout(layer=None, head=None, colour=None, projection=None, **_query) -> html.Div:
    """Layer, head, colouring and projection selectors (initial values from the query); the small multiples, one
    head, and a token's attention."""
    return html.Div([
        page_header("QK embedding", "Queries (circles) and keys (diamonds) of a head in one space where near means a "
                                    "large attention logit (AttentionViz, Yeh et al. 2023). Click a point to see that "
                                    "token's attention."),
        dcc.Store(id=ids.QK_URL),
        html.Div([control("Layer", radio(ids.QK_LAYER, value=as_int(layer)), help=HELP[ids.QK_LAYER]),
                  control("Head", radio(ids.QK_HEAD, value=as_int(head)), help=HELP[ids.QK_HEAD]),
                  control("Colour by", radio(ids.QK_COLOUR, COLOURS, keep(colour, COLOURS, "kind")),
                          help=HELP[ids.QK_COLOUR]),
                  control("Projection (one head)", radio(ids.QK_METHOD, METHODS, keep(projection, METHODS, "pca")),
                          help=HELP[ids.QK_METHOD])], className="controls", id=ids.QK_CONTROLS),
        message_area(ids.QK_MESSAGE),
        html.Div([html.Div([graph(ids.QK_DETAIL, "one head's joint query-key embedding"),
                            graph(ids.QK_TOKEN, "attention of the clicked token")], className="two-columns"),
                  graph(ids.QK_GRID, "all heads of the layer as small multiples")], id=ids.QK_BODY),
    ])


@callback(Output(ids.QK_CONTROLS, "style"), Output(ids.QK_BODY, "style"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id, trace):
    """The control bar and the views, hidden (the message says why) when no layer stored queries and keys."""
    data = current_data()
    run = data.run(run_id)
    shown = shown_if(bool(run.manifest["traces"]) and bool(qk_layers(data, run, trace)))
    return shown, shown


@callback(Output(ids.QK_LAYER, "options"), Output(ids.QK_LAYER, "value"), Output(ids.QK_HEAD, "options"),
          Output(ids.QK_HEAD, "value"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          State(ids.QK_LAYER, "value"), State(ids.QK_HEAD, "value"))
@guarded([], None, [], None, report=False)
def selectors(run_id, trace, layer, head):
    """Layers with queries and keys and the model's heads; a layer or head the new Run also has stays."""
    data = current_data()
    run = data.run(run_id)
    if not run.manifest["traces"]:
        return [], None, [], None
    layers = [{"label": str(i), "value": i} for i in qk_layers(data, run, trace)]
    heads = [{"label": str(h), "value": h} for h in range(meta_of(trace_header(run, trace)).n_heads)]
    return layers, keep(layer, layers), heads, keep(head, heads)


@callback(Output(ids.QK_GRID, "figure"), Output(ids.QK_MESSAGE, "children"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"), Input(ids.QK_LAYER, "value"), Input(ids.QK_COLOUR, "value"))
@guarded(lambda: message_figure("QK embedding not available in this Run"))
def small_multiples(run_id, trace, layer, colour):
    data = current_data()
    run = data.run(run_id)
    require_traces(run, "the QK embedding", capture_for(["qk-embed"]))
    if layer is None:
        return message_figure("QK embedding not available in this Run"), _missing()
    result = qk_heads(data, run, trace, layer)
    li = result.layers.index(layer)
    frames = [(f"head {h} ρ {result.layout_correlations[li, i]:+.2f}", result.head_frame(layer, h))
              for i, h in enumerate(result.heads)]
    figure = qk_small_multiples(frames, colour or "kind", f"layer {layer}: every head (PCA; click one to open it)")
    return stamp(figure, *provenance(run_id, run, trace, None, layer=layer)), None


@callback(Output(ids.QK_HEAD, "value", allow_duplicate=True), Input(ids.QK_GRID, "clickData"),
          State(ids.RUN, "value"), State(ids.TRACE, "value"), State(ids.QK_LAYER, "value"), prevent_initial_call=True)
def pick_head(click, run_id, trace, layer):
    """A click on a small multiple opens that head in the detail view."""
    try:
        panel = int(click["points"][0]["customdata"])
        data = current_data()
        return int(qk_heads(data, data.run(run_id), trace, layer).heads[panel])
    except (TypeError, KeyError, IndexError, ValueError):
        raise dash.exceptions.PreventUpdate from None


def _missing():
    from attnlab.dashboard.errors import message

    return message("QK embedding is not available in this Run: capture with Capture(qk=True).", "note")


@callback(Output(ids.QK_DETAIL, "figure"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          Input(ids.QK_LAYER, "value"), Input(ids.QK_HEAD, "value"), Input(ids.QK_COLOUR, "value"),
          Input(ids.QK_METHOD, "value"))
@guarded(lambda: message_figure("QK embedding not available"), report=False)
def detail(run_id, trace, layer, head, colour, method):
    if layer is None or head is None:
        return message_figure("QK embedding not available in this Run")
    data = current_data()
    run = data.run(run_id)
    points = qk_head(data, run, trace, layer, head, method or "pca")
    figure = qk_scatter(points, colour or "kind", f"layer {layer}, head {head} ({method or 'pca'})", size=8)
    figure.update_layout(height=480, margin=MARGIN)
    return stamp(figure, *provenance(run_id, run, trace, None, layer=layer, head=head, projection=method or "pca"))


@callback(Output(ids.QK_TOKEN, "figure"), Input(ids.QK_DETAIL, "clickData"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"), Input(ids.QK_LAYER, "value"), Input(ids.QK_HEAD, "value"))
@guarded(lambda: message_figure("click a point to see its attention"), report=False)
def token_view(click, run_id, trace, layer, head):
    if not click or layer is None or head is None:
        return message_figure("click a point to see that token's attention")
    token, kind, position, _, item = click["points"][0]["customdata"][:5]  # see attnlab.viz.qk
    data = current_data()
    run = data.run(run_id)
    weights, real = token_attention(data, run, trace, layer, head, int(item), int(position), str(kind))
    header = trace_header(run, trace)
    other = "key" if kind == "query" else "query"  # the bars are the other side's tokens
    labels, hover = axis_labels(header, int(item), real, other)
    verb = "attends to" if kind == "query" else "is attended by"
    # the token itself is among the bars only in self-attention
    highlight = int(list(real).index(int(position))) if not is_cross(header) and int(position) in real else None
    figure = token_bar(labels, weights, f"{position}:{token} (item {item}) {verb}", highlight=highlight,
                       hover_labels=hover)
    return stamp(figure, *provenance(run_id, run, trace, int(item), layer=layer, head=head, token=position))
