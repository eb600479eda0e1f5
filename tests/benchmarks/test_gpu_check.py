"""The GPU check (benchmarks/gpu_check.sh) on a CPU-only machine: its dry run passes, a real run refuses loudly.

Its float64 oracle is checked against hand-computed uniform attention, so the errors the check reports on a
GPU are measured against something known to be right.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from attention_oracle import oracle64  # noqa: E402


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def test_oracle_matches_uniform_causal_attention_by_hand():
    """q = 0: every row is uniform over its visible keys, so each statistic has a closed form."""
    n, h, d = 6, 2, 4
    q = torch.zeros(h, n, d)
    k = torch.randn(h, n, d, generator=torch.Generator().manual_seed(0))
    v = torch.arange(n, dtype=torch.float32)[None, :, None].expand(h, n, d)  # value of key j is j
    ref = oracle64(q, k, v, {"first": torch.arange(n) == 0}, causal=True, block=4)  # 2 blocks: 4 + 2 rows
    seen = torch.arange(1, n + 1, dtype=torch.float64)  # row i sees i + 1 keys
    torch.testing.assert_close(ref["lse"][0], seen.log())
    torch.testing.assert_close(ref["entropy"][1], seen.log())
    torch.testing.assert_close(ref["max"][0], 1 / seen)
    torch.testing.assert_close(ref["mass.first"][0], 1 / seen)
    torch.testing.assert_close(ref["out"][0, :, 0], (seen - 1) / 2)  # mean of 0..i
    # key j is seen by rows j..n-1 with weight 1/(i+1) each
    want = torch.tensor([sum(1 / (i + 1) for i in range(j, n)) for j in range(n)], dtype=torch.float64)
    torch.testing.assert_close(ref["received"][1], want)
    rows = oracle64(q, k, v, {}, causal=True, rows=torch.tensor([1, 5]))
    torch.testing.assert_close(rows["lse"][0], torch.tensor([math.log(2), math.log(6)], dtype=torch.float64))
    assert "received" not in rows  # a column sum needs every row


@pytest.mark.full
def test_dry_run_runs_every_stage_on_the_cpu():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line on stdout, progress on stderr
    report = json.loads(lines[0])
    assert report["ok"] and report["dry_run"] and report["failures"] == []
    assert report["tests"]["ok"] and report["tests"]["returncode"] == 0  # the kernel tests were collected
    for dtype in ("bfloat16", "float16"):
        row = report["kernels"][f"{dtype}/80"]
        assert set(row) == {"triton_stats", "triton", "sdpa_flash", "flex"}
        errors = row["triton_stats"]["errors"]
        assert set(errors) == {"out", "lse", "entropy", "max", "mass", "received_rel"}
        assert all(0 <= e < 1e-3 for name, e in errors.items() if name != "out")
    assert report["long"]["identities"]["finite"] and report["long"]["over_gate"] == []
    cap = report["capture"]
    assert cap["layers_recorded"] == 2 and cap["lse_shape"] == [2, 2, 32]
    assert set(cap["time_x"]) == {"plain", "stats", "stats_on_device", "pattern", "pattern_on_device", "hf_attn"}
    assert set(cap["output_vs_float32"]) == {"plain", "stats", "hf_attn"} and cap["over_gate"] == []
    assert report["tests"]["ok"] and "output_tail" not in report["tests"]
    tiles = report["tiles"]
    assert set(tiles["configs"]) == {"16x16/w4/s2", "32x16/w8/s3"} and tiles["over_gate"] == []
    assert all(row["over_gate"] == [] and row["stats_ms"] > 0 for row in tiles["configs"].values())
    assert tiles["best_stats"] in tiles["configs"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_it_fails_loudly_instead_of_falling_back():
    done = _run(timeout=60)
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["ok"] is False and ("CPU-only build" in report["error"] or "no CUDA device" in report["error"])


def test_bad_arguments_are_refused():
    done = _run("--skip", "everything", timeout=60)
    assert done.returncode == 2 and "invalid choice" in done.stderr
