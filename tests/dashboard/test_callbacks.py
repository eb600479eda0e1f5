"""Callbacks without a browser: each page's data path on the demo Runs, and errors turned into messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from attnlab.core.runs import Run
from attnlab.dashboard import ids


def page(name: str):
    """A page module as Dash loaded it (``create_app`` executes the pages folder)."""
    return sys.modules[f"attnlab.dashboard.pages.{name}"]


def points(figure: go.Figure) -> int:
    """Values a figure draws (heatmap cells, bars, markers, image pixels)."""
    total = 0
    for trace in figure.data:
        for attr in ("z", "y", "source"):
            value = getattr(trace, attr, None)
            if value is not None:
                total += np.asarray(value, dtype=object).size
                break
    return total


def is_message(component, kind: str | None = None) -> bool:
    return component is not None and "message" in component.className and (kind is None or kind in component.className)


def test_runs_page_shows_details_and_timings(ctx):
    detail, timings, note = page("runs").show_run("0:minilm")
    assert note is None
    text = json.dumps(detail, default=lambda c: c.to_plotly_json())
    assert "bert" in text and "quick brown fox" in text and "pattern" in text
    # One bar per recorded phase, the longest at full width, the others in proportion.
    recorded = ctx.server.extensions["attnlab"].run("0:minilm").info.timings
    bars = [c for c in _walk(timings) if "timing-bar" in (getattr(c, "className", None) or "")]
    widths = [float(b.style["width"].rstrip("%")) for b in bars]
    longest = max(recorded.values())
    assert len(bars) == len(recorded) and max(widths) == 100.0
    assert widths == pytest.approx([100 * v / longest for v in recorded.values()], abs=0.06)


def test_runs_table_lists_the_probes_each_run_can_feed(ctx):
    """The probes column is the registry's answer for the Run's captured fields."""
    from attnlab.probes.registry import runnable

    frame = page("runs")._runs_frame().set_index("run")
    captured = Run.open(ctx.server.extensions["attnlab"].run("0:minilm").path).manifest["traces"]["main"]["meta"]["captured"]
    assert frame.loc["0:minilm", "probes"] == ", ".join(runnable(captured))
    assert "rollout" in frame.loc["0:minilm", "probes"] and "circuits" in frame.loc["0:toy-gpt", "probes"]


def test_shell_lists_traces_and_items(ctx):
    from attnlab.dashboard.app import choose_item, choose_trace

    opts, value, hint = choose_trace("0:toy-llava", None)
    assert value == "main" and {o["value"] for o in opts} == {"main", "main.vision", "text"}
    assert "llava" in hint
    assert choose_trace("0:toy-llava", "text")[1] == "text"
    items, item = choose_item("0:minilm", "main", 7)
    assert len(items) == 4 and item == 0 and "quick brown fox" in items[0]["label"]


def test_heads_grid_for_every_statistic_the_run_offers(ctx):
    heads = page("heads")
    for run_id in ("0:minilm", "0:toy-llava", "0:toy-vit-reg"):
        options, value, open_options = heads.stat_options(run_id, "main", None)
        assert value == "entropy" and open_options
        for option in options:
            figure, note = heads.show_grid(run_id, "main", 0, option["value"])
            assert note is None, (run_id, option, note)
            assert points(figure) > 0
    stats = {o["value"] for o in heads.stat_options("0:toy-llava", "main", None)[0]}
    assert {"image", "vhd", "sinks"} <= stats


def test_heads_click_opens_the_head(ctx):
    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    context_value.set(AttributeDict(triggered_inputs=[{"prop_id": f"{ids.HEADS_GRID}.clickData", "value": 1}]))
    href = page("heads").open_head({"points": [{"x": 7, "y": "3"}]}, 0, None)
    assert href == "/attention?layer=3&head=7"


def test_attention_heatmap_is_the_stored_pattern(ctx, demo_root):
    attention = page("attention")
    figure, note = attention.heatmap("0:minilm", "main", 1, 4, 9)
    trace = Run.open(demo_root / "minilm").trace("main", layers=[4])
    real = trace.token_mask[1].numpy()
    oracle = trace.layer(4).pattern[1, 9].numpy()[real][:, real]
    np.testing.assert_allclose(np.asarray(figure.data[0].z), oracle, rtol=1e-6)
    assert figure.data[0].zmin == 0 and figure.data[0].zmax == 1 and note is None
    assert list(figure.data[0].x)[0] == "0:[CLS]"


def test_attention_from_queries_and_keys_matches_the_pattern(ctx, demo_root, tmp_path):
    """Without a stored pattern the map is recomputed from q and k; on BERT it must equal what the model applied."""
    import shutil

    from attnlab.core.runs import save_run
    from attnlab.dashboard.data import DashboardData
    from attnlab.dashboard.summaries import attention_matrix

    full = Run.open(demo_root / "minilm")
    trace = full.trace("main", layers=[3])
    for rec in trace.layers.values():
        rec.pattern = None
    save_run(tmp_path / "qk-only", {"main": trace}, full.info)
    data = DashboardData([tmp_path])
    recomputed, real, source = attention_matrix(data, data.run("0:qk-only"), "main", 3, 5, 2)
    oracle = full.trace("main", layers=[3]).layer(3).pattern[2, 5].double().numpy()[np.ix_(real, real)]
    assert source == "q·k"
    np.testing.assert_allclose(recomputed, oracle, atol=2e-5)
    shutil.rmtree(tmp_path / "qk-only")


def test_head_statistics_from_a_stored_pattern_equal_the_kernel_statistics(ctx, demo_root, tmp_path):
    """A Run that kept patterns but no statistics shows the same head grid as the kernel's own statistics."""
    import shutil

    from attnlab.core.runs import save_run
    from attnlab.dashboard.data import DashboardData
    from attnlab.dashboard.summaries import head_statistic

    full = Run.open(demo_root / "minilm")
    trace = full.trace("main", layers=[2, 3])
    for rec in trace.layers.values():
        rec.stats = {}
    save_run(tmp_path / "pattern-only", {"main": trace}, full.info)
    data = DashboardData([demo_root, tmp_path])
    assert data.has_field(data.run("0:minilm"), "main", 2, "stats.entropy")  # the kernel's, stored at capture
    assert not data.has_field(data.run("1:pattern-only"), "main", 2, "stats.entropy")
    for stat in ("entropy", "max", "first", "special"):
        kernel, layers = head_statistic(data, data.run("0:minilm"), "main", stat, 2)
        derived, kept = head_statistic(data, data.run("1:pattern-only"), "main", stat, 2)
        assert kept == [2, 3] and derived.shape == (2, kernel.shape[1])
        np.testing.assert_allclose(derived, kernel[[layers.index(2), layers.index(3)]], atol=2e-5, err_msg=stat)
    shutil.rmtree(tmp_path / "pattern-only")


