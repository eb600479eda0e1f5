"""Interventions & evals: a baseline Run beside a Run under a Plan, and POPE/CHAIR tables from eval Runs."""

from __future__ import annotations

import dash
import numpy as np
from dash import Input, Output, State, callback, dcc, html

from attnlab.dashboard import ids
from attnlab.dashboard.analyses import answers, eval_metrics, eval_summary, intervention_pairs
from attnlab.dashboard.app import current_data
from attnlab.dashboard.data import trace_header
from attnlab.dashboard.errors import explain, guarded, message
from attnlab.dashboard.summaries import attention_matrix
from attnlab.dashboard.widgets import (control, graph, head_options, keep, layer_options, message_area, page_header,
                                       radio, table, table_data)
from attnlab.viz.dashboard_figures import compare_attention, eval_bars, message_figure

dash.register_page(__name__, path="/interventions", name="Interventions & evals",
                   title="attnlab · Interventions & evals", order=7)


def layout(**_query) -> html.Div:
    """Run pickers, layer/head selectors, the side-by-side maps and answers, and the eval tables."""
    import pandas as pd

    return html.Div([
        page_header("Interventions & evals", "A baseline Run and the same inputs under an intervention Plan, side by "
                                             "side; below, POPE and CHAIR results of eval Runs."),
        html.Div([control("Baseline Run", dcc.Dropdown(id=ids.IV_BASELINE)),
                  control("Method Run", dcc.Dropdown(id=ids.IV_METHOD))], className="controls"),
        html.Div([control("Layer", radio(ids.IV_LAYER)), control("Head", radio(ids.IV_HEAD))], className="controls"),
        message_area(ids.IV_MESSAGE),
        graph(ids.IV_MAPS, "baseline and method attention side by side"),
        html.Div(id=ids.IV_ANSWERS),
        html.H2("Evaluations"),
        html.Div([control("Eval Run", dcc.Dropdown(id=ids.IV_EVAL)),
                  control("Metric", dcc.Dropdown(id=ids.IV_METRIC, clearable=False))], className="controls"),
        html.Div([graph(ids.IV_EVAL_CHART, "eval metric by method"),
                  table(ids.IV_EVAL_TABLE, pd.DataFrame())], className="two-columns"),
    ])


@callback(Output(ids.IV_BASELINE, "options"), Output(ids.IV_BASELINE, "value"), Output(ids.IV_METHOD, "options"),
          Output(ids.IV_METHOD, "value"), Output(ids.IV_EVAL, "options"), Output(ids.IV_EVAL, "value"),
          Input(ids.RUN, "value"), State(ids.IV_BASELINE, "value"), State(ids.IV_METHOD, "value"),
          State(ids.IV_EVAL, "value"))
@guarded([], None, [], None, [], None, report=False)
def run_options(selected, base, method, current_eval):
    data = current_data()
    traced, evals = [], []
    for ref in data.runs():
        run = data.run(ref.run_id)
        if run.manifest["traces"]:
            traced.append({"label": ref.label + (f" · plan {run.info.plan.get('name')}" if run.info.plan else ""),
                           "value": ref.run_id})
        if "summary" in run.manifest.get("results", []):
            evals.append({"label": ref.label, "value": ref.run_id})
    pairs = intervention_pairs(data)
    pair = next((p for p in pairs if selected in p), pairs[0] if pairs else (None, None))
    return (traced, keep(base, traced, pair[0]), traced, keep(method, traced, pair[1]), evals,
            keep(current_eval, evals, selected))


@callback(Output(ids.IV_LAYER, "options"), Output(ids.IV_LAYER, "value"), Output(ids.IV_HEAD, "options"),
          Output(ids.IV_HEAD, "value"), Input(ids.IV_BASELINE, "value"), State(ids.IV_LAYER, "value"),
          State(ids.IV_HEAD, "value"))
@guarded([], None, [], None, report=False)
def selectors(base_id, layer, head):
    header = trace_header(current_data().run(base_id), "main")
    layers, heads = layer_options(header), head_options(header)
    return layers, keep(layer, layers), heads, keep(head, heads)


@callback(Output(ids.IV_MAPS, "figure"), Output(ids.IV_ANSWERS, "children"), Output(ids.IV_MESSAGE, "children"),
          Input(ids.IV_BASELINE, "value"), Input(ids.IV_METHOD, "value"), Input(ids.ITEM, "value"),
          Input(ids.IV_LAYER, "value"), Input(ids.IV_HEAD, "value"))
@guarded(lambda: message_figure("pick a baseline and a method Run of the same model and inputs"), None)
def compare(base_id, method_id, item, layer, head):
    if base_id is None or method_id is None or layer is None or head is None:
        return message_figure("pick a baseline and a method Run of the same model and inputs"), None, message(
            "No pair of Runs with and without a Plan was found; pick two Runs of the same model and inputs.", "note")
    data = current_data()
    base, method = data.run(base_id), data.run(method_id)
    if trace_header(base, "main")["tokens"] != trace_header(method, "main")["tokens"]:
        raise ValueError("The two Runs have different tokens; pick Runs of the same model on the same inputs")
    item = item if item is not None and item < len(trace_header(base, "main")["tokens"]) else 0
    a, real, _ = attention_matrix(data, base, "main", layer, head, item)
    b, _, _ = attention_matrix(data, method, "main", layer, head, item)
    tokens = trace_header(base, "main")["tokens"][item]
    plan = (method.info.plan or {}).get("name", "no plan")
    figure = compare_attention(a, b, [f"{n}:{tokens[n]}" for n in real],
                               (f"baseline ({base_id})", f"method: {plan}"))
    note = None
    change = float(np.abs(b - a).sum(-1).mean() / 2)
    if change < 1e-6:
        note = message(f"The Plan leaves layer {layer}, head {head} unchanged here; try another layer or head.", "note")
    return figure, _answers(answers(base), answers(method)), note


def _answers(base: dict, method: dict):
    if not base and not method:
        return None
    prompts = list(dict.fromkeys([*base, *method]))
    rows = [html.Tr([html.Td(p), html.Td(base.get(p, "—")), html.Td(method.get(p, "—"))]) for p in prompts]
    return html.Div([html.H2("Answers"), html.Table([html.Thead(html.Tr([html.Th("prompt"), html.Th("baseline"),
                                                                        html.Th("method")])), html.Tbody(rows)],
                                                    className="plain")])


@callback(Output(ids.IV_METRIC, "options"), Output(ids.IV_METRIC, "value"), Output(ids.IV_EVAL_TABLE, "data"),
          Output(ids.IV_EVAL_TABLE, "columns"), Input(ids.IV_EVAL, "value"), State(ids.IV_METRIC, "value"))
@guarded([], None, [], [], report=False)
def eval_table(eval_id, metric):
    if eval_id is None:
        return [], None, [], []
    frame = eval_summary(current_data().run(eval_id))
    metrics = [{"label": m, "value": m} for m in eval_metrics(frame)]
    rows, columns = table_data(frame)
    return metrics, keep(metric, metrics, "f1"), rows, columns


@callback(Output(ids.IV_EVAL_CHART, "figure"), Input(ids.IV_EVAL, "value"), Input(ids.IV_METRIC, "value"))
def eval_chart(eval_id, metric):
    if eval_id is None:
        return message_figure("No eval Runs (with a POPE/CHAIR summary table) are served")
    try:
        return eval_bars(eval_summary(current_data().run(eval_id)), metric or "")
    except Exception as err:  # reported in the figure
        return message_figure(explain(err).children)
