"""A dataset capture of an encoder-decoder (tiny T5) keeps its encoder and cross-attention towers, and each item's
statistics in a padded batch equal those of capturing the item alone."""

import numpy as np
import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.capture import Capture
from attnlab.core.runs import Run

PROMPTS = ["the cat sat on the mat", "a dog", "the bird is red and blue", "yes", "is there a circle"]


@pytest.fixture(scope="module")
def t5_run(tiny_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("t5data") / "prompts.txt"
    data.write_text("\n".join(PROMPTS) + "\n")
    out = data.parent / "run"
    res = CliRunner().invoke(app, ["capture", "--model", str(tiny_dir("t5")), "--dataset", str(data), "--capture",
                                   "stats,qk", "--batch-size", "2", "--sample", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return Run.open(out)


@pytest.fixture(scope="module")
def alone(tiny_dir):
    """Per prompt, the towers of its single-item Trace (no padding)."""
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, tok, spec = load(str(tiny_dir("t5")))
    traces = [capture_trace(model, tok, spec, Capture(stats=True), [text]) for text in PROMPTS]
    return [{"main": tr, "encoder": tr.encoder, "cross": tr.cross} for tr in traces]


def test_every_tower_matches_a_single_item_capture(t5_run, alone):
    stats = t5_run.result("item_stats")
    assert set(stats["tower"]) == {"main", "encoder", "cross"}
    items = t5_run.result("items")
    for i, towers in enumerate(alone):
        assert towers["cross"].is_cross and towers["cross"].key_mask.shape[1] == towers["encoder"].n_tokens
        for name, tr in towers.items():
            rows = stats[(stats["item"] == i) & (stats["tower"] == name)].set_index(["layer", "head"])
            n_keys = tr.key_side().n_tokens  # no padding: every key is real
            for layer, rec in tr.layers.items():
                s = {k: v[0].double().numpy() for k, v in rec.stats.items()}  # (H, Q) or (H, K)
                assert s["received"].shape[-1] == n_keys and s["entropy"].shape[-1] == tr.n_tokens
                share = s["received"] / tr.n_tokens  # (H, K): attention per real query
                for h in range(tr.meta.n_heads):
                    row = rows.loc[(layer, h)]
                    for stat in ("lse", "entropy", "max", "mass.first", "mass.special", "mass.text", "mass.image"):
                        want = s[stat][h].mean() if stat in s else 0.0
                        assert row[stat] == pytest.approx(want, abs=1e-5), (i, name, layer, h, stat)
                    assert row["received_peak"] == pytest.approx(share[h].max(), abs=1e-5)
                    assert row["received_peak_position"] == share[h].argmax()
        # the cross tower's keys are the encoder's tokens, its queries the decoder's
        assert towers["cross"].key_side().n_tokens == towers["encoder"].n_tokens == items["n_tokens"][i]


def test_cross_histogram_counts_the_encoder_keys(t5_run, alone):
    hist = t5_run.result("received_histogram")
    totals = hist.groupby(["tower", "layer", "head"]).apply(
        lambda g: g["count"].sum() + g["below"].iloc[0] + g["above"].iloc[0])
    n_encoder = sum(towers["encoder"].n_tokens for towers in alone)
    assert (totals.loc["cross"] == n_encoder).all() and (totals.loc["encoder"] == n_encoder).all()
    layers = t5_run.result("layer_stats")
    assert sorted(layers.groupby("tower").size().items()) == [("cross", 8), ("encoder", 8), ("main", 8)]
    from safetensors.numpy import load_file

    sample = load_file(str(t5_run.path / "reductions" / "qk_sample.safetensors"))
    assert {k.split(".")[0] for k in sample} == {"main", "encoder"}  # cross-attention has no per-token q/k pair


def test_info_summarises_every_tower_by_layer(t5_run):
    from attnlab.cli.dataset_cmd import dataset_budget

    rows = dataset_budget(t5_run)
    table = t5_run.result("layer_stats")
    assert sorted((r["tower"], r["layer"]) for r in rows) == sorted((t, i) for t in ("main", "encoder", "cross")
                                                                     for i in (0, 1))
    for row in rows:  # each is the mean over heads of the stored per-head means
        heads = table[(table["tower"] == row["tower"]) & (table["layer"] == row["layer"])]
        assert row["entropy"] == pytest.approx(heads["entropy"].mean(), abs=1e-9)
    result = CliRunner().invoke(app, ["info", str(t5_run.path)])
    assert result.exit_code == 0 and "cross" in result.output and "encoder" in result.output


def test_a_speech_model_dataset_is_refused_before_any_work(tiny_dir, tmp_path):
    data = tmp_path / "prompts.txt"
    data.write_text("a cat\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["capture", "--model", str(tiny_dir("whisper")), "--dataset", str(data), "--out",
                                   str(out)])
    assert res.exit_code == 2 and "speech model" in res.output and "--audio" in res.output and not out.exists()
    # refused before anything is replaced: --overwrite over an earlier capture leaves it whole
    ok = CliRunner().invoke(app, ["capture", "--model", str(tiny_dir("t5")), "--dataset", str(data), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    res = CliRunner().invoke(app, ["capture", "--model", str(tiny_dir("whisper")), "--dataset", str(data), "--out",
                                   str(out), "--overwrite"])
    assert res.exit_code == 2 and "speech model" in res.output
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == before
    assert len(Run.open(out).result("item_stats")) > 0