def test_attention_text_view_and_image_overlay(ctx):
    attention = page("attention")
    text = attention.text_view("0:minilm", "main", 0, 2, 3, 4)
    assert [t.type for t in text.data] == ["bar", "bar", "scatter", "scatter"] and points(text) > 0
    assert "position 4" in text.layout.annotations[0].text
    # an LVLM's image span is one cell holding the focus's whole attention to the patches: the row still sums to 1
    text = attention.text_view("0:toy-llava", "main", 0, 1, 2, None)
    row = np.asarray(text.data[0].marker.color, dtype=float)
    labels = list(text.data[0].text)
    assert row.sum() == pytest.approx(1.0, abs=1e-5) and text.data[0].marker.cmax == pytest.approx(row.max())
    assert labels.count("img 4×4") == 1 and "<image>" not in labels
    options, query, style = attention.query_options("0:toy-llava", "main", 0, None)
    assert style == {} and query == options[-1]["value"]  # causal: the last prompt token
    overlay = attention.image_view("0:toy-llava", "main", 0, 1, 2, query)
    assert any(isinstance(t, go.Image) for t in overlay.data)
    assert np.asarray(overlay.data[-1].z).shape == (4, 4)
    assert attention.query_options("0:minilm", "main", 0, None)[2] == {"display": "none"}


def _trigger(prop: str) -> None:
    """Make ``prop`` (``"id.property"``) the input that fired the next callback called by hand."""
    from dash._callback_context import context_value
    from dash._utils import AttributeDict

    context_value.set(AttributeDict(triggered_inputs=[{"prop_id": prop, "value": 1}]))


def test_a_click_on_a_token_refocuses_the_text_view(ctx):
    attention = page("attention")
    before = attention.text_view("0:minilm", "main", 0, 2, 3, None)
    first = before.data[0]
    assert "position 0" in before.layout.annotations[0].text  # an encoder focuses its first token
    _trigger(f"{ids.ATTN_TEXT}.clickData")
    click = {"points": [{"customdata": list(first.customdata[5]), "curveNumber": 0, "pointNumber": 5}]}
    position = attention.focus(click, None, 0)
    assert position == first.customdata[5][0] == 5
    after = attention.text_view("0:minilm", "main", 0, 2, 3, position)
    assert "position 5" in after.layout.annotations[0].text
    row = np.asarray(after.data[0].marker.color, dtype=float)
    assert not np.allclose(row, np.asarray(first.marker.color, dtype=float))  # token 5's row, not token 0's
    assert after.data[0].marker.cmax == pytest.approx(row.max())  # the colour scale follows the focused row
    shape = after.layout.shapes[0]
    assert shape.x0 == pytest.approx(after.data[0].base[5]) and shape.y0 == after.data[0].y[5] - 0.5
    _trigger(f"{ids.ATTN_TEXT}.clickData")
    assert attention.focus({"points": [{"customdata": [-1, 0.5]}]}, None, 5) == 5  # an image cell keeps the focus
    _trigger(f"{ids.ATTN_HEATMAP}.clickData")
    assert attention.focus(None, {"points": [{"y": "7:playing", "x": "2:a"}]}, 5) == 7  # a word-first row label


