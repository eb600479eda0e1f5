"""The data layer: Run discovery, containment checks, lazy reads and the caches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from attnlab.core.runs import Run
from attnlab.dashboard.data import ByteLRU, DashboardData, RunAccessError, RunCatalog


def test_discovery_lists_every_run_and_reads_only_manifests(demo_root):
    refs = RunCatalog([demo_root]).discover()
    names = {r.run_id for r in refs}
    assert {"0:minilm", "0:minilm-sink-reweight", "0:toy-vit", "0:toy-vit-reg", "0:toy-llava",
            "0:toy-llava-first-to-image", "0:toy-gpt", "0:eval-compare"} <= names
    assert "0:images" not in names  # a folder without a manifest is not a Run


def test_a_root_that_is_itself_a_run(demo_root):
    refs = RunCatalog([demo_root / "minilm"]).discover()
    assert [r.run_id for r in refs] == ["0:."]


@pytest.mark.parametrize("bad", ["0:../", "0:minilm/../../..", "0:/etc", "/etc/passwd", "7:minilm", "x:minilm",
                                 "0:images", "0:minilm\\..\\..", None, 3, "0:does-not-exist", "0:minilm\x00"])
def test_resolve_rejects_traversal_and_non_runs(demo_root, bad):
    with pytest.raises(RunAccessError):
        RunCatalog([demo_root]).resolve(bad)


def test_symlink_out_of_the_root_is_rejected(demo_root, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(demo_root / "minilm", outside)
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    catalog = RunCatalog([root])
    assert catalog.discover() == []
    with pytest.raises(RunAccessError, match="outside"):
        catalog.resolve("0:escape")


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        RunCatalog([tmp_path / "nope"])


def test_tensor_reads_are_per_key_and_match_the_run_loader(demo_root):
    data = DashboardData([demo_root])
    run = data.run("0:minilm")
    pattern = data.layer_field(run, "main", 2, "pattern")
    oracle = Run.open(demo_root / "minilm").trace("main", layers=[2]).layer(2).pattern
    torch.testing.assert_close(pattern, oracle)
    loaded = {key[2] for key in data.tensors._items}
    assert loaded == {"layer.2.pattern"}  # nothing else was read


def test_partial_trace_holds_only_the_asked_fields(demo_root):
    data = DashboardData([demo_root])
    run = data.run("0:minilm")
    trace = data.partial_trace(run, "main", [0, 3], ("stats.entropy", "q"))
    assert sorted(trace.layers) == [0, 3]
    rec = trace.layer(3)
    assert rec.pattern is None and rec.k is None and rec.q is not None and set(rec.stats) == {"entropy"}


def test_partial_trace_items_slice_like_the_full_trace(demo_root):
    data = DashboardData([demo_root])
    trace = data.partial_trace(data.run("0:minilm"), "main", [1], ("pattern",))
    one = trace.item(2, keep_padding=True)
    assert one.batch_size == 1 and one.tokens[0] == trace.tokens[2]
    torch.testing.assert_close(one.layer(1).pattern[0], trace.layer(1).pattern[2])
    with pytest.raises(ValueError, match="holds"):
        trace.item(9)


def test_cache_sees_a_rewritten_run(demo_root, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(demo_root / "minilm", root / "m")
    data = DashboardData([root])
    first = data.run("0:m")
    manifest = json.loads((root / "m" / "manifest.json").read_text())
    manifest["timings"] = {"load": 123.0}
    (root / "m" / "manifest.json").write_text(json.dumps(manifest))
    import os

    os.utime(root / "m" / "manifest.json", ns=(1, first.path.stat().st_mtime_ns + 10**9))
    assert data.run("0:m").info.timings == {"load": 123.0}


def test_lru_evicts_least_recent_by_bytes():
    lru = ByteLRU(100, size_of=lambda v: v)
    for key, size in (("a", 40), ("b", 40)):
        lru.get_or_compute(key, lambda s=size: s)
    lru.get_or_compute("a", lambda: 0)  # touch a
    lru.get_or_compute("c", lambda: 40)  # 120 > 100: b goes
    assert set(lru._items) == {"a", "c"}
    assert lru.hits == 1 and lru.misses == 3


def test_images_are_served_only_from_inside_the_roots(demo_root, tmp_path):
    data = DashboardData([demo_root])
    run = data.run("0:toy-vit")
    assert data.image_uri(run, 0).startswith("data:image/png;base64,")
    assert data.image_uri(run, 99) is None
    # the same Run served alone: its images live beside it, outside the only root
    alone = DashboardData([demo_root / "toy-vit"])
    assert alone.image_uri(alone.run("0:."), 0) is None


def test_corrupt_tensor_file_is_a_format_error(demo_root, tmp_path):
    from attnlab.core.runs import RunFormatError

    shutil.copytree(demo_root / "minilm", tmp_path / "m")
    (tmp_path / "m" / "traces" / "main.safetensors").write_bytes(b"not a tensor file")
    data = DashboardData([tmp_path])
    with pytest.raises(RunFormatError, match="corrupt"):
        data.layer_field(data.run("0:m"), "main", 0, "pattern")


def test_head_entropy_matches_the_pattern(demo_root):
    from attnlab.dashboard.summaries import head_statistic

    data = DashboardData([demo_root])
    values, layers = head_statistic(data, data.run("0:minilm"), "main", "entropy", 1)
    trace = Run.open(demo_root / "minilm").trace("main")
    real = trace.token_mask[1].numpy()
    for li in (0, 5):
        p = trace.layer(li).pattern[1].double().numpy()[:, real][:, :, real]  # (H, n, n)
        oracle = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1).mean(-1)
        np.testing.assert_allclose(values[layers.index(li)], oracle, rtol=1e-3, atol=1e-4)


def test_parts_read_one_item_and_head(demo_root):
    data = DashboardData([demo_root])
    run = data.run("0:minilm")
    part = data.layer_part(run, "main", 4, "pattern", 2, 7)
    oracle = Run.open(demo_root / "minilm").trace("main", layers=[4]).layer(4).pattern[2, 7]
    torch.testing.assert_close(part, oracle)
    assert [key[2:] for key in data.tensors._items] == [("layer.4.pattern", 2, 7)]  # the layer was not read whole
    one = data.partial_trace(run, "main", [4], ("pattern",), item=2)
    assert one.batch_size == 1 and one.tokens == [Run.open(demo_root / "minilm").manifest["traces"]["main"]["tokens"][2]]
    torch.testing.assert_close(one.layer(4).pattern[0, 7], oracle)
