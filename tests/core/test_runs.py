"""The Run store: round trip, atomic writes, and clear rejection of corrupt or foreign files."""

import json

import pandas as pd
import pytest
import torch

from attnlab.core.runs import Run, RunFormatError, RunInfo, save_run
from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta


def make_trace(seed=0):
    g = torch.Generator().manual_seed(seed)
    pattern = torch.softmax(torch.randn(1, 2, 5, 5, generator=g), -1)
    rec = LayerRecord(pattern=pattern, stats={"entropy": torch.rand(1, 2, 5, generator=g)},
                      q=torch.randn(1, 2, 5, 4, generator=g), resid=torch.randn(1, 5, 8, generator=g))
    meta = TraceMeta("m", "bert", 1, 2, 4, 8, False, captured=("pattern", "stats", "qk", "resid"))
    segs = [[Segment("special", 0, 1, label="[CLS]"), Segment("image", 1, 5, grid=(2, 2))]]
    return Trace([["[CLS]", "a", "b", "c", "d"]], segs, {0: rec}, meta, torch.ones(1, 5, dtype=torch.bool),
                 embeddings=torch.randn(1, 5, 8, generator=g))


def test_round_trip(tmp_path):
    trace = make_trace()
    vision = make_trace(1)
    trace.vision = vision
    path = save_run(tmp_path / "run", {"main": trace}, RunInfo(model={"name": "m"}),
                    results={"table": pd.DataFrame({"x": [1, 2]})})
    run = Run.open(path)
    back = run.trace("main")
    assert back.tokens == trace.tokens and back.segments == trace.segments
    assert back.meta == trace.meta
    for key, value in trace.layers[0].tensors().items():
        assert torch.equal(back.layers[0].tensors()[key], value), key
    assert torch.equal(back.embeddings, trace.embeddings)
    assert torch.equal(back.vision.layers[0].pattern, vision.layers[0].pattern)
    assert run.result("table")["x"].tolist() == [1, 2]


def test_refuses_to_overwrite_and_leaves_no_temp(tmp_path):
    save_run(tmp_path / "run", {"main": make_trace()}, RunInfo(model={}))
    with pytest.raises(ValueError, match="already exists"):
        save_run(tmp_path / "run", {"main": make_trace()}, RunInfo(model={}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failed_write_leaves_nothing(tmp_path):
    bad = make_trace()
    bad.layers[0].stats["entropy"] = "not a tensor"  # fails inside the write
    with pytest.raises(Exception):
        save_run(tmp_path / "run", {"main": bad}, RunInfo(model={}))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_manifest_rejected(tmp_path):
    path = save_run(tmp_path / "run", {"main": make_trace()}, RunInfo(model={}))
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(RunFormatError, match="corrupt"):
        Run.open(path)


def test_foreign_manifest_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(RunFormatError, match="not an attnlab Run manifest"):
        Run.open(tmp_path)


def test_truncated_tensor_file_rejected(tmp_path):
    path = save_run(tmp_path / "run", {"main": make_trace()}, RunInfo(model={}))
    file = path / "traces" / "main.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    run = Run.open(path)
    with pytest.raises(RunFormatError, match="corrupt or truncated"):
        run.trace("main")


def test_partial_layer_load(tmp_path):
    path = save_run(tmp_path / "run", {"main": make_trace()}, RunInfo(model={}))
    assert Run.open(path).trace("main", layers=[]).layers == {}


def test_results_are_found_by_their_kind_whatever_their_name(tmp_path):
    run = Run.open(save_run(tmp_path / "r", {"main": make_trace()}, RunInfo(model={"name": "toy"}),
                            results={"vhd": pd.DataFrame({"a": [0]})}))
    assert run.results_of("vhd") == ["vhd"]  # a table named by its kind, saved without one (the demo's)
    run.add_result("mine", pd.DataFrame({"a": [1]}), kind="vhd")
    run.add_result("other", pd.DataFrame({"a": [2]}), kind="patching")
    run.add_result("older", pd.DataFrame({"a": [3]}), kind="vhd")
    run.add_result("mine", pd.DataFrame({"a": [4]}), kind="vhd")  # saved again: now the latest
    reopened = Run.open(tmp_path / "r")
    assert reopened.results_of("vhd") == ["vhd", "older", "mine"] and reopened.results_of("patching") == ["other"]
    assert reopened.result(reopened.results_of("vhd")[-1])["a"].tolist() == [4]
    assert reopened.results_of("circuits") == []


def test_lazy_reads_of_layers_fields_and_items_equal_the_full_trace(tmp_path):
    trace = make_trace()
    trace = Trace(trace.tokens * 2, trace.segments * 2, {0: type(trace.layers[0]).from_tensors(
        {k: torch.cat([v, v.flip(-1)]) for k, v in trace.layers[0].tensors().items()})}, trace.meta,
        trace.token_mask.repeat(2, 1), torch.cat([trace.embeddings, trace.embeddings.flip(-1)]))  # a batch of 2
    run = Run.open(save_run(tmp_path / "r", {"main": trace}, RunInfo(model={"name": "toy"})))
    full = run.trace("main")
    fields = sorted(full.layers[0].tensors())
    assert len(fields) > 1
    one = run.trace("main", layers=[0], fields=(fields[0],), item=1)
    assert list(one.layers) == [0] and one.batch_size == 1 and one.tokens == full.tokens[1:2]
    assert set(one.layers[0].tensors()) == {fields[0]}  # nothing else was read
    assert torch.equal(one.layers[0].tensors()[fields[0]], full.layers[0].tensors()[fields[0]][1:2])
    assert torch.equal(one.token_mask, full.token_mask[1:2])
    key = f"layer.0.{fields[0]}"
    assert torch.equal(run.read("main", key, item=1, head=0), full.layers[0].tensors()[fields[0]][1, 0])
    assert run.tensor_shapes("main")[key] == tuple(full.layers[0].tensors()[fields[0]].shape)
    with pytest.raises(ValueError, match="no 'layer.0.nothing'"):
        run.read("main", "layer.0.nothing")
    with pytest.raises(ValueError, match="Item 9"):
        run.trace("main", item=9)