def test_token_labels_are_word_first_with_the_raw_piece_on_hover():
    from attnlab.dashboard.widgets import token_axis_labels, token_options, token_piece_hover

    tokens = ["[CLS]", "play", "##ing", "now", "[SEP]"]
    assert token_axis_labels(tokens, range(5)) == ["0:[CLS]", "1:playing", "2:playing", "3:now", "4:[SEP]"]
    assert token_piece_hover(tokens, range(5)) == {"1:playing": "1:playing (piece play)",
                                                    "2:playing": "2:playing (piece ##ing)"}
    options = token_options({"tokens": [tokens]}, 0, [1, 2, 3], by_index=True)
    assert [o["label"] for o in options] == ["1: playing", "2: playing", "3: now"]
    assert [o["value"] for o in options] == [0, 1, 2] and options[1]["title"] == "word piece ##ing"
    assert "title" not in options[2]


def test_flow_rollout_and_flow(ctx):
    flow = page("flow")
    options, position = flow.positions("0:toy-vit", "main", 0, None)
    assert position == 0 and flow.availability("0:toy-vit", "main") == ({}, {})
    for method in ("rollout", "flow"):
        bar, grid, style, note = flow.show("0:toy-vit", "main", 0, method, "mean", 0.0, [], position)
        relevance = np.asarray(bar.data[0].y, dtype=float)
        assert relevance.sum() == pytest.approx(1.0, abs=1e-6) and style == {}
        assert np.asarray(grid.data[-1].z).shape == (4, 4)
    bar, _, style, note = flow.show("0:minilm", "main", 0, "rollout", "max", 0.5, ["receptive-field"], 0)
    assert style == {"display": "none"} and is_message(note, "note")
    # the mean-pooled output MiniLM really uses is the mean of the per-token rollout rows (rollout is linear)
    rows = [np.asarray(flow.show("0:minilm", "main", 0, "rollout", "mean", 0.0, [], i)[0].data[0].y, dtype=float)
            for i in range(len(flow.positions("0:minilm", "main", 0, None)[0]) - 1)]
    pooled, *_ = flow.show("0:minilm", "main", 0, "rollout", "mean", 0.0, [], "mean")
    np.testing.assert_allclose(np.asarray(pooled.data[0].y, dtype=float), np.mean(rows, axis=0), atol=1e-9)
    assert "mean-pooled output" in pooled.layout.title.text


def test_sinks_massive_and_registers(ctx):
    sinks = page("sinks")
    figure, rows, columns, note = sinks.show_sinks("0:minilm", "main", 0, "act")
    assert points(figure) == 6 * 12 and note is None and rows
    assert rows[0]["token"] == "[CLS]"
    plot, box, summary = sinks.show_massive("0:minilm", "main", 0)
    assert points(plot) > 0 and box == {} and summary
    options, other, top, value, marks, section, note = sinks.compare_options("0:toy-vit", "main", None)
    assert other == "0:toy-vit-reg" and section == {} and note is None  # the counterpart with registers
    mine, theirs = sinks.show_norms("0:toy-vit", "main", 0, value, other)
    assert "without registers" in mine.layout.title.text and "with registers" in theirs.layout.title.text
    # an LVLM's patches live in its vision tower's trace
    assert "registers" in sinks.show_norms("0:toy-llava", "main", 0, 1, None)[0].layout.title.text


def test_qk_views(ctx, demo_root):
    qk = page("qk")
    layers, layer, heads, head = qk.selectors("0:minilm", "main", None, None)
    assert layer == 0 and len(heads) == 12 and qk.availability("0:minilm", "main") == ({}, {})
    assert qk.availability("0:eval-compare", None) == ({"display": "none"},) * 2  # results only: hidden
    grid, note = qk.small_multiples("0:minilm", "main", 1, "segment")
    assert note is None and len({t.xaxis for t in grid.data}) == 12
    # every panel and the open head say how faithful their picture is (the probe's own numbers)
    from attnlab.probes.qk_embedding import QKEmbedding

    trace = Run.open(demo_root / "minilm").trace("main", layers=[1])
    fitted = QKEmbedding(method="pca").fit(trace, layer=1, head=3)
    panels = [a.text for a in grid.layout.annotations]
    assert f"head 3 ρ {fitted.layout_correlation_:+.2f}" in panels and len([p for p in panels if " ρ " in p]) == 12
    detail = qk.detail("0:minilm", "main", 1, 3, "position", "pca")
    assert f"{fitted.layout_correlation_:.2f} in this picture" in detail.layout.title.text
    click = {"points": [{"customdata": detail.data[0].customdata[5]}]}
    bar = qk.token_view(click, "0:minilm", "main", 1, 3)
    weights = np.asarray(bar.data[0].y, dtype=float)
    is_query = click["points"][0]["customdata"][1] == "query"
    assert weights.min() >= 0 and (not is_query or weights.sum() == pytest.approx(1.0, abs=1e-4))
    grid, note = qk.small_multiples("0:eval-compare", "main", None, "kind")
    assert is_message(note)


def test_circuits_not_available_without_tables(ctx):
    circuits = page("circuits")
    figure, readout, note = circuits.show_graph("0:minilm", 0.2)
    assert is_message(note, "note") and "not available in this Run" in note.children
    assert circuits.availability("0:minilm") == ({"display": "none"},) * 2
    assert circuits.availability("0:toy-gpt") == ({}, {})
    heads = page("heads")
    assert heads.availability("0:eval-compare", None) == ({"display": "none"},) * 2
    assert heads.availability("0:minilm", "main") == ({}, {})
    figure, style = circuits.show_patching("0:minilm", 0)
    assert style == {"display": "none"}


