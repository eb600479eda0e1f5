"""Long inputs through the CLI: ``capture --text-file`` on a RoPE model, statistics only.

The statistics of a sample of query rows are recomputed in float64 from the captured queries and keys (the
textbook softmax under the causal mask), and what the Run keeps is checked against the estimate printed before
the pass. Over 8k tokens here (a few seconds), so each row's keys go through the kernels' key tiles, merged; the
same command at 32k tokens is measured in docs/performance.md.
"""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.runs import Run
from attnlab.zoo.tiny import TINY_WORDS

N_WORDS = 8400


def _long_llama(tiny_dir, tmp_path):
    """The tiny LLaMA with a position limit that admits the long input (RoPE has no learned position table)."""
    path = tmp_path / "llama-long"
    shutil.copytree(tiny_dir("llama"), path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 16384
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def long_run(tiny_dir, tmp_path_factory):
    """``(Run directory, the estimate line printed before the pass)`` of a stats,qk capture of a long text file."""
    tmp_path = tmp_path_factory.mktemp("long")
    model = _long_llama(tiny_dir, tmp_path)
    rng = random.Random(0)
    prompt = tmp_path / "long.txt"
    prompt.write_text(" ".join(rng.choice(TINY_WORDS[:-4]) for _ in range(N_WORDS)), encoding="utf-8")
    res = CliRunner().invoke(app, ["capture", "--model", str(model), "--text-file", str(prompt),
                                   "--capture", "stats,qk", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    return tmp_path / "run", next(line for line in res.output.splitlines() if line.startswith("capturing 1 x "))


def test_long_text_file_statistics_match_the_textbook(long_run):
    run, estimate = long_run
    assert "never the N x N map" in estimate
    trace = Run.open(run).trace("main")
    n = trace.n_tokens
    assert n > 8192 and f"1 x {n} tokens" in estimate  # more keys than one key tile (kernels.reference.KEY_TILE)
    kept = sum(t.numel() * 4 for rec in trace.layers.values() for t in rec.tensors().values())
    kept_mib = float(estimate.split("about ")[1].split(" MiB")[0])
    assert kept <= kept_mib * 2**20 * 1.05, (kept, estimate)  # the printed estimate covers what was kept

    rows = torch.tensor(sorted(random.Random(1).sample(range(n), 16)))  # sampled query rows
    for layer, rec in trace.layers.items():
        q, k = rec.q[0].double(), rec.k[0].double()  # (H, N, d), (Hkv, N, d)
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
        scores = q[:, rows] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (H, r, N)
        scores = scores.masked_fill(torch.arange(n)[None, None, :] > rows[None, :, None], -math.inf)
        p = scores.softmax(-1)
        want = {"lse": scores.logsumexp(-1), "max": p.amax(-1),
                "entropy": -(torch.where(p > 0, p * p.log(), 0.0)).sum(-1)}
        for name, value in want.items():
            got = rec.stats[name][0][:, rows].double()
            assert torch.allclose(got, value, atol=1e-4, rtol=1e-4), (layer, name, (got - value).abs().max())


def test_text_file_errors_name_the_flag(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    for path, words in ((tmp_path / "missing.txt", "is not a file"), (bad, "is not UTF-8")):
        res = CliRunner().invoke(app, ["capture", "--model", "minilm", "--text-file", str(path),
                                       "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and f"--text-file {path}" in res.output and words in res.output, res.output


def test_dashboard_sinks_and_heads_read_the_long_run_from_statistics(long_run):
    """The Sinks and Heads pages' data for a long stats-only Run: sinks from ``received`` and per-head entropy
    from the stored rows (the Run holds no pattern, so nothing N x N can be read), equal to the probes on the
    Trace itself."""
    from attnlab.dashboard.analyses import sinks
    from attnlab.dashboard.data import DashboardData
    from attnlab.dashboard.summaries import head_statistic
    from attnlab.probes.sinks import sink_tokens

    run_dir, _ = long_run
    data = DashboardData([run_dir.parent])
    run = data.run("0:run")
    trace = Run.open(run_dir).trace("main")
    assert all(rec.pattern is None for rec in trace.layers.values())
    # the relative rule (5/N): under a causal mask even near-uniform heads give the first key about ln(N)/N, a
    # sink at 4k tokens, so the comparison has positives to agree on (the random model has no 0.1-sized sinks)
    shown = sinks(data, run, "main", "relative", 0)
    direct = sink_tokens(trace, rule="relative")
    assert shown.source == "received" and (shown.is_sink == direct.is_sink).all()
    assert shown.is_sink[:, 0, :, 0].all() and not shown.is_sink.all()
    values, layers = head_statistic(data, run, "main", "entropy", 0)  # (L, H)
    for row, layer in zip(values, layers):
        want = trace.layer(layer).stats["entropy"][0].double().mean(-1).numpy()
        assert abs(row - want).max() < 1e-5
