"""End-to-end POPE/CHAIR evals on a tiny LLaVA and a tiny toy world; resume; bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.zoo.world_files import write_world

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w") / "world", 3, seed=5)


def invoke(args):
    return runner.invoke(app, args)


def test_pope_and_chair_end_to_end(world, tiny_dir, tmp_path):
    out = tmp_path / "eval"
    res = invoke(["eval", "compare", "--model", str(tiny_dir("llava")), "--questions", str(world / "pope_random.jsonl"),
                  "--annotations", str(world / "instances.json"), "--images", str(world / "images"),
                  "--method", "baseline,mask:1.0-3", "--limit", "4", "--max-new-tokens", "2", "--caption-tokens", "4",
                  "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)["table"]
    pope = [r for r in table if r["task"] == "pope"]
    assert {r["method"] for r in pope} == {"baseline", "mask:1.0-3"} and all(r["n"] == 4 for r in pope)
    assert all(r["time_vs_baseline"] > 0 for r in table)
    from attnlab.core.runs import Run

    run = Run.open(out)
    preds = run.result("predictions-pope-pope_random-baseline")
    assert len(preds) == 4 and set(preds["prediction"]) <= {"yes", "no"}
    from attnlab.evals.pope import pope_metrics

    recomputed = pope_metrics(preds["label"].tolist(), preds["prediction"].tolist())
    assert recomputed.accuracy == next(r for r in pope if r["method"] == "baseline")["accuracy"]
    # Same command again: everything is already done; different settings are refused.
    res = invoke(["eval", "pope", "--model", str(tiny_dir("llava")), "--questions", str(world / "pope_random.jsonl"),
                  "--images", str(world / "images"), "--limit", "5", "--max-new-tokens", "2", "--out", str(out)])
    assert res.exit_code == 2 and "made with other settings (task, methods, annotations, limit, " in res.stderr


def test_identity_plan_gives_baseline_answers(world, tiny_dir):
    from PIL import Image

    from attnlab.evals.answer import generate_answer
    from attnlab.kernels.plan import LayerPlan, Plan
    from attnlab.zoo import load

    model, proc, spec = load(str(tiny_dir("llava")))
    image = Image.open(next((world / "images").glob("*.png"))).convert("RGB")
    identity = Plan({i: LayerPlan(head_scale=(1.0,) * spec.n_heads) for i in range(spec.n_layers)})
    base = generate_answer(model, proc, spec, image, "is there a cat ?", max_new_tokens=6)
    same = generate_answer(model, proc, spec, image, "is there a cat ?", max_new_tokens=6, plan=identity)
    assert base == same


def test_resume_redoes_nothing(world, tiny_dir, tmp_path, monkeypatch):
    """Batches of two: an interrupted eval resumes with the questions it had not recorded, batched again."""
    import attnlab.jobs.answering as answering

    calls = []
    real = answering.generate_answers
    monkeypatch.setattr(answering, "generate_answers", lambda *a, **k: calls.append(len(a[4])) or real(*a, **k))
    args = ["eval", "pope", "--model", str(tiny_dir("llava")), "--questions", str(world / "pope_random.jsonl"),
            "--images", str(world / "images"), "--max-new-tokens", "1", "--batch-size", "2", "--out",
            str(tmp_path / "e"), "--json"]
    first = json.loads(invoke(args).stdout)["table"][0]
    progress = tmp_path / "e" / "progress" / "pope-pope_random-baseline.jsonl"
    lines = progress.read_text().splitlines()
    assert calls == [2] + [min(2, len(lines) - i) for i in range(0, len(lines), 2)]  # warm-up batch, then all
    calls.clear()
    progress.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # interrupted mid-write
    (tmp_path / "e" / "manifest.json").unlink()
    second = json.loads(invoke(args).stdout)["table"][0]
    left = len(lines) - 2
    assert sum(calls) == left + min(2, left) and max(calls) == 2  # the rest, plus an untimed warm-up batch of them
    assert first["accuracy"] == second["accuracy"]
    # out of memory: the fix the error names (a smaller --batch-size) resumes the same unfinished Run
    progress.write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "e" / "manifest.json").unlink()
    monkeypatch.setattr(answering, "generate_answers", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    oom = invoke(args)
    assert oom.exit_code != 0 and "smaller --batch-size" in str(oom.exception or "") + oom.stderr
    assert len(progress.read_text().splitlines()) == 3  # nothing recorded was lost
    monkeypatch.setattr(answering, "generate_answers", real)
    smaller = [a if a != "2" else "1" for a in args]
    third = json.loads(invoke(smaller).stdout)["table"][0]
    assert third["accuracy"] == first["accuracy"]
    rows = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [r["batch"] for r in rows[3:]] == [1] * (len(lines) - 3)  # each row says the batch it was answered in


def test_bad_inputs(world, tiny_dir, tmp_path):
    llava = str(tiny_dir("llava"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 0, "image": "000001.png", "text": "x", "label": "yes"}\n{oops\n')

    def err(args):
        res = invoke(args)
        assert res.exit_code == 2, res.output
        return res.stderr

    common = ["--images", str(world / "images"), "--out", str(tmp_path / "o")]
    assert "line 2" in err(["eval", "pope", "--model", llava, "--questions", str(bad), *common])
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question_id": 0, "image": "nope.png", "text": "x", "label": "yes"}\n')
    assert "missing from" in err(["eval", "pope", "--model", llava, "--questions", str(missing), *common])
    assert "Unknown method 'magic'" in err(["eval", "pope", "--model", llava, "--method", "magic",
                                           "--questions", str(world / "pope_random.jsonl"), *common])
    assert "outside the model" in err(["eval", "pope", "--model", llava, "--method", "mask:9.0",
                                       "--questions", str(world / "pope_random.jsonl"), *common])
    assert "not a vision-language model" in err(["eval", "pope", "--model", str(tiny_dir("gpt2")),
                                                 "--questions", str(world / "pope_random.jsonl"), *common])
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_calibration_file_for_a_user_checkpoint(world, tiny_dir, tmp_path, monkeypatch):
    """ACT on a checkpoint without a card needs --calibration; it searches on those questions, never the test's."""
    import attnlab.evals.answer as answer
    from attnlab.core.runs import Run
    from attnlab.zoo import load

    llava = str(tiny_dir("llava"))
    test = ["--questions", str(world / "pope_random.jsonl"), "--images", str(world / "images"), "--limit", "2",
            "--max-new-tokens", "1", "--method", "act"]
    res = invoke(["eval", "pope", "--model", llava, *test, "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "give --calibration FILE.jsonl" in res.stderr
    # The popular split asks the same questions about present objects as the random split: refused.
    res = invoke(["eval", "pope", "--model", llava, *test, "--calibration", str(world / "pope_popular.jsonl"),
                  "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "shares" in res.stderr and "test split" in res.stderr
    other = write_world(tmp_path / "calib", 2, seed=11)
    asked = []  # prompts of ACT's head search (the test questions go through pope_eval's own import)
    real = answer.generate_answer
    monkeypatch.setattr(answer, "generate_answer",
                        lambda m, p, s, image, prompt, **k: asked.append(prompt) or real(m, p, s, image, prompt, **k))
    res = invoke(["eval", "pope", "--model", llava, *test, "--calibration", str(other / "pope_random.jsonl"),
                  "--calibration-images", str(other / "images"), "--out", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    calib_texts = [json.loads(line)["text"] for line in (other / "pope_random.jsonl").read_text().splitlines()]
    # The plain model and every head trial answered each calibration question, and nothing else.
    spec = load(llava)[2]
    n_trials = 1 + spec.n_heads * len(range(min(2, spec.n_layers - 1), spec.n_layers))
    assert len(asked) == n_trials * len(calib_texts) and all(any(t in p for t in calib_texts) for p in asked)
    assert len(out["plans"]["act"]["head_scores"]) == n_trials - 1 and out["table"][0]["n"] == 2
    assert Run.open(tmp_path / "c").info.inputs["calibration"]["pope"] == {"calibration": str(other / "pope_random.jsonl")}