def test_circuits_from_stored_tables(ctx):
    """toy-gpt-tables holds hand-written circuit and patching tables (see conftest)."""
    figure, readout, note = page("circuits").show_graph("0:toy-gpt-tables", 0.2)
    lines = [t for t in figure.data if t.mode == "lines"]
    assert note is None and len(lines) == 3  # 0.1 -> 1.3 (strong), embed -> 1.0, 0.3 -> 1.2; 0.2 -> 1.1 is hidden
    assert "3 edges" in figure.layout.title.text
    patching, style = page("circuits").show_patching("0:toy-gpt-tables", 0)
    assert style == {} and readout == "strength ≥ 0.20: 3 of 4 edges"
    z = np.asarray(patching.data[0].z, dtype=float)
    assert z[1, 1] == pytest.approx(0.9) and z[0, 1] == pytest.approx(-0.2)
    assert patching.data[0].zmid == 0
    assert "patching" in {o["value"] for o in page("heads").stat_options("0:toy-gpt-tables", "main", None)[0]}


def test_circuits_from_the_pipeline(ctx, demo_root):
    """The demo's toy-gpt tables come from trace_circuits on the trained model: its graph and IOI patching show,
    and the induction head the model was trained to form is in the circuit table (study 05's finding)."""
    figure, readout, note = page("circuits").show_graph("0:toy-gpt", 0.0)
    assert note is None and any(t.mode == "lines" for t in figure.data)
    patching, style = page("circuits").show_patching("0:toy-gpt", 0)
    assert style == {} and np.isfinite(np.asarray(patching.data[0].z, dtype=float)).any()
    heads = Run.open(demo_root / "toy-gpt").result("circuit_heads")
    assert heads["induction"].max() > 0.5, heads


def test_interventions_pair_maps_answers_and_evals(ctx):
    iv = page("interventions")
    base_opts, base, eval_opts, evaluation = iv.run_options("0:minilm", None, None)
    method_opts, method = iv.method_options(base, "0:minilm", None)
    assert (base, method) == ("0:minilm", "0:minilm-sink-reweight") and evaluation == "0:eval-compare"
    figure, answers, note = iv.compare(base, method, 0, 2, 0)
    assert len(figure.data) == 3 and np.abs(np.asarray(figure.data[2].z, dtype=float)).max() > 0
    figure, answers, note = iv.compare("0:toy-llava", "0:toy-llava-first-to-image", 0, 1, 1)
    assert answers is not None  # the demo stores greedy answers for the LVLM
    metrics, metric, rows, columns = iv.eval_table("0:eval-compare", None)
    assert metric == "f1" and len(rows) == 6
    chart = iv.eval_chart("0:eval-compare", "accuracy")
    assert {t.name for t in chart.data} == {"baseline", "act"}
    figure, answers, note = iv.compare("0:minilm", "0:toy-gpt", 0, 0, 0)
    assert is_message(note) and "different tokens" in note.children


def _table(component, table_id: str):
    """The DataTable ``table_id`` inside a callback's output."""
    from dash import dash_table

    found = [c for c in _walk(component) if isinstance(c, dash_table.DataTable) and c.id == table_id]
    assert len(found) == 1, table_id
    return found[0]


def test_answers_and_traces_are_tables_that_export_csv(ctx):
    """The Interventions answers and the Runs page's traces are DataTables (sortable, with a CSV export) holding
    each Run's own values: one row per prompt with both Runs' answers, one row per trace with what it captured."""
    from attnlab.dashboard.analyses import answers
    from attnlab.dashboard.app import current_data

    data = current_data()
    base, method = "0:toy-llava", "0:toy-llava-first-to-image"
    _, shown, _ = page("interventions").compare(base, method, 0, 1, 1)
    table = _table(shown, ids.IV_ANSWERS_TABLE)
    assert table.export_format == "csv" and [c["id"] for c in table.columns] == ["prompt", "baseline", "method"]
    said = answers(data.run(base)), answers(data.run(method))
    expected = {p: (said[0].get(p, "—"), said[1].get(p, "—")) for p in {*said[0], *said[1]}}
    assert expected and {r["prompt"]: (r["baseline"], r["method"]) for r in table.data} == expected
    detail, _, _ = page("runs").show_run("0:toy-llava")
    table = _table(html_div(detail), ids.RUNS_TRACES_TABLE)
    traces = data.run("0:toy-llava").manifest["traces"]
    assert table.export_format == "csv" and [r["trace"] for r in table.data] == list(traces)
    assert [r["captured"] for r in table.data] == [", ".join(t["meta"]["captured"]) for t in traces.values()]
    detail, _, _ = page("runs").show_run("0:eval-compare")
    assert "result tables only" in json.dumps(detail, default=lambda c: c.to_plotly_json())


def html_div(children):
    """Children wrapped in one Div, so :func:`_walk` reaches them all."""
    from dash import html

    return html.Div(children)


