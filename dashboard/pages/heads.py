"""Heads: every layer x head as one grid coloured by a chosen statistic; click a head to open it."""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, ctx, dcc, html

from attnlab.core.trace_files import meta_of
from attnlab.dashboard import ids
from attnlab.dashboard.app import current_data
from attnlab.dashboard.analyses import NotAvailable
from attnlab.dashboard.data import trace_header
from attnlab.dashboard.errors import guarded
from attnlab.dashboard.help_texts import CONTROLS as HELP
from attnlab.dashboard.help_texts import STATISTICS, statistic_help
from attnlab.dashboard.summaries import STAT_LABELS, head_stat_options, head_statistic
from attnlab.dashboard.viewstate import sync_url, wanted
from attnlab.dashboard.widgets import (HIDDEN, control, graph, help_tip, keep, message_area, page_header,
                                       provenance, require_traces, shown_if)
from attnlab.viz.style import head_grid, message_figure, stamp

dash.register_page(__name__, path="/heads", name="Heads", title="attnlab · Heads", order=1)

#: statistics on a fixed range, so grids of two Runs compare by colour.
FIXED_RANGES = {"max": (0.0, 1.0), "first": (0.0, 1.0), "special": (0.0, 1.0), "image": (0.0, 1.0), "sinks": (0.0, 1.0)}
sync_url(ids.HEADS_URL, {"stat": ids.HEADS_STAT})


def layout(stat=None, **_query) -> html.Div:
    """Statistic selector (initial value from the query), the head grid, and a keyboard way to open a head."""
    return html.Div([
        page_header("Heads", "One cell per attention head. Choose what colours the grid; click a head (or pick it "
                             "below and press Open) to see its attention."),
        dcc.Store(id=ids.HEADS_URL), dcc.Store(id=ids.HEADS_WANTED, data={"stat": stat}),
        html.Div([control("Statistic", dcc.Dropdown(id=ids.HEADS_STAT, clearable=False), help=statistic_help(stat),
                          help_id=ids.HEADS_STAT_HELP),
                  control("Open head", dcc.Dropdown(id=ids.HEADS_OPEN, placeholder="layer.head"),
                          help=HELP[ids.HEADS_OPEN]),
                  html.Button("Open", id=ids.HEADS_OPEN_BUTTON, className="button", n_clicks=0)],
                 className="controls", id=ids.HEADS_CONTROLS),
        message_area(ids.HEADS_MESSAGE),
        html.Div(graph(ids.HEADS_GRID, "per-head statistic grid"), id=ids.HEADS_BODY),
    ])


@callback(Output(ids.HEADS_CONTROLS, "style"), Output(ids.HEADS_BODY, "style"), Input(ids.RUN, "value"),
          Input(ids.TRACE, "value"))
@guarded(HIDDEN, HIDDEN, report=False)
def availability(run_id, trace):
    """The control bar and the grid, hidden for a Run of result tables only or a trace with no per-head statistic
    (the grid's note says what capture would fill them)."""
    data = current_data()
    run = data.run(run_id)
    shown = shown_if(bool(run.manifest["traces"]) and bool(head_stat_options(data, run, trace)))
    return shown, shown


@callback(Output(ids.HEADS_STAT_HELP, "children"), Input(ids.HEADS_STAT, "value"))
def stat_help(stat):
    """The "?" beside the selector describes the statistic chosen."""
    return help_tip(statistic_help(stat))


@callback(Output(ids.HEADS_STAT, "options"), Output(ids.HEADS_STAT, "value"), Output(ids.HEADS_OPEN, "options"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), State(ids.HEADS_STAT, "value"),
          State(ids.HEADS_WANTED, "data"))
@guarded([], None, [], report=False)
def stat_options(run_id, trace, current, requested=None):
    data = current_data()
    run = data.run(run_id)
    header = trace_header(run, trace)
    options = [{**o, "title": STATISTICS[o["value"]]} for o in head_stat_options(data, run, trace)]
    heads = [{"label": f"{layer}.{h}", "value": f"{layer}.{h}"} for layer in header["layers"]
             for h in range(meta_of(header).n_heads)]
    default = "entropy" if "entropy" in [o["value"] for o in options] else keep(None, options)
    # the statistic stays across a Run switch when the new Run has it (it means the same everywhere)
    value = current if current in [o["value"] for o in options] else wanted(None, options, (requested or {}).get("stat"),
                                                                           default)
    return options, value, heads


@callback(Output(ids.HEADS_GRID, "figure"), Output(ids.HEADS_MESSAGE, "children"),
          Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"), Input(ids.HEADS_STAT, "value"))
@guarded(lambda: message_figure("no head statistics to show"))
def show_grid(run_id, trace, item, stat):
    data = current_data()
    run = data.run(run_id)
    require_traces(run, "the head grid", "stats")
    if stat is None:
        raise NotAvailable("This trace has no per-head statistic to show: capture with Capture(stats=True) "
                           "(--capture stats) or Capture(pattern=True) (--capture pattern).")
    values, layers = head_statistic(data, run, trace, stat, item or 0)
    label = STAT_LABELS[stat]
    figure = head_grid(values, layers, label, signed=stat == "patching", zrange=FIXED_RANGES.get(stat),
                       title=f"{label} per head (click a head to open it)")
    return stamp(figure, *provenance(run_id, run, trace, item or 0, stat=stat)), None


@callback(Output(ids.NAV, "href", allow_duplicate=True), Input(ids.HEADS_GRID, "clickData"),
          Input(ids.HEADS_OPEN_BUTTON, "n_clicks"), State(ids.HEADS_OPEN, "value"), prevent_initial_call=True)
def open_head(click, _n, chosen):
    target = _from_click(click) if ctx.triggered_id == ids.HEADS_GRID else _from_choice(chosen)
    if target is None:
        raise dash.exceptions.PreventUpdate
    return f"/attention?layer={target[0]}&head={target[1]}"


def _from_click(click) -> tuple[int, int] | None:
    try:
        point = click["points"][0]
        return int(point["y"]), int(point["x"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def _from_choice(chosen) -> tuple[int, int] | None:
    try:
        layer, head = str(chosen).split(".")
        return int(layer), int(head)
    except ValueError:
        return None
