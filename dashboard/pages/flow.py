"""Flow: attention rollout and attention flow relevance over text tokens and image patches."""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from attnlab.core.trace_files import meta_of
from attnlab.dashboard import ids
from attnlab.dashboard.analyses import NotAvailable, relevance, require_probe
from attnlab.dashboard.app import current_data
from attnlab.dashboard.data import image_segments, trace_header
from attnlab.dashboard.errors import guarded, message
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.summaries import grid_values, real_positions
from attnlab.dashboard.viewstate import as_list, sync_url, wanted
from attnlab.dashboard.widgets import (HIDDEN, control, graph, message_area, page_header, provenance,
                                       radio, require_traces, token_options)
from attnlab.probes.registry import capture_for
from attnlab.viz.attention import patch_overlay
from attnlab.viz.style import message_figure, stamp
from attnlab.viz.relevance import relevance_bar

dash.register_page(__name__, path="/flow", name="Flow", title="attnlab · Flow", order=3)

METHODS = [{"label": "rollout", "value": "rollout"}, {"label": "flow (max-flow)", "value": "flow"}]
FUSIONS = [{"label": f, "value": f} for f in ("mean", "max", "min")]
RECEPTIVE = "receptive-field"
sync_url(ids.FLOW_URL, {"method": ids.FLOW_METHOD, "fusion": ids.FLOW_FUSION, "discard": ids.FLOW_DISCARD,
                        "options": ids.FLOW_OPTIONS, "position": ids.FLOW_POSITION})


def layout(method=None, fusion=None, discard=None, options=None, position=None, **_query) -> html.Div:
    """Method, head fusion, residual options, output token (initial values from the query); relevance bars and
    the patch-grid view."""
    try:
        discard = min(max(float(discard), 0.0), 0.9)
    except (TypeError, ValueError):
        discard = 0.0
    return html.Div([
        page_header("Flow", "How much each input token reaches an output token through the whole stack "
                            "(Abnar & Zuidema 2020). Both add the residual as 0.5·A + 0.5·I per layer."),
        dcc.Store(id=ids.FLOW_URL), dcc.Store(id=ids.FLOW_WANTED, data={"position": position}),
        html.Div([
            control("Method", radio(ids.FLOW_METHOD, METHODS, method if method in ("rollout", "flow") else "rollout"),
                    help=HELP[ids.FLOW_METHOD]),
            control("Head fusion", radio(ids.FLOW_FUSION, FUSIONS, fusion if fusion in ("mean", "max", "min")
                                         else "mean"), help=HELP[ids.FLOW_FUSION]),
            control("Discard weakest (rollout)", dcc.Slider(id=ids.FLOW_DISCARD, min=0, max=0.9, step=0.1,
                                                           value=discard, marks={0: "0", 0.5: "0.5", 0.9: "0.9"}),
                    help=HELP[ids.FLOW_DISCARD]),
            control("Residual options", dcc.Checklist(id=ids.FLOW_OPTIONS, inline=True, value=as_list(options),
                                                      options=[{"label": "receptive-field normalisation (causal "
                                                                         "models, rollout)", "value": RECEPTIVE}]),
                    help=HELP[ids.FLOW_OPTIONS]),
            control("Output token", dcc.Dropdown(id=ids.FLOW_POSITION, clearable=False), help=HELP[ids.FLOW_POSITION]),
        ], className="controls", id=ids.FLOW_CONTROLS),
        message_area(ids.FLOW_MESSAGE),
        html.Div([graph(ids.FLOW_BAR, "relevance of each input token"),
                  html.Div(graph(ids.FLOW_GRID, "relevance on the image patch grid"), id=ids.FLOW_GRID_BOX)],
                 id=ids.FLOW_BODY),
    ])


@callback(Output(ids.FLOW_CONTROLS, "style"), Output(ids.FLOW_BODY, "style"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id, trace):
    """The control bar and the views, hidden for a Run of result tables only or a trace without attention patterns
    (the bar chart's note says what capture would fill them)."""
    run = current_data().run(run_id)
    try:
        require_traces(run, "attention rollout and flow")
        require_probe(run, trace, "rollout")
    except NotAvailable:
        return HIDDEN, HIDDEN
    return {}, {}


@callback(Output(ids.FLOW_POSITION, "options"), Output(ids.FLOW_POSITION, "value"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"), State(ids.FLOW_POSITION, "value"),
          State(ids.FLOW_WANTED, "data"))
@guarded([], None, report=False)
def positions(run_id, trace, item, current, requested=None):
    """Output-token options, then the mean-pooled output (labelled as the model's pooling when its sentence-transformers
    config says so); a Run switch resets the choice to the model's output token (the last real token
    of a causal model, the first of an encoder), since an index into one Run's tokens means nothing in another."""
    data = current_data()
    run = data.run(run_id)
    if not run.manifest["traces"]:
        return [], None
    header = trace_header(run, trace)
    real = real_positions(data, run, trace, item or 0)
    # values index the item's real tokens, which is what the probes take
    options = token_options(header, item or 0, real, by_index=True)
    meta = meta_of(header)
    pooled = " (this model's pooling)" if meta.pooling == "mean" else ""
    options.append({"label": f"mean of all tokens{pooled}", "value": "mean"})
    default = len(real) - 1 if meta.causal else 0
    return options, wanted(current, options, (requested or {}).get("position"), default)


@callback(Output(ids.FLOW_BAR, "figure"), Output(ids.FLOW_GRID, "figure"), Output(ids.FLOW_GRID_BOX, "style"),
          Output(ids.FLOW_MESSAGE, "children"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"), Input(ids.FLOW_METHOD, "value"),
          Input(ids.FLOW_FUSION, "value"), Input(ids.FLOW_DISCARD, "value"), Input(ids.FLOW_OPTIONS, "value"),
          Input(ids.FLOW_POSITION, "value"))
@guarded(lambda: message_figure("no relevance to show"), lambda: message_figure(""), HIDDEN)
def show(run_id, trace, item, method, fusion, discard, options, position):
    data = current_data()
    run = data.run(run_id)
    require_traces(run, "attention rollout and flow", capture_for(["rollout"]))
    header = trace_header(run, trace)
    item = item or 0
    causal = meta_of(header).causal
    receptive = RECEPTIVE in (options or []) and method == "rollout"
    result = relevance(data, run, trace, item, method, fusion or "mean",
                       float(discard or 0) if method == "rollout" else 0.0, receptive, position)
    where = provenance(run_id, run, trace, item, method=method, fusion=fusion, position=position)
    bar = stamp(relevance_bar(result, batch=0), *where)
    note = None
    if RECEPTIVE in (options or []) and (method != "rollout" or not causal):
        note = message("Receptive-field normalisation applies to rollout on causal models only; it is off here.", "note")
    if not image_segments(header, item):
        return bar, message_figure(""), HIDDEN, note
    real = real_positions(data, run, trace, item)
    grid, label = grid_values(header, item, result.relevance[0][real], real)
    figure = patch_overlay(data.image_uri(run, item), grid, f"{method} relevance on the {label} patches",
                           value_label="relevance", attention_scale=False)
    return bar, stamp(figure, *where), {}, note
