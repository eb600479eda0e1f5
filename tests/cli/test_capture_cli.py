"""The capture / info CLI on the embedded MiniLM and tiny checkpoints; bad input exits 2 with one line."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from attnlab.cli.main import app

runner = CliRunner()


def test_capture_then_info_json(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["capture", "--model", "minilm", "--text", "Attention is all you need.",
                              "--capture", "pattern,stats,qk", "--layers", "0,-1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    main = info["traces"]["main"]
    assert (main["n_layers"], main["n_heads"], main["layers_captured"]) == (6, 12, [0, 5])
    assert main["captured"] == ["pattern", "stats", "qk"]
    assert main["tokens"][0][0] == "[CLS]" and main["tokens_per_item"] == [len(main["tokens"][0])]
    assert main["probes"] == ["rollout", "flow", "sinks", "induction", "previous-token", "qk-embed"]


def test_capture_for_probes_records_what_they_read(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["capture", "--model", "minilm", "--text", "A dog runs in the park.", "--for",
                              "sinks,massive", "--out", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)["traces"]["main"]
    assert info["captured"] == ["stats", "resid"]  # the cheapest fields that serve both
    assert {"sinks", "massive", "registers"} <= set(info["probes"]) and "rollout" not in info["probes"]
    res = runner.invoke(app, ["probe", "rollout", str(out)])
    assert res.exit_code == 2 and "--capture pattern" in res.output
    bad = runner.invoke(app, ["capture", "--model", "minilm", "--text", "x", "--for", "sink", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "Unknown probe 'sink'" in bad.output and not (tmp_path / "b").exists()


def test_rollout_of_minilms_pooled_output_through_the_cli(tmp_path):
    from attnlab.core.runs import Run
    from attnlab.probes.rollout import attention_rollout

    out = tmp_path / "run"
    res = runner.invoke(app, ["capture", "--model", "minilm", "--text", "A dog runs in the park.", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["probe", "rollout", str(out), "--position", "pooled", "--json"])
    assert res.exit_code == 0, res.output
    got = np.array(json.loads(res.stdout)["relevance"][0])
    trace = Run.open(out).trace("main")
    assert trace.meta.pooling == "mean"  # read from the checkpoint's 1_Pooling/config.json, kept in the Run
    rows = np.mean([attention_rollout(trace, position=k).relevance[0] for k in range(trace.n_tokens)], axis=0)
    np.testing.assert_allclose(got, rows, atol=1e-9)
    res = runner.invoke(app, ["probe", "flow", str(out), "--position", "2", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["positions"] == [2]


def test_info_prints_table(tmp_path):
    out = tmp_path / "run"
    runner.invoke(app, ["capture", "--model", "minilm", "--text", "Hello there.", "--out", str(out)])
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0 and "mass on first" in res.stdout and "12 heads" in res.stdout


def bad(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
    assert "Unknown model" in bad(["capture", "--model", "nope", "--text", "hi", "--out", str(tmp_path / "a")])
    assert "non-empty --text" in bad(["capture", "--model", "minilm", "--text", " ", "--out", str(tmp_path / "b")])
    assert "text-only model" in bad(["capture", "--model", "minilm", "--text", "hi", "--image", str(img),
                                     "--out", str(tmp_path / "c")])
    assert "over the budget" in bad(["capture", "--model", "minilm", "--text", "hi " * 50, "--budget-gb", "0.000001",
                                     "--out", str(tmp_path / "d")])
    assert "Unknown capture option" in bad(["capture", "--model", "minilm", "--text", "hi", "--capture", "weights",
                                            "--out", str(tmp_path / "e")])
    assert "not a Run directory" in bad(["info", str(tmp_path / "missing")])
    assert not (tmp_path / "d").exists()


def test_vision_capture_of_local_checkpoint(tmp_path, tiny_dir):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "run"
    res = runner.invoke(app, ["capture", "--model", str(tiny_dir("dinov2_with_registers")), "--image", str(img),
                              "--capture", "stats,resid", "--out", str(out)])
    assert res.exit_code == 0, res.output
    info = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert info["traces"]["main"]["segments"][0] == ["special[0:1]", "register[1:5]", "image[5:21] grid 4x4"]


def test_capture_budget_is_the_mean_of_each_inputs_own_budget():
    """A padded batch's printed budget averages what each input gives alone (per input: heads and real queries),
    the same definition as a dataset Run's; a short item is not outweighed by the long one's extra queries."""
    from attnlab.cli.capture_cmd import attention_budget
    from attnlab.core.capture import Capture
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, tok, spec = load("minilm")
    texts = ["The cat sat.", "The committee met on Tuesday to discuss the budget and several other matters."]
    batch = attention_budget(capture_trace(model, tok, spec, Capture(stats=True), texts))
    alone = [attention_budget(capture_trace(model, tok, spec, Capture(stats=True), [t])) for t in texts]
    for layer, row in enumerate(batch):
        for name in ("entropy", "mass on first", "mass on special"):
            want = (alone[0][layer][name] + alone[1][layer][name]) / 2
            assert abs(row[name] - want) < 1e-4, (layer, name, row[name], want)


def test_capture_tokenizes_its_inputs_once(tmp_path, monkeypatch):
    """The size estimate and the forward pass share one tokenization."""
    import attnlab.hooks.inputs as inputs

    calls = []
    real = inputs.prepare_inputs
    monkeypatch.setattr(inputs, "prepare_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = runner.invoke(app, ["capture", "--model", "minilm", "--text", "One pass.", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert len(calls) == 1
