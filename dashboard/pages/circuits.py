"""Circuits: which heads read what upstream heads wrote, and the effect of patching each head."""

from __future__ import annotations

import math

import dash
from dash import Input, Output, State, callback, dcc, html

from attnlab.dashboard import ids
from attnlab.dashboard.analyses import circuit_edges
from attnlab.dashboard.app import current_data
from attnlab.dashboard.errors import guarded, message
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.help_texts import VIEWS
from attnlab.dashboard.summaries import head_statistic
from attnlab.dashboard.viewstate import sync_url
from attnlab.dashboard.widgets import (HIDDEN, control, graph, help_tip, message_area, page_header, provenance,
                                       shown_if)
from attnlab.interventions.patching import PatchingResult
from attnlab.probes.circuits import CircuitGraph
from attnlab.viz.circuits import circuit_figure
from attnlab.viz.style import head_grid, message_figure, stamp

dash.register_page(__name__, path="/circuits", name="Circuits", title="attnlab · Circuits", order=6)


sync_url(ids.CIRCUITS_URL, {"min_strength": ids.CIRCUITS_MIN})


def layout(min_strength=None, **_query) -> html.Div:
    """Edge-strength threshold; the head communication graph and the patching heatmap."""
    try:
        value = float(min_strength)
    except (TypeError, ValueError):
        value = None
    return html.Div([
        page_header("Circuits", "Head communication from the sparse attention decomposition (Franco & Crovella 2024): "
                                "an edge says a head's attention read a signal an upstream head wrote. Both views "
                                "show result tables stored in the Run."),
        dcc.Store(id=ids.CIRCUITS_URL),
        html.Div([control("Minimum edge strength", dcc.Slider(id=ids.CIRCUITS_MIN, min=0, max=1, step=0.01,
                                                             value=value, tooltip={"always_visible": True,
                                                                                   "placement": "bottom"}),
                          help=HELP[ids.CIRCUITS_MIN]),
                  html.Div(id=ids.CIRCUITS_READOUT, className="readout", **{"aria-live": "polite"})],
                 className="controls", id=ids.CIRCUITS_CONTROLS),
        message_area(ids.CIRCUITS_MESSAGE),
        html.Div([html.Div(graph(ids.CIRCUITS_GRAPH, "head communication graph"), id=ids.CIRCUITS_BODY),
                  html.Div([html.P(["Patching effect per head ", help_tip(VIEWS["patching"])], className="note"),
                            graph(ids.CIRCUITS_PATCHING, "activation patching effect per head")],
                           id=ids.CIRCUITS_PATCHING_BOX)], className="two-columns"),
    ])


@callback(Output(ids.CIRCUITS_CONTROLS, "style"), Output(ids.CIRCUITS_BODY, "style"), Input(ids.RUN, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id):
    """The strength slider and the graph, hidden when the Run stores no circuits table (the message says how to
    add one)."""
    shown = shown_if(bool(current_data().run(run_id).results_of(CircuitGraph.table_name)))
    return shown, shown


@callback(Output(ids.CIRCUITS_MIN, "min"), Output(ids.CIRCUITS_MIN, "max"), Output(ids.CIRCUITS_MIN, "marks"),
          Output(ids.CIRCUITS_MIN, "value"), Input(ids.RUN, "value"), State(ids.CIRCUITS_MIN, "value"))
@guarded(0, 1, None, 0.2, report=False)
def strength_range(run_id, current):
    """The slider spans the stored edges' strengths (rounded out to 0.01) and starts at the weakest, showing every
    edge (the readout counts them); a value inside the range stays."""
    edges = circuit_edges(current_data().run(run_id))
    low = math.floor(float(edges["strength"].min()) * 100) / 100
    high = math.ceil(float(edges["strength"].max()) * 100) / 100
    high = max(high, low + 0.01)
    value = current if current is not None and low <= float(current) <= high else low
    return low, high, {low: f"{low:g}", high: f"{high:g}"}, value


@callback(Output(ids.CIRCUITS_GRAPH, "figure"), Output(ids.CIRCUITS_READOUT, "children"),
          Output(ids.CIRCUITS_MESSAGE, "children"), Input(ids.RUN, "value"), Input(ids.CIRCUITS_MIN, "value"))
@guarded(lambda: message_figure("not available in this Run"), "")
def show_graph(run_id, min_strength):
    run = current_data().run(run_id)
    edges = circuit_edges(run)
    model = run.info.model
    n_layers = int(model.get("n_layers") or edges["downstream"].str.split(".").str[0].astype(int).max() + 1)
    n_heads = int(model.get("n_heads") or edges["downstream"].str.split(".").str[1].astype(int).max() + 1)
    threshold = float(min_strength or 0)
    shown = int((edges["strength"] >= threshold).sum())
    figure = circuit_figure(edges, n_layers, n_heads, threshold)
    readout = f"strength ≥ {threshold:.2f}: {shown} of {len(edges)} edges"
    return stamp(figure, *provenance(run_id, run, "main", None, min_strength=f"{threshold:.2f}")), readout, None


@callback(Output(ids.NAV, "href", allow_duplicate=True), Input(ids.CIRCUITS_PATCHING, "clickData"),
          prevent_initial_call=True)
def open_head(click):
    try:
        point = click["points"][0]
        return f"/attention?layer={int(point['y'])}&head={int(point['x'])}"
    except (TypeError, KeyError, IndexError, ValueError):
        raise dash.exceptions.PreventUpdate from None


@callback(Output(ids.CIRCUITS_PATCHING, "figure"), Output(ids.CIRCUITS_PATCHING_BOX, "style"),
          Input(ids.RUN, "value"), Input(ids.ITEM, "value"))
@guarded(lambda: message_figure(""), HIDDEN, report=False)
def show_patching(run_id, item):
    """The patching grid, hidden (the graph's message says what is missing) when the Run has no patching table."""
    data = current_data()
    run = data.run(run_id)
    if not run.results_of(PatchingResult.table_name) or "main" not in run.manifest["traces"]:
        return message_figure(""), HIDDEN
    values, layers = head_statistic(data, run, "main", "patching", item or 0)
    figure = head_grid(values, layers, "patching effect", signed=True)
    return stamp(figure, *provenance(run_id, run, "main", item or 0)), {}