def test_errors_become_messages_not_traces(ctx):
    figure, note = page("heads").show_grid("0:../..", "main", 0, "entropy")
    assert is_message(note, "error") and "Traceback" not in note.children
    figure, note = page("attention").heatmap("0:minilm", "main", 0, 99, 0)
    assert is_message(note, "error") and "Layer 99" in note.children
    figure, note = page("attention").heatmap("0:minilm", "nope", 0, 0, 0)
    assert is_message(note) and "no trace" in note.children


def test_unexpected_failures_give_a_generic_message(ctx, monkeypatch):
    attention = page("attention")

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail that must not reach the page")

    monkeypatch.setattr(attention, "attention_matrix", broken)
    figure, note = attention.heatmap("0:minilm", "main", 0, 0, 0)
    assert is_message(note, "error") and "server log" in note.children and "internal detail" not in note.children
    assert figure.layout.meta["empty"]
    assert attention.text_view("0:minilm", "main", 0, 0, 0, None).layout.meta["empty"]


def test_http_traversal_gets_a_message_and_the_app_keeps_serving(app):
    """A crafted callback request naming a path outside the roots is answered with a message, not a 500."""
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    client.get("/_dash-layout")
    body = {"output": f"..{ids.RUNS_DETAIL}.children...{ids.RUNS_TIMINGS}.children...{ids.RUNS_MESSAGE}.children..",
            "outputs": [{"id": ids.RUNS_DETAIL, "property": "children"}, {"id": ids.RUNS_TIMINGS, "property": "children"},
                        {"id": ids.RUNS_MESSAGE, "property": "children"}],
            "inputs": [{"id": ids.RUN, "property": "value", "value": "0:../../../etc"}],
            "changedPropIds": [f"{ids.RUN}.value"], "state": []}
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "outside the served directories" in text and "Traceback" not in text
    body["inputs"][0]["value"] = "0:minilm"
    again = client.post("/_dash-update-component", json=body)
    assert again.status_code == 200 and "bert" in again.get_data(as_text=True)


def test_demo_is_cached(demo_root):
    from attnlab.recipes.demo import DemoModel, build_demo_run

    before = (demo_root / "minilm" / "manifest.json").stat().st_mtime_ns
    build_demo_run(demo_root, progress=False, models=[DemoModel("minilm", "minilm", "text-encoder")])
    assert (demo_root / "minilm" / "manifest.json").stat().st_mtime_ns == before
    manifest = Run.open(demo_root / "minilm").manifest
    assert manifest["capture"]["qk"] and manifest["capture"]["resid"] and len(manifest["inputs"]["texts"]) == 4


def test_demo_eval_run_compares_every_method_on_fresh_scenes(ctx, demo_root):
    """The demo's LVLM eval Run: POPE on three splits and CHAIR for each method, metrics recomputable."""
    from attnlab.core.runs import Run
    from attnlab.recipes.demo_eval import METHODS
    from attnlab.evals.pope import load_pope_questions, pope_metrics

    run = Run.open(demo_root / "toy-llava-eval")
    summary = run.result("summary")
    pope = summary[summary["task"] == "pope"]
    assert set(pope["method"]) == set(METHODS) and set(pope["split"]) == {"random", "popular", "adversarial"}
    assert set(summary[summary["task"] == "chair"]["method"]) == set(METHODS)
    for _, row in pope.iterrows():
        preds = run.result(f"predictions-pope-{row['split']}-{row['method']}")
        assert pope_metrics(preds["label"].tolist(), preds["prediction"].tolist()).accuracy == row["accuracy"]
    # ACT calibrated on other scenes than the ones it is scored on (compared by pixels, not names).
    calib = run.info.inputs["calibration"]
    calib_files = {Path(calib["images"]) / q.image for q in load_pope_questions(calib["pope"]["calibration"])}
    test_files = Path(run.info.inputs["dataset"]["images"]).glob("*.png")
    assert calib_files and not {f.read_bytes() for f in calib_files} & {f.read_bytes() for f in test_files}
    iv = page("interventions")
    metrics, metric, rows, _ = iv.eval_table("0:toy-llava-eval", None)
    assert len(rows) == len(summary) and metric == "f1"
    assert {t.name for t in iv.eval_chart("0:toy-llava-eval", "accuracy").data} == set(METHODS)


def _walk(component):
    """Every Dash component below ``component`` (itself included)."""
    yield component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if hasattr(child, "to_plotly_json"):
            yield from _walk(child)


def _errors(value) -> list[str]:
    """Texts of red error boxes anywhere in a callback's return value."""
    if isinstance(value, (list, tuple)):
        return [e for v in value for e in _errors(v)]
    if hasattr(value, "className") and "message-error" in str(getattr(value, "className", "") or ""):
        return [str(value.children)]
    children = getattr(value, "children", None)
    return _errors(children) if isinstance(children, (list, tuple)) or hasattr(children, "className") else []


