"""Interventions & evals: a baseline Run beside a Run under a Plan, and POPE/CHAIR tables from eval Runs."""

from __future__ import annotations

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, State, callback, dcc, html

from attnlab.dashboard import ids
from attnlab.dashboard.analyses import answers, eval_metrics, eval_summary, method_choices
from attnlab.dashboard.app import current_data
from attnlab.dashboard.data import trace_header
from attnlab.dashboard.errors import explain, guarded, message
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.help_texts import VIEWS
from attnlab.dashboard.summaries import attention_matrix
from attnlab.dashboard.viewstate import sync_url, wanted
from attnlab.dashboard.widgets import (as_int, control, graph, head_options, help_tip, keep, layer_options,
                                       message_area, page_header, provenance, radio, table, table_data,
                                       token_axis_labels, token_piece_hover)
from attnlab.jobs.compare import SUMMARY_TABLE
from attnlab.viz.attention import compare_attention
from attnlab.viz.evals import eval_bars
from attnlab.viz.style import message_figure, stamp

dash.register_page(__name__, path="/interventions", name="Interventions & evals",
                   title="attnlab · Interventions & evals", order=7)


sync_url(ids.IV_URL, {"baseline": ids.IV_BASELINE, "method": ids.IV_METHOD, "layer": ids.IV_LAYER,
                      "head": ids.IV_HEAD, "eval": ids.IV_EVAL, "metric": ids.IV_METRIC})


def layout(baseline=None, method=None, layer=None, head=None, eval=None, metric=None, **_query) -> html.Div:
    """Run pickers, layer/head selectors, the side-by-side maps and answers, and the eval tables (initial values
    from the query)."""
    return html.Div([
        page_header("Interventions & evals", "A baseline Run and the same inputs under an intervention Plan, side by "
                                             "side; below, POPE and CHAIR results of eval Runs."),
        dcc.Store(id=ids.IV_URL),
        dcc.Store(id=ids.IV_WANTED, data={"baseline": baseline, "method": method, "eval": eval, "metric": metric}),
        html.Div([control("Baseline Run", dcc.Dropdown(id=ids.IV_BASELINE), help=HELP[ids.IV_BASELINE]),
                  control("Method Run (same model and tokens)", dcc.Dropdown(id=ids.IV_METHOD),
                          help=HELP[ids.IV_METHOD])],
                 className="controls"),
        html.Div([control("Layer", radio(ids.IV_LAYER, value=as_int(layer)), help=HELP[ids.IV_LAYER]),
                  control("Head", radio(ids.IV_HEAD, value=as_int(head)), help=HELP[ids.IV_HEAD])],
                 className="controls"),
        message_area(ids.IV_MESSAGE),
        graph(ids.IV_MAPS, "baseline and method attention side by side"),
        html.Div(id=ids.IV_ANSWERS),
        html.H2("Evaluations"),
        html.Div([control("Eval Run", dcc.Dropdown(id=ids.IV_EVAL), help=HELP[ids.IV_EVAL]),
                  control("Metric", dcc.Dropdown(id=ids.IV_METRIC, clearable=False), help=HELP[ids.IV_METRIC])],
                 className="controls"),
        html.P(["POPE ", help_tip(VIEWS["pope"]), " · CHAIR ", help_tip(VIEWS["chair"])], className="note"),
        html.Div([graph(ids.IV_EVAL_CHART, "eval metric by method"),
                  table(ids.IV_EVAL_TABLE, pd.DataFrame())], className="two-columns"),
        html.H2("What each method chose"),
        table(ids.IV_PLANS_TABLE, pd.DataFrame()),
    ])


def _label(ref, run) -> str:
    return ref.label + (f" · plan {run.info.plan.get('name')}" if run.info.plan else "")


def compatible_runs(data, base_id) -> list[dict]:
    """Options for the method Run: other Runs of the baseline's model on the same tokens (never the baseline),
    Runs under a Plan first."""
    base = data.run(base_id)
    if "main" not in base.manifest["traces"]:
        return []
    model, tokens = str(base.info.model.get("name")), trace_header(base, "main")["tokens"]
    found = []
    for ref in data.runs():
        if ref.run_id == base_id:
            continue
        run = data.run(ref.run_id)
        if ("main" in run.manifest["traces"] and str(run.info.model.get("name")) == model
                and trace_header(run, "main")["tokens"] == tokens):
            found.append((not run.info.plan, {"label": _label(ref, run), "value": ref.run_id}))
    return [option for _, option in sorted(found, key=lambda f: f[0])]


@callback(Output(ids.IV_BASELINE, "options"), Output(ids.IV_BASELINE, "value"), Output(ids.IV_EVAL, "options"),
          Output(ids.IV_EVAL, "value"), Input(ids.RUN, "value"), State(ids.IV_BASELINE, "value"),
          State(ids.IV_EVAL, "value"), State(ids.IV_WANTED, "data"))
@guarded([], None, [], None, report=False)
def run_options(selected, base, current_eval, requested=None):
    """Baseline and eval Runs. A Run switch makes the selected Run the baseline (or, for a Run under a Plan, its
    plain counterpart) and the selected eval Run the eval shown; a page load takes them from the URL."""
    data = current_data()
    requested = requested or {}
    traced, evals = [], []
    for ref in data.runs():
        run = data.run(ref.run_id)
        if run.manifest["traces"]:
            traced.append({"label": _label(ref, run), "value": ref.run_id})
        if run.results_of(SUMMARY_TABLE):
            evals.append({"label": ref.label, "value": ref.run_id})
    base = wanted(base, traced, requested.get("baseline"), _baseline_for(data, selected, traced))
    default_eval = selected if selected in [e["value"] for e in evals] else (evals[0]["value"] if evals else None)
    return traced, base, evals, wanted(current_eval, evals, requested.get("eval"), default_eval)


