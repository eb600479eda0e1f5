"""Eval timing: one untimed warm-up item per unit, and time ratios from median per-item seconds."""

import pandas as pd
import pytest

from attnlab.jobs.sharded import run_items
from attnlab.jobs.compare import _with_time_ratio


def test_warm_up_runs_the_first_item_once_untimed_and_keeps_one_row(tmp_path):
    calls = []

    def work(i):
        calls.append(i)
        return {"k": i, "seconds": 5.0 if len(calls) == 1 else 1.0}  # the first call is slow (compilation)

    rows = run_items(tmp_path, "unit", {"s": 1}, "k", [0, 1, 2], work, progress_bar=False, warm_up=True)
    assert calls == [0, 0, 1, 2]
    assert [r["k"] for r in rows] == [0, 1, 2] and [r["seconds"] for r in rows] == [1.0, 1.0, 1.0]
    # Resuming with nothing left to do warms nothing up.
    calls.clear()
    run_items(tmp_path, "unit", {"s": 1}, "k", [0, 1, 2], work, progress_bar=False, warm_up=True)
    assert calls == []
    # Without warm_up (the default) each item runs once.
    run_items(tmp_path / "other", "unit", {"s": 1}, "k", [0, 1], work, progress_bar=False)
    assert calls == [0, 1]


def test_time_ratio_is_a_ratio_of_medians():
    frame = pd.DataFrame({"task": ["pope"] * 4, "split": ["a", "a", "b", "b"],
                          "method": ["baseline", "vhr", "baseline", "vhr"],
                          "seconds": [100.0, 30.0, 10.0, 30.0],  # totals: one slow baseline item on split a
                          "item_s_median": [0.5, 1.0, 0.5, 1.0]})
    ratios = _with_time_ratio(frame, ["task", "split"])["time_vs_baseline"].tolist()
    assert ratios == pytest.approx([1.0, 2.0, 1.0, 2.0])
