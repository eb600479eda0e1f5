"""Circuits: which heads read what upstream heads wrote, and the effect of patching each head."""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html

from attnlab.dashboard import ids
from attnlab.dashboard.analyses import NotAvailable, circuit_edges
from attnlab.dashboard.app import current_data
from attnlab.dashboard.errors import explain, guarded
from attnlab.dashboard.summaries import head_statistic
from attnlab.dashboard.widgets import control, graph, message_area, page_header
from attnlab.viz.dashboard_figures import circuit_figure, head_grid, message_figure

dash.register_page(__name__, path="/circuits", name="Circuits", title="attnlab · Circuits", order=6)


def layout(**_query) -> html.Div:
    """Edge-strength threshold; the head communication graph and the patching heatmap."""
    return html.Div([
        page_header("Circuits", "Head communication from the sparse attention decomposition (Franco & Crovella 2024): "
                                "an edge says a head's attention read a signal an upstream head wrote. Both views "
                                "show result tables stored in the Run."),
        html.Div([control("Minimum edge strength", dcc.Slider(id=ids.CIRCUITS_MIN, min=0, max=1, step=0.05, value=0.2,
                                                             marks={0: "0", 0.5: "0.5", 1: "1"}))],
                 className="controls"),
        message_area(ids.CIRCUITS_MESSAGE),
        html.Div([graph(ids.CIRCUITS_GRAPH, "head communication graph"),
                  graph(ids.CIRCUITS_PATCHING, "activation patching effect per head")], className="two-columns"),
    ])


@callback(Output(ids.CIRCUITS_GRAPH, "figure"), Output(ids.CIRCUITS_MESSAGE, "children"),
          Input(ids.RUN, "value"), Input(ids.CIRCUITS_MIN, "value"))
@guarded(lambda: message_figure("not available in this Run"))
def show_graph(run_id, min_strength):
    run = current_data().run(run_id)
    edges = circuit_edges(run)
    model = run.info.model
    n_layers = int(model.get("n_layers") or edges["downstream"].str.split(".").str[0].astype(int).max() + 1)
    n_heads = int(model.get("n_heads") or edges["downstream"].str.split(".").str[1].astype(int).max() + 1)
    return circuit_figure(edges, n_layers, n_heads, float(min_strength or 0)), None


@callback(Output(ids.NAV, "href", allow_duplicate=True), Input(ids.CIRCUITS_PATCHING, "clickData"),
          prevent_initial_call=True)
def open_head(click):
    try:
        point = click["points"][0]
        return f"/attention?layer={int(point['y'])}&head={int(point['x'])}"
    except (TypeError, KeyError, IndexError, ValueError):
        raise dash.exceptions.PreventUpdate from None


@callback(Output(ids.CIRCUITS_PATCHING, "figure"), Input(ids.RUN, "value"), Input(ids.ITEM, "value"))
def show_patching(run_id, item):
    try:
        data = current_data()
        run = data.run(run_id)
        if "patching" not in run.manifest.get("results", []) or "main" not in run.manifest["traces"]:
            raise NotAvailable("Activation patching is not available in this Run (no 'patching' result table)")
        values, layers = head_statistic(data, run, "main", "patching", item or 0)
        return head_grid(values, layers, "patching effect", signed=True)
    except Exception as err:  # reported in the figure; the graph view keeps its own message
        return message_figure(explain(err).children)