def _page_outputs(run_id: str) -> dict:
    """What every page's callbacks return for a Run at its defaults, as a user opening each page would get."""
    from attnlab.dashboard.app import choose_trace

    _, trace, _ = choose_trace(run_id, None)
    out = {"runs": page("runs").show_run(run_id)}
    heads = page("heads")
    options, stat, _ = heads.stat_options(run_id, trace, None)
    out["heads"] = heads.show_grid(run_id, trace, 0, stat)
    attention = page("attention")
    _, layer, _, head = attention.selectors(run_id, trace, None, None)
    out["attention"] = [attention.heatmap(run_id, trace, 0, layer, head, "auto", []),
                        attention.text_view(run_id, trace, 0, layer, head, None),
                        attention.query_options(run_id, trace, 0, None)]
    flow = page("flow")
    _, position = flow.positions(run_id, trace, 0, None)
    out["flow"] = flow.show(run_id, trace, 0, "rollout", "mean", 0.0, [], position)
    sinks = page("sinks")
    compare = sinks.compare_options(run_id, trace, None)
    out["sinks"] = [sinks.show_sinks(run_id, trace, 0, "act"), sinks.show_massive(run_id, trace, 0), compare]
    qk = page("qk")
    _, qk_layer, _, qk_head = qk.selectors(run_id, trace, None, None)
    out["qk"] = [qk.small_multiples(run_id, trace, qk_layer, "kind"),
                 qk.detail(run_id, trace, qk_layer, qk_head, "kind", "pca")]
    circuits = page("circuits")
    *_, strength = circuits.strength_range(run_id, None)
    out["circuits"] = [circuits.show_graph(run_id, strength), circuits.show_patching(run_id, 0)]
    iv = page("interventions")
    _, base, _, evaluation = iv.run_options(run_id, None, None)
    _, method = iv.method_options(base, run_id, None)
    _, iv_layer, _, iv_head = iv.selectors(base, None, None)
    out["interventions"] = [iv.compare(base, method, 0, iv_layer, iv_head), iv.eval_table(evaluation, None)]
    return out


def test_no_page_shows_an_error_box_for_any_demo_run(ctx):
    """Views a Run cannot fill say what capture would enable them (a note), never a red error."""
    from attnlab.dashboard.app import current_data

    runs = [ref.run_id for ref in current_data().runs()]
    assert {"0:minilm", "0:toy-vit", "0:toy-llava", "0:toy-gpt", "0:eval-compare"} <= set(runs)
    found = {(run_id, name): _errors(value) for run_id in runs for name, value in _page_outputs(run_id).items()}
    assert not {k: v for k, v in found.items() if v}
    heatmap, note = page("attention").heatmap("0:eval-compare", None, 0, None, None, "auto", [])
    assert is_message(note, "note") and "attnlab capture" in note.children


def test_a_run_switch_resets_run_specific_controls(ctx, monkeypatch):
    flow, sinks, iv = page("flow"), page("sinks"), page("interventions")
    options, kept = flow.positions("0:toy-gpt", "main", 0, 0)
    assert kept == 0  # without a Run switch the current value stays
    options, asked = flow.positions("0:toy-gpt", "main", 0, None, {"position": "2"})
    assert asked == 2  # a page load takes the URL's value (the Dropdown itself drops it before its options exist)
    from attnlab.dashboard import viewstate

    monkeypatch.setattr(viewstate, "run_switched", lambda: True)
    monkeypatch.setattr(sinks, "run_switched", lambda: True)
    options, position = flow.positions("0:toy-gpt", "main", 0, 0)
    assert position == len(options) - 2  # a causal model's output token is its last real token, not <bos>
    assert options[-1] == {"label": "mean of all tokens", "value": "mean"}  # then the mean-pooled output
    options, position = flow.positions("0:minilm", "main", 0, 5)
    assert position == 0  # an encoder's: [CLS]
    assert options[-1] == {"label": "mean of all tokens (this model's pooling)", "value": "mean"}
    _, other, *_ = sinks.compare_options("0:toy-vit-reg", "main", "0:toy-llava")
    assert other == "0:toy-vit"  # the register twin, not the comparison chosen for the previous Run
    _, base, _, evaluation = iv.run_options("0:toy-llava-first-to-image", "0:minilm", "0:eval-compare")
    assert base == "0:toy-llava"  # a Run under a Plan is compared with its plain counterpart
    method_opts, method = iv.method_options(base, "0:toy-llava-first-to-image", "0:minilm-sink-reweight")
    assert method == "0:toy-llava-first-to-image"
    _, _, _, evaluation = iv.run_options("0:toy-llava-eval", None, "0:eval-compare")
    assert evaluation == "0:toy-llava-eval"


def test_interventions_offers_only_comparable_runs(ctx):
    from attnlab.dashboard.app import current_data

    data = current_data()
    for ref in data.runs():
        if not data.run(ref.run_id).manifest["traces"]:
            continue
        options, method = page("interventions").method_options(ref.run_id, ref.run_id, ref.run_id)
        assert ref.run_id not in [o["value"] for o in options] and method != ref.run_id
        base = data.run(ref.run_id)
        for option in options:
            other = data.run(option["value"])
            assert other.info.model["name"] == base.info.model["name"]
            assert other.manifest["traces"]["main"]["tokens"] == base.manifest["traces"]["main"]["tokens"]
    figure, answers, note = page("interventions").compare("0:minilm", "0:minilm", 0, 0, 0)
    assert is_message(note, "note") and "unchanged" not in note.children


