"""benchmarks/dashboard_latency.py judges the recorded timings against the bars it states."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from dashboard_latency import BARS, judge  # noqa: E402


def test_ratios_and_verdicts_by_hand():
    timings = {"timings.json": {"switch_p95_ms": 390.0, "open_cold_s": 1.5, "open_runs_s": 3.0,
                                "open_attention_s": 0.3, "first_figure_cold_s": 5.9},
               "timings-400.json": {"switch_400_p95_ms": 150.0}}
    rows = {r["name"]: r for r in judge(timings)}
    assert set(rows) == {key for _, key, _, _ in BARS}
    assert rows["switch_p95_ms"]["ratio"] == 1.3 and not rows["switch_p95_ms"]["met"]
    assert rows["switch_400_p95_ms"]["ratio"] == 0.5 and rows["switch_400_p95_ms"]["met"]
    assert rows["open_runs_s"]["ratio"] == 1.0 and not rows["open_runs_s"]["met"]  # the bar is "under"
    assert rows["first_figure_cold_s"]["met"] and rows["open_cold_s"]["ratio"] == 0.5


def test_a_missing_timing_is_reported_missed_not_met():
    rows = {r["name"]: r for r in judge({"timings.json": {"switch_p95_ms": 100.0}})}
    assert rows["switch_p95_ms"]["met"]
    assert rows["switch_400_p95_ms"]["measured"] is None and not rows["switch_400_p95_ms"]["met"]
