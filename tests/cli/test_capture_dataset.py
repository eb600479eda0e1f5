"""``attnlab capture --dataset`` in one process: tables consistent with their parts, resume, refusals."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.runs import Run

runner = CliRunner()
PROMPTS = ["the cat sat on the mat", "a dog", "the bird sang a song today", "hello", "the fish swam", "one more"]


@pytest.fixture()
def prompts(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    return f


def capture(model, dataset, out, *extra):
    return runner.invoke(app, ["capture", "--model", str(model), "--dataset", str(dataset), "--capture", "stats,qk",
                               "--batch-size", "2", "--sample", "20", "--out", str(out), *extra])


def test_tables_agree_with_each_other(tiny_dir, prompts, tmp_path):
    res = capture(tiny_dir("gpt2"), prompts, tmp_path / "run")
    assert res.exit_code == 0, res.output
    run = Run.open(tmp_path / "run")
    items, stats = run.result("items"), run.result("item_stats")
    layers, hist = run.result("layer_stats"), run.result("received_histogram")
    assert items["index"].tolist() == list(range(6)) and items["text"].tolist() == PROMPTS
    n_layers, n_heads = run.manifest["model"]["n_layers"], run.manifest["model"]["n_heads"]
    assert len(stats) == 6 * n_layers * n_heads and stats["item"].is_monotonic_increasing
    means = stats.drop(columns=["item", "received_peak_position"]).groupby(["tower", "layer", "head"]).mean()
    pd.testing.assert_frame_equal(layers.set_index(["tower", "layer", "head"]).drop(columns="n_items")[means.columns],
                                  means.astype("float64"), check_exact=False, rtol=1e-6)
    # Every real key of every input falls in exactly one histogram bin of each layer and head.
    counts = hist.groupby(["layer", "head"]).apply(lambda g: g["count"].sum() + g["below"].iloc[0] + g["above"].iloc[0])
    assert (counts == items["n_tokens"].sum()).all()
    from safetensors.numpy import load_file

    sample = load_file(str(tmp_path / "run" / "reductions" / "qk_sample.safetensors"))
    assert len(sample["main.ids"]) == 20 and (np.diff(sample["main.ids"]) > 0).all()
    assert (sample["main.position"] < items["n_tokens"].to_numpy()[sample["main.item"]]).all()
    assert sample["main.q"].shape[:2] == (20, n_layers)
    info = runner.invoke(app, ["info", str(tmp_path / "run")])
    assert info.exit_code == 0 and "where attention goes" in info.stdout


def test_resume_after_a_failed_batch_redoes_nothing(tiny_dir, prompts, tmp_path, monkeypatch):
    import attnlab.jobs.dataset_capture as dc

    real, calls = dc.capture_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and fail:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(dc, "capture_batch", flaky)
    fail = True
    res = capture(tiny_dir("gpt2"), prompts, tmp_path / "run")
    assert res.exit_code == 1
    assert "rank 0 of 1 failed on capture batch=2 (items 4-5, first id 4): RuntimeError: out of memory" in res.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()
    fail, calls[:] = False, []
    res = capture(tiny_dir("gpt2"), prompts, tmp_path / "run")
    assert res.exit_code == 0 and len(calls) == 1 and "1 resumed" not in res.stdout, res.output
    assert capture(tiny_dir("gpt2"), prompts, tmp_path / "whole").exit_code == 0
    for table in ("items", "item_stats", "layer_stats", "received_histogram"):
        pd.testing.assert_frame_equal(Run.open(tmp_path / "run").result(table), Run.open(tmp_path / "whole").result(table))
    # Changed settings on resume are refused; earlier results stay.
    res = capture(tiny_dir("gpt2"), prompts, tmp_path / "run", "--seed", "1")
    assert res.exit_code == 2 and "other settings (seed)" in res.stderr


def test_refusals(tiny_dir, prompts, tmp_path):
    def err(*args):
        res = runner.invoke(app, ["capture", *args, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        return res.stderr

    assert "not pattern" in err("--model", str(tiny_dir("gpt2")), "--dataset", str(prompts), "--capture", "pattern,stats")
    assert "--workers needs --dataset" in err("--model", str(tiny_dir("gpt2")), "--text", "hi", "--workers", "2")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert "give --text PROMPT" in err("--model", str(tiny_dir("llava")), "--dataset", str(tmp_path / "imgs"))
    assert "text-only model" in err("--model", str(tiny_dir("gpt2")), "--dataset", str(tmp_path / "imgs"))