def test_figures_carry_provenance(ctx):
    figure, _ = page("attention").heatmap("0:toy-gpt", "main", 1, 1, 2, "auto", [])
    name, subtitle = figure.layout.meta["export"], figure.layout.title.subtitle.text
    for part in ("0-toy-gpt", "toy-gpt", "main", "item1", "layer1", "head2"):
        assert part in name
    assert subtitle.startswith("Run 0:toy-gpt · toy-gpt · trace main · item 1 · layer 1 · head 2")


def test_the_shell_opens_the_view_the_url_names(app):
    from attnlab.dashboard.app import shell

    with app.server.test_request_context("/_dash-layout", headers={
            "Referer": "http://localhost/attention?run=0:toy-gpt&trace=main&item=2&layer=1"}):
        layout = shell(app.server.extensions["attnlab"])
    values = {c.id: c.value for c in _walk(layout) if getattr(c, "id", None) in (ids.RUN, ids.TRACE, ids.ITEM)}
    assert values == {ids.RUN: "0:toy-gpt", ids.TRACE: "main", ids.ITEM: 2}
    with app.server.test_request_context("/_dash-layout", headers={"Referer": "http://elsewhere/?run=0:toy-gpt"}):
        layout = shell(app.server.extensions["attnlab"])
    assert next(c.value for c in _walk(layout) if getattr(c, "id", None) == ids.RUN) == "0:minilm"


def _walk(component):
    yield component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children] if children is not None else []:
        if hasattr(child, "to_plotly_json"):
            yield from _walk(child)


def test_qk_small_multiples_open_the_clicked_head(ctx):
    qk = page("qk")
    grid, _ = qk.small_multiples("0:minilm", "main", 1, "kind")
    panel = next(t for t in grid.data if t.xaxis == "x4")  # the fourth panel: head 3
    assert grid.layout.yaxis4.scaleanchor == "x4"  # equal scales, as distances are what the layout means
    assert qk.pick_head({"points": [{"customdata": panel.customdata[0]}]}, "0:minilm", "main", 1) == 3


def test_the_attention_matrix_downloads_with_its_provenance(ctx, demo_root):
    import base64
    import io

    from safetensors.numpy import load_file

    drawn = {"run": "0:minilm", "trace": "main", "item": 1, "layer": 2, "head": 3}
    sent = page("attention").download_matrix(1, drawn)
    matrix = np.load(io.BytesIO(base64.b64decode(sent["content"])))
    assert sent["filename"] == "attnlab_0-minilm_minilm_main_item1_layer2_head3.npy"
    stored = load_file(str(demo_root / "minilm" / "traces" / "main.safetensors"))
    real = np.flatnonzero(stored["token_mask"][1])  # the item's real tokens
    np.testing.assert_allclose(matrix, stored["layer.2.pattern"][1, 3][np.ix_(real, real)], atol=1e-6)  # (B,H,Q,K)


def test_interventions_page_shows_what_each_method_chose(ctx, demo_root):
    """The demo eval's plans table: one row per method, VHR's layers by its depth rule, ACT's scanned layers."""
    from attnlab.probes.vhd import vhr_layers

    rows, columns = page("interventions").plans_table("0:toy-llava-eval")
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"baseline", "vhr", "var", "act"}
    plans = Run.open(demo_root / "toy-llava-eval").manifest["extra"]["plans"]
    n_layers = plans["vhr"]["n_layers"]
    assert by_method["vhr"]["layers"] == ", ".join(str(i) for i in vhr_layers(n_layers))
    assert "round(L/32)" in by_method["vhr"]["rule"] and by_method["baseline"]["layers"] == "-"
    assert by_method["act"]["layers"] == ", ".join(str(i) for i in plans["act"]["layers"])
    assert page("interventions").plans_table(None) == ([], [])


@pytest.fixture
def long_run(tmp_path, app):
    """An app context over one hand-built Run of 150 tokens (above the 100-token minimap threshold), with one
    strong weight per row at a known place; yields its id and ``[n, n]`` pattern of layer 0, head 1."""
    import torch
    from flask import Flask

    from attnlab.core.runs import RunInfo, save_run
    from attnlab.core.trace import LayerRecord, Trace, TraceMeta
    from attnlab.dashboard.data import EXTENSION_KEY, DashboardData

    n, heads = 150, 2
    pattern = torch.softmax(torch.randn(1, heads, n, n, generator=torch.Generator().manual_seed(0)), -1)
    meta = TraceMeta("m", "bert", 1, heads, 4, 8, False, captured=("pattern",))
    trace = Trace([[f"w{i}" for i in range(n)]], [[]], {0: LayerRecord(pattern=pattern)}, meta,
                  torch.ones(1, n, dtype=torch.bool))
    save_run(tmp_path / "long", {"main": trace}, RunInfo(model={"name": "m"}))
    server = Flask("long-run")
    server.extensions[EXTENSION_KEY] = DashboardData([tmp_path])
    with server.app_context():
        yield server.extensions[EXTENSION_KEY].runs()[0].run_id, pattern[0, 1].numpy()


