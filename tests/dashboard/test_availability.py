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
