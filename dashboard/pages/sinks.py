"""Sinks & registers: sink tokens per head, massive activations, high-norm patch tokens with and without registers."""

from __future__ import annotations

from pathlib import Path

import dash
import pandas as pd
from dash import Input, Output, State, callback, dcc, html

from attnlab.core.trace_files import segments_of
from attnlab.dashboard import ids
from attnlab.dashboard.analyses import NotAvailable, massive, registers, require_probe, sinks
from attnlab.dashboard.app import current_data
from attnlab.dashboard.errors import explain, guarded, message
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.help_texts import VIEWS
from attnlab.dashboard.viewstate import run_switched, sync_url, wanted
from attnlab.dashboard.widgets import (HIDDEN, as_int, control, graph, help_tip, keep, message_area, page_header,
                                       provenance, radio, require_traces, shown_if, table, table_data)
from attnlab.probes.registry import capture_for
from attnlab.probes.sinks import RULE_LABELS
from attnlab.probes.sinks import RULES as SINK_RULES
from attnlab.viz.registers import register_norm_map
from attnlab.viz.style import message_figure, stamp
from attnlab.viz.massive import massive_activation_plot
from attnlab.viz.sinks import sink_heatmap

dash.register_page(__name__, path="/sinks", name="Sinks & registers", title="attnlab · Sinks & registers", order=4)

RULES = [{"label": RULE_LABELS[rule], "value": rule} for rule in SINK_RULES]  # the library's default first
SUMMARY_COLUMNS = ["position", "token", "category", "n_heads", "n_layers", "mean_mass"]


sync_url(ids.SINKS_URL, {"rule": ids.SINKS_RULE, "norm_layer": ids.SINKS_LAYER, "compare": ids.SINKS_COMPARE})


def layout(rule=None, norm_layer=None, compare=None, **_query) -> html.Div:
    """Sink heatmap and table, massive activations, and the patch-grid norms of two Runs side by side."""
    return html.Div([
        page_header("Sinks & registers", "Tokens that absorb attention (sinks), the hidden dimensions with massive "
                                         "activations, and high-norm patch tokens in vision transformers."),
        dcc.Store(id=ids.SINKS_URL), dcc.Store(id=ids.SINKS_WANTED, data={"compare": compare}),
        html.Div([control("Sink rule", radio(ids.SINKS_RULE, RULES, rule if rule in SINK_RULES else SINK_RULES[0]),
                          help=HELP[ids.SINKS_RULE])], className="controls", id=ids.SINKS_CONTROLS),
        message_area(ids.SINKS_MESSAGE),
        html.Div([
            html.Div([graph(ids.SINKS_HEATMAP, "sink mass per head"),
                      html.Div([html.H2("Sink tokens"), table(ids.SINKS_TABLE, pd.DataFrame(columns=SUMMARY_COLUMNS))])],
                     className="two-columns"),
            html.Div([html.Div(graph(ids.SINKS_MASSIVE, "largest activations per layer"), id=ids.SINKS_MASSIVE_BOX),
                      html.Div([html.H2(["Massive activations", help_tip(VIEWS["massive"])]),
                                html.Div(id=ids.SINKS_SUMMARY)])],
                     className="two-columns")], id=ids.SINKS_BODY),
        html.H2(["High-norm tokens on the patch grid", help_tip(VIEWS["registers"])]),
        html.P(id=ids.SINKS_NORMS_NOTE, className="note"),
        html.Div([
            html.Div([control("Layer", dcc.Slider(id=ids.SINKS_LAYER, min=0, max=1, step=1,
                                                  value=as_int(norm_layer, 1)), help=HELP[ids.SINKS_LAYER]),
                      control("Compare with", dcc.Dropdown(id=ids.SINKS_COMPARE, placeholder="another vision Run"),
                              help=HELP[ids.SINKS_COMPARE])],
                     className="controls"),
            html.Div([graph(ids.SINKS_NORMS, "token norms of this Run"),
                      graph(ids.SINKS_NORMS_OTHER, "token norms of the other Run")], className="two-columns",
                     id=ids.SINKS_NORMS_BOX)], id=ids.SINKS_NORMS_SECTION),
    ])


