"""Each dashboard view asks the probe registry whether a trace can feed it, and says what to capture when not."""

from __future__ import annotations

import pytest
import torch

from attnlab.core.runs import RunInfo, save_run
from attnlab.core.trace import LayerRecord, Trace, TraceMeta
from attnlab.dashboard.analyses import NotAvailable, massive, qk_heads, relevance, sinks
from attnlab.dashboard.data import DashboardData


def _run(tmp_path, name, **fields):
    """A one-item, two-layer run that captured exactly ``fields`` (tensors of the right shapes)."""
    g = torch.Generator().manual_seed(0)
    n, heads = 5, 2
    stats = fields.pop("stats", False)
    records = {}
    for layer in range(2):
        rec = {}
        if "pattern" in fields:
            rec["pattern"] = torch.softmax(torch.randn(1, heads, n, n, generator=g), -1)
        if "resid" in fields:
            rec["resid"] = torch.randn(1, n, 8, generator=g)
        if "qk" in fields:
            rec["q"], rec["k"] = torch.randn(2, 1, heads, n, 4, generator=g)
        if stats:
            rec["stats"] = {"received": torch.rand(1, heads, n, generator=g) + 1.0}
        records[layer] = LayerRecord(**rec)
    captured = tuple(sorted({*fields, *(("stats",) if stats else ())}))
    meta = TraceMeta("m", "gpt2", 2, heads, 4, 8, False, captured=captured)
    trace = Trace([list("abcde")], [[]], records, meta, torch.ones(1, n, dtype=torch.bool))
    return save_run(tmp_path / name, {"main": trace}, RunInfo(model={"name": "m"}))


def test_views_name_the_capture_that_feeds_them(tmp_path):
    _run(tmp_path, "stats-only", stats=True)
    data = DashboardData([tmp_path])
    run = data.run(data.runs()[0].run_id)
    with pytest.raises(NotAvailable, match=r"needs resid captured; this trace has stats\. .*--for massive.*--capture resid"):
        massive(data, run, "main", 0)
    with pytest.raises(NotAvailable, match=r"needs qk captured.*--for qk-embed"):
        qk_heads(data, run, "main", 0)
    with pytest.raises(NotAvailable, match=r"needs pattern captured.*--for flow"):
        relevance(data, run, "main", 0, "flow", "mean", 0.0, False, None)
    assert sinks(data, run, "main", "act_relative", 0).scores.shape[:3] == (2, 1, 2)  # stats suffice for sinks


def test_the_same_views_run_once_captured(tmp_path):
    """The positive control: the fields the messages ask for make the same calls succeed."""
    _run(tmp_path, "full", pattern=True, resid=True, qk=True)
    data = DashboardData([tmp_path])
    run = data.run(data.runs()[0].run_id)
    assert massive(data, run, "main", 0).top.shape[0] == 2
    assert qk_heads(data, run, "main", 0).coords.shape[:2] == (1, 2)
    assert relevance(data, run, "main", 0, "flow", "mean", 0.0, False, None).relevance.shape == (1, 5)


HIDDEN = {"display": "none"}


def _page(name: str):
    import sys

    return sys.modules[f"attnlab.dashboard.pages.{name}"]


def _note(value) -> str:
    """The text of a callback's note (a ``message-note`` box); fails on anything else, an error box included."""
    assert value is not None and "message-note" in value.className, value
    return value.children


def test_results_only_run_hides_each_page_control_bar_and_names_the_capture(ctx):
    """An eval Run has no traces: every trace page hides its control bar with its views, and its note names the
    ``attnlab capture --capture`` fields that would fill the page."""
    run = "0:eval-compare"
    pages = {"attention": "--capture pattern", "heads": "--capture stats", "flow": "--capture pattern",
             "sinks": "--capture stats", "qk": "--capture qk"}
    for name in pages:
        assert _page(name).availability(run, None) == (HIDDEN, HIDDEN), name
    assert _page("circuits").availability(run) == (HIDDEN, HIDDEN)
    notes = {"attention": _page("attention").heatmap(run, None, 0, None, None, "auto", [])[-1],
             "heads": _page("heads").show_grid(run, None, 0, None)[-1],
             "flow": _page("flow").show(run, None, 0, "rollout", "mean", 0.0, [], None)[-1],
             "sinks": _page("sinks").show_sinks(run, None, 0, "act")[-1],
             "qk": _page("qk").small_multiples(run, None, None, "kind")[-1]}
    for name, option in pages.items():
        assert f"`attnlab capture {option}`" in _note(notes[name]), name
    # the positive control: a Run with traces shows every bar
    for name in pages:
        assert _page(name).availability("0:minilm", "main") == ({}, {}), name


@pytest.fixture
def partial_runs(tmp_path, app):
    """An app context over two Runs whose one trace lacks fields: ``stats`` only, and ``resid`` only."""
    from flask import Flask

    from attnlab.dashboard.data import EXTENSION_KEY

    _run(tmp_path, "stats-only", stats=True)
    _run(tmp_path, "resid-only", resid=True)
    server = Flask("partial-runs")
    server.extensions[EXTENSION_KEY] = DashboardData([tmp_path])
    with server.app_context():
        yield {ref.run_id.split(":", 1)[1]: ref.run_id for ref in server.extensions[EXTENSION_KEY].runs()}


def test_views_a_trace_cannot_feed_give_way_to_one_line(partial_runs):
    """Attention without patterns or q/k, Heads without any statistic and the massive-activation plot without
    layer outputs hide their controls and figures; the note names the capture that adds the field."""
    stats_only, resid_only = partial_runs["stats-only"], partial_runs["resid-only"]
    attention, heads, sinks = _page("attention"), _page("heads"), _page("sinks")
    for run in (stats_only, resid_only):
        assert attention.availability(run, "main") == (HIDDEN, HIDDEN)
        _, layer, _, head = attention.selectors(run, "main", None, None)
        assert "Capture(pattern=True)" in _note(attention.heatmap(run, "main", 0, layer, head, "auto", [])[-1])
    assert heads.availability(resid_only, "main") == (HIDDEN, HIDDEN)
    options, stat, _ = heads.stat_options(resid_only, "main", None)
    assert options == [] and "--capture stats" in _note(heads.show_grid(resid_only, "main", 0, stat)[-1])
    assert heads.availability(stats_only, "main") == ({}, {})  # stats feed the grid
    figure, box, note = sinks.show_massive(stats_only, "main", 0)
    assert box == HIDDEN and "--capture resid" in _note(note)
    assert sinks.availability(stats_only, "main") == ({}, {})  # stats feed the sink view
    figure, box, summary = sinks.show_massive(resid_only, "main", 0)
    assert box == {} and figure.data
    assert sinks.availability(resid_only, "main") == (HIDDEN, {})  # no sink rule to choose; the plot stays
