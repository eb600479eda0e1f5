"""Results saved like captures: a result stored in a Run (parquet) comes back as the same result (from_frame)."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import types
import typing

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.core.runs import Run, RunInfo, save_run
from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta
from attnlab.interventions.patching import PatchingResult
from attnlab.probes.head_scores import HeadScores
from attnlab.probes.results import ProbeResult, decode_value, encode_value, result_from_table
from attnlab.probes.vhd import VHDResult


@pytest.fixture
def run(tmp_path):
    meta = TraceMeta("m", "gpt2", 2, 3, 4, 12, True, captured=("pattern",))
    rec = LayerRecord(pattern=torch.softmax(torch.randn(1, 3, 4, 4), -1))
    trace = Trace([["a", "b", "c", "d"]], [[]], {0: rec}, meta, torch.ones(1, 4, dtype=torch.bool))
    return Run.open(save_run(tmp_path / "r", {"main": trace}, RunInfo(model={"name": "m"})))


def _equal(a, b, where="result"):
    """Recursive equality that counts NaN equal to NaN and checks types (a tuple must not come back a list)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _equal(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def _all_result_types() -> list[type]:
    """Every dataclass ProbeResult in the library (the modules of probes, interventions and evals imported)."""
    import attnlab

    for package in ("probes", "interventions", "evals"):
        module = importlib.import_module(f"attnlab.{package}")
        for info in pkgutil.iter_modules(module.__path__, f"attnlab.{package}."):
            importlib.import_module(info.name)
    assert attnlab

    def below(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    return sorted({c for c in below(ProbeResult) if dataclasses.is_dataclass(c)}, key=lambda c: c.__name__)


def _example(hint, rng):
    """A value of type ``hint`` with the awkward cases in it: NaN and inf, non-str dict keys, nested dataclasses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _example(next(a for a in args if a is not type(None)), rng)
    if hint is np.ndarray:
        values = rng.normal(size=(2, 3, 4))
        values[0, 1, 2], values[1, 0, 0] = np.nan, -np.inf
        return values
    if hint is pd.DataFrame:
        return pd.DataFrame({"kind": ["query", "key"], "position": [3, 0], "x": [0.5, np.nan]})
    if hint is object:  # CircuitReport's loosely typed parts: a result inside a result
        return _example(HeadScores, rng)
    if hint is Segment:  # a Segment checks itself: a real one
        return Segment("image", 1, 5, (2, 2), "image 0")
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _example(hints[f.name], rng) for f in dataclasses.fields(hint)})
    if origin is tuple:
        return tuple(_example(a, rng) for a in (args[:1] * 2 if args[-1] is Ellipsis else args))
    if origin is list:
        return [_example(args[0], rng), _example(args[0], rng)]
    if origin is dict:
        return {_example(args[0], rng): _example(args[1], rng)}
    return {int: 7, float: float("nan"), str: "héllo", bool: True}[hint]


def test_every_result_type_survives_the_stored_encoding(tmp_path):
    """Every result type (found by walking the library, so a new one is covered at once), filled with NaN,
    inf, tuples, int dict keys and nested dataclasses, comes back equal from the encoding ``to_table`` keeps in
    a parquet file's ``attrs`` (random fields need not agree with each other, so the rows are not built here;
    the tests below save real results whole)."""
    rng = np.random.default_rng(0)
    found = _all_result_types()
    assert {"SinkResult", "RolloutResult", "FlowResult", "CircuitGraph", "QKHeadsEmbedding", "CircuitReport",
            "VisualSinkResult", "RegisterResult", "MassiveResult", "ArtifactProperties"} <= {c.__name__ for c in found}
    for cls in found:
        result = _example(cls, rng)
        frame = pd.DataFrame({"row": [0]})
        frame.attrs["stored"] = encode_value(result)
        frame.to_parquet(tmp_path / "t.parquet")
        _equal(result, decode_value(pd.read_parquet(tmp_path / "t.parquet").attrs["stored"]), cls.__name__)


def test_real_results_come_back_whole_from_a_run(run):
    """Results from the probes themselves, rows that leave most of the result out (sinks list only sink tokens),
    come back equal through ``save``, ``Run.result`` and ``from_frame`` / ``result_from_table``."""
    from attnlab.probes.rollout import attention_rollout
    from attnlab.probes.sinks import sink_tokens

    trace = run.trace()
    made = [sink_tokens(trace), attention_rollout(trace, layers=[0])]
    for result in made:
        result.save(run, f"real-{result.table_name}")
    reopened = Run.open(run.path)
    for result in made:
        frame = reopened.result(f"real-{result.table_name}")
        assert len(frame) == len(result.to_frame())
        _equal(result, type(result).from_frame(frame))
        _equal(result, result_from_table(frame))


def test_a_stored_table_cannot_name_code_outside_attnlab(run):
    frame = pd.DataFrame({"row": [0]})
    frame.attrs["attnlab.result"] = {"kind": "x", "type": "os:system", "fields": {}}
    with pytest.raises(ValueError, match="only attnlab's own result types load"):
        result_from_table(frame)
    with pytest.raises(ValueError, match="holds no stored result"):
        result_from_table(pd.DataFrame({"row": [0]}))


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
