"""Real multi-process jobs (torchrun, gloo, 2 ranks on CPU): same results as one process, and resume after a kill.

Each ``--workers 2`` command starts ``python -m torch.distributed.run`` with two fresh Python processes, so these
tests cost a few seconds of start-up each; they use the trained toy-llava on a 3-scene toy world.
"""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.runs import Run
from attnlab.core.shards import FAULT_ENV, read_rows, shard_dirs
from attnlab.zoo.world_files import write_world

pytestmark = pytest.mark.full  # whole-program tier: scripts/test.sh and CI run it (pytest --full)

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w") / "world", 3, seed=5)


def progress_rows(run, unit):
    return [row for d in shard_dirs(run) for row in read_rows(d / "progress" / f"{unit}.jsonl")]


def test_pope_killed_rank_resumes_to_the_one_process_result(world, tmp_path, monkeypatch):
    args = ["eval", "pope", "--model", "toy-llava", "--questions", str(world / "pope_random.jsonl"),
            "--images", str(world / "images"), "--limit", "8", "--max-new-tokens", "3"]
    unit = "pope-pope_random-baseline"
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "one")]).exit_code == 0
    # Rank 1 SIGKILLs itself after its 2nd answer; torchrun stops rank 0; the job fails.
    monkeypatch.setenv(FAULT_ENV, "1:2")
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert res.exit_code == 1 and "rerun the same command to resume" in res.stderr, res.output
    first = progress_rows(tmp_path / "two", unit)
    assert sum(r["question_id"] % 2 for r in first) == 2 * 1 + 0 and len(first) < 8  # rank 1 kept its 2 answers
    assert not (tmp_path / "two" / "manifest.json").exists()
    monkeypatch.delenv(FAULT_ENV)
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    every = progress_rows(tmp_path / "two", unit)
    assert sorted(r["question_id"] for r in every) == list(range(8))  # nothing lost, nothing answered twice
    assert len(every) - len(first) == 8 - len(first) > 0
    one, two = Run.open(tmp_path / "one"), Run.open(tmp_path / "two")
    timing = ["seconds", "batch"]  # how long, and in how large a batch, each answer took: the answers are equal
    pd.testing.assert_frame_equal(one.result(f"predictions-{unit}").drop(columns=timing),
                                  two.result(f"predictions-{unit}").drop(columns=timing))
    assert set(two.result(f"predictions-{unit}")["batch"]) != set(one.result(f"predictions-{unit}")["batch"])
    metrics = ["accuracy", "precision", "recall", "f1", "yes_ratio", "n"]
    pd.testing.assert_frame_equal(one.result("summary")[metrics], two.result("summary")[metrics])


def test_capture_two_workers_equal_one_process(world, tmp_path):
    questions = [json.loads(line) for line in (world / "pope_adversarial.jsonl").read_text().splitlines()][:7]
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"text": q["text"], "image": q["image"]}) + "\n" for q in questions))
    args = ["capture", "--model", "toy-llava", "--dataset", str(dataset), "--image-dir", str(world / "images"),
            "--capture", "stats,qk", "--batch-size", "2", "--sample", "64"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "one")]).exit_code == 0
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    one, two = Run.open(tmp_path / "one"), Run.open(tmp_path / "two")
    assert two.manifest["shards"]["world_size"] == 2
    assert [r["batches_done_now"] for r in two.manifest["shards"]["this_run"]] == [2, 2]
    for table in ("items", "item_stats", "layer_stats", "received_histogram"):
        pd.testing.assert_frame_equal(one.result(table), two.result(table), check_exact=False, rtol=1e-6, atol=1e-7)
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "one" / "reductions" / "qk_sample.safetensors"))
    b = load_file(str(tmp_path / "two" / "reductions" / "qk_sample.safetensors"))
    assert a.keys() == b.keys() and len(a["main.ids"]) == 64
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


def _job_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions ``marker`` (the job's unique --out)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            continue
        if marker in cmdline and not zombie:
            pids.append(int(entry))
    return pids


SLOW_UNIT = "pope-pope_random-baseline"


def _slowed_job_answering(world, out, **popen):
    """Start ``eval pope --workers 2`` as its own process, each item slowed to 2 s, and return once both workers are
    answering: ``(process, the eval's CLI arguments without --workers)``."""
    import os
    import subprocess
    import sys
    import time

    from attnlab.core.shards import DELAY_ENV

    cli = ["eval", "pope", "--model", "toy-llava", "--questions", str(world / "pope_random.jsonl"), "--images",
           str(world / "images"), "--limit", "8", "--max-new-tokens", "2", "--out", str(out)]
    job = subprocess.Popen([sys.executable, "-m", "attnlab.cli.main", *cli, "--workers", "2"],
                           env={**os.environ, DELAY_ENV: "2"}, **popen)
    deadline = time.time() + 180
    while not progress_rows(out, SLOW_UNIT):
        assert job.poll() is None and time.time() < deadline, "the job ended or never started answering"
        time.sleep(0.2)
    return job, cli


def _resumes_to_every_item(cli, out):
    res = runner.invoke(app, [*cli, "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(r["question_id"] for r in progress_rows(out, SLOW_UNIT)) == list(range(8))


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_kill_9_of_attnlab_stops_torchrun_and_every_worker_and_the_job_resumes(world, tmp_path):
    """``kill -9`` of the attnlab process, a real signal, mid-job: no orphan keeps running, and a rerun resumes."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "killed-job"
    job, cli = _slowed_job_answering(world, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert len(_job_processes(str(out))) >= 4  # attnlab, torchrun, two workers
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    deadline = time.time() + 30
    while _job_processes(str(out)) and time.time() < deadline:
        time.sleep(0.2)
    assert _job_processes(str(out)) == [], "processes of the killed job still run"
    done = progress_rows(out, SLOW_UNIT)
    assert 0 < len(done) < 8 and not (out / "manifest.json").exists()  # stopped mid-way, what finished is kept
    _resumes_to_every_item(cli, out)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stopped_job_says_one_line_and_resumes(world, tmp_path, sig):
    """Ctrl-C (or a TERM) mid-job: exit 1, one line saying what was kept, no traceback from torchrun or the workers."""
    import signal
    import subprocess

    out = tmp_path / f"stopped-{sig}"
    job, cli = _slowed_job_answering(world, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job.send_signal(getattr(signal, sig))
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1
    assert "Traceback" not in err and "SignalException" not in err, err
    assert f"error: stopped by {sig}; finished items are kept" in err.strip().splitlines()[-1]
    assert _job_processes(str(out)) == []
    _resumes_to_every_item(cli, out)
