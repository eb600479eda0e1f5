"""Results saved like captures: a result stored in a Run (parquet) comes back as the same result (from_frame)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.core.runs import Run, RunInfo, save_run
from attnlab.core.trace import LayerRecord, Trace, TraceMeta
from attnlab.interventions.patching import PatchingResult
from attnlab.probes.head_scores import HeadScores
from attnlab.probes.vhd import VHDResult


@pytest.fixture
def run(tmp_path):
    meta = TraceMeta("m", "gpt2", 2, 3, 4, 12, True, captured=("pattern",))
    rec = LayerRecord(pattern=torch.softmax(torch.randn(1, 3, 4, 4), -1))
    trace = Trace([["a", "b", "c", "d"]], [[]], {0: rec}, meta, torch.ones(1, 4, dtype=torch.bool))
    return Run.open(save_run(tmp_path / "r", {"main": trace}, RunInfo(model={"name": "m"})))


def _equal(a, b):
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, name


def test_patching_vhd_and_head_scores_come_back_from_their_tables(run):
    rng = np.random.default_rng(0)
    effect = rng.normal(size=(2, 3))
    effect[1, 2] = np.nan  # a head that was not patched
    results = [
        PatchingResult(effect, effect * 2, 1.5, -0.25, "path", "noise", ((1, 0), (1, 2)), "qk"),
        VHDResult(rng.random((2, 2, 3)), rng.random((2, 2, 3)), (3, 5), (7, 9), (6, 8), ["cat", " dog"], 2),
        HeadScores(rng.random((2, 3)), "induction", 42),
    ]
    for result in results:
        result.save(run, f"mine-{result.table_name}")
    reopened = Run.open(run.path)
    for result in results:
        (name,) = reopened.results_of(result.table_name)
        back = type(result).from_frame(reopened.result(name))
        _equal(result, back)
    assert type(results[2]).from_frame(reopened.result("mine-head-scores")).probe == "induction"


def test_a_table_of_another_kind_is_refused_by_name(run):
    PatchingResult(np.zeros((2, 3)), np.zeros((2, 3)), 1.0, 0.0, "activation", "denoise").save(run, "p")
    with pytest.raises(ValueError, match="not a stored vhd result \\(it is patching\\)"):
        VHDResult.from_frame(Run.open(run.path).result("p"))
    with pytest.raises(ValueError, match="without a stored result"):
        PatchingResult.from_frame(pd.DataFrame({"layer": [0], "head": [0], "effect": [1.0], "metric": [1.0]}))
