"""Runs: pick a Run; see its model, inputs, what was captured and the timings."""

from __future__ import annotations

import datetime as dt

import dash
import pandas as pd
from dash import Input, Output, State, callback, html

from attnlab.dashboard import ids
from attnlab.dashboard.app import current_data
from attnlab.dashboard.errors import guarded, message
from attnlab.dashboard.widgets import message_area, page_header, table, timing_bars
from attnlab.probes.registry import runnable

dash.register_page(__name__, path="/", name="Runs", title="attnlab · Runs", order=0)


def _runs_frame() -> pd.DataFrame:
    data = current_data()
    rows = []
    for ref in data.all_runs():
        try:
            if ref.error is not None:
                raise ValueError(ref.error)
            run = data.run(ref.run_id)
        except ValueError as err:  # listed with its reason; every other page skips it
            rows.append({"run": ref.run_id, "model": "invalid (skipped)", "family": "", "traces": "",
                         "captured": str(err).splitlines()[0] if str(err) else "", "probes": "", "results": "",
                         "plan": "", "created": ""})
            continue
        m = run.manifest
        captured = sorted({c for t in m["traces"].values() for c in t["meta"]["captured"]})
        rows.append({"run": ref.run_id, "model": str(m["model"].get("name", "?")).split("/")[-1],
                     "family": m["model"].get("family", ""), "traces": ", ".join(m["traces"]) or "—",
                     "captured": ", ".join(captured) or "—", "probes": ", ".join(runnable(captured)) or "—",
                     "results": ", ".join(m.get("results", [])) or "—",
                     "plan": (m.get("plan") or {}).get("name", "") or "—",
                     "created": dt.datetime.fromtimestamp(m.get("created", 0)).strftime("%Y-%m-%d %H:%M")})
    return pd.DataFrame(rows, columns=["run", "model", "family", "traces", "captured", "probes", "results", "plan",
                                       "created"])


def layout(**_query) -> html.Div:
    """The Run table and the selected Run's details."""
    return html.Div([
        page_header("Runs", "Every Run under the served directories. Click a row (or use the Run selector above) "
                            "to open it; the other pages show the selected Run."),
        table(ids.RUNS_TABLE, _runs_frame(), page_size=15, row_selectable=False, cell_selectable=True),
        message_area(ids.RUNS_MESSAGE),
        html.Div([html.Div(id=ids.RUNS_DETAIL, className="detail"), html.Div(id=ids.RUNS_TIMINGS, className="detail")],
                 className="two-columns"),
    ])


@callback(Output(ids.RUN, "value"), Input(ids.RUNS_TABLE, "active_cell"), State(ids.RUNS_TABLE, "derived_viewport_data"),
          State(ids.RUN, "value"))
def pick_run(cell, rows, current):
    # never PreventUpdate here: the pages' callbacks wait on this one, and a prevented update would block them
    if not cell or not rows or not 0 <= cell.get("row", -1) < len(rows):
        return current
    return rows[cell["row"]]["run"]


@callback(Output(ids.RUNS_DETAIL, "children"), Output(ids.RUNS_TIMINGS, "children"),
          Output(ids.RUNS_MESSAGE, "children"), Input(ids.RUN, "value"))
@guarded(None, None)
def show_run(run_id):
    if run_id is None:
        return None, None, message("No Runs were found under the served directories.", "note")
    run = current_data().run(run_id)
    info = run.info
    detail = [html.H2(f"Run {run_id}"), _facts("Model", info.model), _inputs(info.inputs), _facts("Capture", info.capture)]
    if info.plan:
        detail.append(_facts("Plan", {"name": info.plan.get("name"), "layers": ", ".join(info.plan.get("layers", {}))}))
    detail.append(_traces(run))
    if run.manifest.get("results"):
        detail.append(html.P(["Results: ", html.Code(", ".join(run.manifest["results"]))]))
    return detail, timing_bars(info.timings), None


def _facts(title: str, values: dict) -> html.Div:
    shown = {k: v for k, v in values.items() if v not in (None, "", [], {})}
    return html.Div([html.H3(title), html.Dl([part for k, v in shown.items()
                                              for part in (html.Dt(k), html.Dd(_short(v)))], className="facts")])


def _short(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= 160 else text[:157] + "…"


def _inputs(inputs: dict) -> html.Div:
    items = [html.Li(t) for t in inputs.get("texts", [])[:12]]
    items += [html.Li(["image ", html.Code(str(p))]) for p in inputs.get("images", [])[:12]]
    extra = {k: v for k, v in inputs.items() if k not in ("texts", "images")}
    return html.Div([html.H3("Inputs"), html.Ol(items) if items else html.P("—")] + ([_facts("", extra)] if extra else []))


def _traces(run) -> html.Div:
    """The Run's traces, one row each (shape, items, token lengths, segments, what was captured), as a table that
    exports CSV."""
    rows = []
    for name, header in run.manifest["traces"].items():
        meta = header["meta"]
        lengths = sorted({len(t) for t in header["tokens"]})
        kinds = sorted({s["kind"] for segs in header["segments"] for s in segs})
        rows.append({"trace": name, "layers x heads": f"{meta['n_layers']} x {meta['n_heads']}",
                     "items": len(header["tokens"]),
                     "tokens": f"{lengths[0]}–{lengths[-1]}" if len(lengths) > 1 else str(lengths[0]),
                     "segments": ", ".join(kinds), "captured": ", ".join(meta["captured"]),
                     "captured layers": _short(header["layers"])})
    if not rows:
        return html.Div([html.H3("Traces"), html.P("This Run holds result tables only.")])
    return html.Div([html.H3("Traces"), table(ids.RUNS_TRACES_TABLE, pd.DataFrame(rows), page_size=10)])