def _baseline_for(data, selected, traced) -> str | None:
    values = [t["value"] for t in traced]
    if selected not in values:
        return values[0] if values else None
    if data.run(selected).info.plan:  # a Run under a Plan: compare it with its plain counterpart
        plain = [o["value"] for o in compatible_runs(data, selected) if not data.run(o["value"]).info.plan]
        return plain[0] if plain else selected
    return selected


@callback(Output(ids.IV_METHOD, "options"), Output(ids.IV_METHOD, "value"), Input(ids.IV_BASELINE, "value"),
          State(ids.RUN, "value"), State(ids.IV_METHOD, "value"), State(ids.IV_WANTED, "data"))
@guarded([], None, report=False)
def method_options(base_id, selected, current, requested=None):
    """Runs comparable with the baseline: the selected Run when it is one, else the current or requested one,
    else the first Run under a Plan."""
    if base_id is None:
        return [], None
    options = compatible_runs(current_data(), base_id)
    values = [o["value"] for o in options]
    if selected in values:
        return options, selected
    return options, wanted(current, options, (requested or {}).get("method"), values[0] if values else None)


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
    if base_id is None or method_id is None or layer is None or head is None or base_id == method_id:
        return message_figure("pick a baseline and a method Run of the same model and inputs"), None, message(
            f"No other Run of the same model on the same tokens as {base_id} is served: a Run captured under a Plan "
            "(attach(model, capture, plan=...)) on the same inputs would appear here.", "note")
    data = current_data()
    base, method = data.run(base_id), data.run(method_id)
    if trace_header(base, "main")["tokens"] != trace_header(method, "main")["tokens"]:
        raise ValueError("The two Runs have different tokens; pick Runs of the same model on the same inputs")
    item = item if item is not None and item < len(trace_header(base, "main")["tokens"]) else 0
    a, real, _ = attention_matrix(data, base, "main", layer, head, item)
    b, _, _ = attention_matrix(data, method, "main", layer, head, item)
    tokens = trace_header(base, "main")["tokens"][item]
    plan = (method.info.plan or {}).get("name", "no plan")
    figure = compare_attention(a, b, token_axis_labels(tokens, real), (f"baseline ({base_id})", f"method: {plan}"),
                               hover_labels=token_piece_hover(tokens, real))
    stamp(figure, *provenance(f"{base_id} vs {method_id}", base, "main", item, layer=layer, head=head))
    note = None
    change = float(np.abs(b - a).sum(-1).mean() / 2)
    if change < 1e-6:
        note = message(f"The Plan leaves layer {layer}, head {head} unchanged here; try another layer or head.", "note")
    return figure, _answers(answers(base), answers(method)), note


#: long prompts and answers wrap instead of widening the table.
WRAP = [{"if": {"column_id": c}, "whiteSpace": "normal", "height": "auto"} for c in ("prompt", "baseline", "method")]


def _answers(base: dict, method: dict):
    """The generated answers of both Runs, one row per prompt, as a table that exports CSV."""
    if not base and not method:
        return None
    prompts = list(dict.fromkeys([*base, *method]))
    frame = pd.DataFrame({"prompt": prompts, "baseline": [base.get(p, "—") for p in prompts],
                          "method": [method.get(p, "—") for p in prompts]})
    return html.Div([html.H2("Answers"), table(ids.IV_ANSWERS_TABLE, frame, style_cell_conditional=WRAP)])


@callback(Output(ids.IV_METRIC, "options"), Output(ids.IV_METRIC, "value"), Output(ids.IV_EVAL_TABLE, "data"),
          Output(ids.IV_EVAL_TABLE, "columns"), Input(ids.IV_EVAL, "value"), State(ids.IV_METRIC, "value"),
          State(ids.IV_WANTED, "data"))
@guarded([], None, [], [], report=False)
def eval_table(eval_id, metric, requested=None):
    if eval_id is None:
        return [], None, [], []
    frame = eval_summary(current_data().run(eval_id))
    metrics = [{"label": m, "value": m} for m in eval_metrics(frame)]
    rows, columns = table_data(frame)
    default = "f1" if "f1" in [m["value"] for m in metrics] else keep(None, metrics)
    return metrics, wanted(metric, metrics, (requested or {}).get("metric"), default), rows, columns


@callback(Output(ids.IV_EVAL_CHART, "figure"), Input(ids.IV_EVAL, "value"), Input(ids.IV_METRIC, "value"))
def eval_chart(eval_id, metric):
    if eval_id is None:
        return message_figure("No eval Runs (with a POPE/CHAIR summary table) are served")
    try:
        run = current_data().run(eval_id)
        return stamp(eval_bars(eval_summary(run), metric or ""), *provenance(eval_id, run, None, metric=metric))
    except Exception as err:  # reported in the figure
        return message_figure(explain(err).children)


@callback(Output(ids.IV_PLANS_TABLE, "data"), Output(ids.IV_PLANS_TABLE, "columns"), Input(ids.IV_EVAL, "value"))
@guarded([], [], report=False)
def plans_table(eval_id):
    """The layers, heads and sink dimensions each method of the eval Run chose (from its manifest)."""
    if eval_id is None:
        return [], []
    return table_data(method_choices(current_data().run(eval_id)))