def test_minimap_shows_for_long_items_only(ctx, long_run):
    """Hidden for the demo's short MiniLM item; above 100 tokens it draws the matrix the heatmap draws (the sink
    column dropped when hidden), coloured 0 to its max, and reports the shape the click window is clipped to."""
    attention = page("attention")
    with ctx.server.app_context():
        short = {"run": "0:minilm", "trace": "main", "item": 0, "layer": 2, "head": 3, "sink": False}
        assert attention.minimap(short)[1:] == ({"display": "none"}, None)
    run_id, matrix = long_run
    drawn = {"run": run_id, "trace": "main", "item": 0, "layer": 0, "head": 1, "sink": False}
    figure, style, shape = attention.minimap(drawn)
    assert style == {} and shape == [150, 150] and not figure.layout.shapes
    assert np.asarray(figure.data[0].z).shape == (75, 75)  # blocks of 2: at most 96 per axis
    assert figure.data[0].zmax == pytest.approx(matrix.max(), rel=1e-6)
    assert "layer 0 · head 1" in figure.layout.title.subtitle.text
    figure, style, shape = attention.minimap({**drawn, "sink": True})
    assert shape == [150, 149] and figure.data[0].zmax == pytest.approx(matrix[:, 1:].max(), rel=1e-6)
    assert attention.minimap(None)[1] == {"display": "none"}


def test_a_minimap_click_zooms_the_heatmap_by_patch(ctx):
    """A click at (x, y) patches only the heatmap's axis ranges: a 40-token window centred there, moved inside
    [0, n); the minimap's outline moves there, and follows a zoom made on the heatmap itself."""
    import dash

    attention = page("attention")
    heatmap, outline = attention.zoom_to_minimap_click({"points": [{"x": 200.0, "y": 102.0}]}, [400, 399])
    assert isinstance(heatmap, dash.Patch) and isinstance(outline, dash.Patch)
    ops = {tuple(op["location"]): op["params"]["value"] for op in heatmap.to_plotly_json()["operations"]}
    assert ops == {("layout", "xaxis", "range"): [179.5, 219.5], ("layout", "xaxis", "autorange"): False,
                   ("layout", "yaxis", "range"): [121.5, 81.5], ("layout", "yaxis", "autorange"): False}
    (rect,) = outline.to_plotly_json()["operations"][0]["params"]["value"]
    assert (rect["x0"], rect["x1"], rect["y0"], rect["y1"]) == (179.5, 219.5, 81.5, 121.5)
    heatmap, _ = attention.zoom_to_minimap_click({"points": [{"x": 397.0, "y": 2.0}]}, [400, 399])
    ops = {tuple(op["location"]): op["params"]["value"] for op in heatmap.to_plotly_json()["operations"]}
    assert ops[("layout", "xaxis", "range")] == [358.5, 398.5]  # clipped at the last key (399 columns)
    assert ops[("layout", "yaxis", "range")] == [39.5, -0.5]  # and at the first query
    with pytest.raises(dash.exceptions.PreventUpdate):
        attention.zoom_to_minimap_click(None, [400, 400])
    zoom = {"xaxis.range[0]": 10.5, "xaxis.range[1]": 30.5, "yaxis.range[0]": 30.5, "yaxis.range[1]": 10.5}
    (rect,) = attention.minimap_follows_zoom(zoom, [400, 400]).to_plotly_json()["operations"][0]["params"]["value"]
    assert (rect["x0"], rect["x1"], rect["y0"], rect["y1"]) == (10.5, 30.5, 10.5, 30.5)
    reset = attention.minimap_follows_zoom({"xaxis.autorange": True, "yaxis.autorange": True}, [400, 400])
    assert reset.to_plotly_json()["operations"][0]["params"]["value"] == []  # zoomed out: no outline
    with pytest.raises(dash.exceptions.PreventUpdate):
        attention.minimap_follows_zoom({"autosize": True}, [400, 400])  # a resize moves nothing


def test_the_focus_token_comes_from_the_url_when_it_is_a_token_of_the_item(ctx):
    """The Attention page opens focused where the URL says (?focus=N) when N is one of the item's text tokens,
    keeps a valid current focus, and falls back to none (the output token) for a position that is not a token."""
    focus_options = page("attention").focus_options
    options, value = focus_options("0:minilm", "main", 0, None, {"focus": "3"})
    assert value == 3 and 3 in [o["value"] for o in options]
    assert focus_options("0:minilm", "main", 0, 5, {"focus": "3"})[1] == 5  # the current focus wins
    assert focus_options("0:minilm", "main", 0, None, {"focus": "9999"})[1] is None
    assert focus_options("0:eval-compare", "main", 0, None, {"focus": "3"}) == ([], None)


def test_the_image_overlays_query_token_comes_from_the_url(ctx):
    """The LVLM's image overlay opens on the URL's ?query=N when N is one of its text tokens; otherwise on the
    output token (the last text token of the causal model); an item without an image hides the overlay."""
    query_options = page("attention").query_options
    options, default, style = query_options("0:toy-llava", "main", 0, None, {})
    values = [o["value"] for o in options]
    assert style == {} and default == values[-1] and len(values) > 2
    assert query_options("0:toy-llava", "main", 0, None, {"query": str(values[1])})[1] == values[1]
    assert query_options("0:toy-llava", "main", 0, None, {"query": "99999"})[1] == default
    assert query_options("0:minilm", "main", 0, None, {"query": "3"}) == ([], None, {"display": "none"})