@callback(Output(ids.SINKS_HEATMAP, "figure"), Output(ids.SINKS_TABLE, "data"), Output(ids.SINKS_TABLE, "columns"),
          Output(ids.SINKS_MESSAGE, "children"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          Input(ids.ITEM, "value"), Input(ids.SINKS_RULE, "value"))
@guarded(lambda: message_figure("no sinks to show"), [], [])
def show_sinks(run_id, trace, item, rule):
    data = current_data()
    run = data.run(run_id)
    require_traces(run, "the sink view", capture_for(["sinks"]))
    result = sinks(data, run, trace, rule or SINK_RULES[0], item or 0)
    summary = result.token_summary()[SUMMARY_COLUMNS].sort_values("n_heads", ascending=False)
    rows, columns = table_data(summary)
    figure = stamp(sink_heatmap(result, batch=0), *provenance(run_id, run, trace, item or 0, rule=rule))
    return figure, rows, columns, None


@callback(Output(ids.SINKS_MASSIVE, "figure"), Output(ids.SINKS_MASSIVE_BOX, "style"),
          Output(ids.SINKS_SUMMARY, "children"), Input(ids.RUN, "value"), Input(ids.TRACE, "value"),
          Input(ids.ITEM, "value"))
@guarded(lambda: message_figure("no layer outputs captured"), HIDDEN)
def show_massive(run_id, trace, item):
    """The largest activations per layer beside a summary; without layer outputs the plot gives way to one line
    naming the capture that adds them."""
    data = current_data()
    run = data.run(run_id)
    try:
        require_traces(run, "the massive-activation view", capture_for(["massive"]))
        result = massive(data, run, trace, item or 0)
    except NotAvailable as err:  # one line instead of an empty figure
        return message_figure(""), HIDDEN, message(str(err), "note")
    frame = result.to_frame()
    lines = [html.P(f"Relative test only: |h| ≥ {result.ratio:g} × the layer's median |h| (the paper's absolute "
                    "floor of 100 is meant for 7B-scale models).")]
    if frame.empty:
        lines.append(html.P("None in this item."))
    else:
        dims = ", ".join(str(d) for d in sorted(frame["dim"].unique()))
        tokens = ", ".join(sorted({f"{p}:{t}" for p, t in zip(frame["position"], frame["token"])}))
        lines += [html.P(["Dimensions: ", html.Code(dims)]), html.P(["Tokens: ", html.Code(tokens)])]
    figure = massive_activation_plot(result, batch=0)
    return stamp(figure, *provenance(run_id, run, trace, item or 0)), {}, lines


@callback(Output(ids.SINKS_CONTROLS, "style"), Output(ids.SINKS_BODY, "style"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id, trace):
    """The sink rule (hidden unless the trace feeds the sink probe) and the sink and massive-activation views
    (hidden unless it feeds one of them); the views' notes say what capture would fill them."""
    run = current_data().run(run_id)
    feeds = {probe: _feeds(run, trace, probe) for probe in ("sinks", "massive")}
    return shown_if(feeds["sinks"]), shown_if(any(feeds.values()))


def _feeds(run, trace, probe: str) -> bool:
    """Whether ``run`` holds traces and ``trace`` captured what ``probe`` reads."""
    try:
        require_traces(run, probe)
        require_probe(run, trace, probe)
    except NotAvailable:
        return False
    return True


@callback(Output(ids.SINKS_COMPARE, "options"), Output(ids.SINKS_COMPARE, "value"), Output(ids.SINKS_LAYER, "max"),
          Output(ids.SINKS_LAYER, "value"), Output(ids.SINKS_LAYER, "marks"), Output(ids.SINKS_NORMS_SECTION, "style"),
          Output(ids.SINKS_NORMS_NOTE, "children"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), State(ids.SINKS_COMPARE, "value"),
          State(ids.SINKS_LAYER, "value"), State(ids.SINKS_WANTED, "data"))
@guarded([], None, 1, 1, {}, HIDDEN, "", report=False)
def compare_options(run_id, trace, current, layer=None, requested=None):
    """The Runs to compare patch norms with, and the layer slider. A Run switch picks the new Run's register
    counterpart (or none); a Run without patch tokens and layer outputs hides the section with one line."""
    data = current_data()
    run = data.run(run_id)
    if _vision_trace(run) is None:
        return [], None, 1, 1, {}, HIDDEN, NORMS_NEED
    options = [{"label": ref.label, "value": ref.run_id} for ref in data.runs()
               if ref.run_id != run_id and _vision_trace(data.run(ref.run_id)) is not None]
    layers = run.manifest["traces"].get(trace, {}).get("layers", [])
    n = len(layers) if layers else 1
    marks = {i: str(layer) for i, layer in enumerate(layers)}
    value = wanted(current, options, (requested or {}).get("compare"), _counterpart(data, run, options))
    index = max(n - 1, 0) if run_switched() or layer is None or not 0 <= int(layer) < n else int(layer)
    return options, value, max(n - 1, 0), index, marks, {}, None


NORMS_NEED = ("Patch-grid norms need image patches and layer outputs: they appear for a vision Run captured with "
              "Capture(resid=True).")


def _vision_trace(run) -> str | None:
    """The trace of a Run with image patches and layer outputs (``main`` or the LVLM's ``main.vision``)."""
    for name in ("main", "main.vision"):
        header = run.manifest["traces"].get(name)
        if header and "resid" in header["meta"]["captured"] and any(
                s.kind == "image" and s.grid for segs in segments_of(header) for s in segs):
            return name
    return None


def _counterpart(data, run, options) -> str | None:
    """The Run of the same model with (or without) registers, when there is one."""
    name = Path(str(run.info.model.get("name", ""))).name
    for option in options:
        other = Path(str(data.run(option["value"]).info.model.get("name", ""))).name
        if other and (other == f"{name}-reg" or name == f"{other}-reg"):
            return option["value"]
    return options[0]["value"] if options else None


@callback(Output(ids.SINKS_NORMS, "figure"), Output(ids.SINKS_NORMS_OTHER, "figure"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"), Input(ids.SINKS_LAYER, "value"),
          Input(ids.SINKS_COMPARE, "value"))
def show_norms(run_id, trace, item, layer, other_id):
    data = current_data()
    try:
        if _vision_trace(data.run(run_id)) is None:
            return dash.no_update, dash.no_update  # the section is hidden
    except ValueError:
        return dash.no_update, dash.no_update
    return _norm_map(data, run_id, trace, item, layer), _norm_map(data, other_id, None, item, layer)


def _norm_map(data, run_id, trace, item, layer):
    if run_id is None:
        return message_figure("pick another vision Run to compare")
    try:
        run = data.run(run_id)
        trace = trace if trace is not None and trace == _vision_trace(run) else _vision_trace(run)
        if trace is None:
            raise NotAvailable("no patch tokens with layer outputs in this Run")
        result = registers(data, run, trace)
        index = min(int(layer if layer is not None else -1), len(result.layers) - 1)
        item = min(item or 0, result.norms.shape[1] - 1)
        figure = register_norm_map(result, item, index, str(run.info.model.get("name", "?")).split("/")[-1])
        return stamp(figure, *provenance(run_id, run, trace, item, layer=result.layers[index]))
    except Exception as err:  # the view reports its own failure; the other one still shows
        return message_figure(explain(err).children)
