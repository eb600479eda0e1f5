"""The Triton kernels against the float64 textbook oracle and the eager path, on every case and plan kind.

Why a child process: an out-of-bounds load segfaults Triton's CPU interpreter (it does not bounds-check), which
would kill pytest and hide every other result. ``triton_worker.py`` runs all cases in one child (one
interpreter start-up) and saves each result; the comparisons run here. If the child dies, the case
it was running fails with the exit code and stderr, and a fresh child carries on with the rest.
The child runs without TRITON_INTERPRET, so these tests also prove the module picks the interpreter itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_cases import (CASES, CASES_BY_NAME, Case, assert_matches, check_hand_example, make_inputs,
                          textbook_attention)
from triton_worker import TILE_GEOMETRIES

from attnlab.kernels.api import attention

pytest.importorskip("triton")
pytestmark = pytest.mark.triton

WORKER = Path(__file__).with_name("triton_worker.py")
JOBS = ["meta", *(c.name for c in CASES), "hand", "errors", "tile_bounds", "padding"]


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Runs every job in child processes; returns the output folder and ``{job: crash report}``."""
    out = tmp_path_factory.mktemp("triton")
    env = {n: v for n, v in os.environ.items() if n != "TRITON_INTERPRET"}
    pending, crashes = list(JOBS), {}
    while pending:  # each round finishes or blames at least one job, so this ends
        proc = subprocess.run([sys.executable, str(WORKER), str(out), *pending], cwd=WORKER.parent, env=env,
                              capture_output=True, text=True, timeout=900)
        left = [n for n in pending if not any(out.glob(f"{n}.*"))]
        if proc.returncode == 0 or not left:
            break
        crashes[left[0]] = f"worker exited with {proc.returncode} while running {left[0]!r}:\n{proc.stderr[-3000:]}"
        pending = left[1:]
    return out, crashes


def _load(results: tuple[Path, dict[str, str]], name: str) -> dict:
    out, crashes = results
    if name in crashes:
        pytest.fail(crashes[name])
    if (out / f"{name}.err").exists():
        pytest.fail(f"Triton raised in case {name!r}:\n{(out / f'{name}.err').read_text()}")
    return torch.load(out / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_matches_textbook_and_eager(triton_results, case: Case):
    got = _load(triton_results, case.name)
    q, k, v, kw = make_inputs(case)
    assert got["out"].dtype == q.dtype
    assert_matches(got["out"], got["stats"], *textbook_attention(q, k, v, **kw), case.dtype, f"{case.name} vs textbook")
    eager_out, eager = attention(q, k, v, impl="eager", **kw)
    assert_matches(got["out"], got["stats"], eager_out, eager.as_dict(), case.dtype, f"{case.name} vs eager")


@pytest.mark.parametrize("name", ["identity", "factor_one"])
def test_triton_identity_plans_reproduce_baseline_exactly(triton_results, name: str):
    base, got = _load(triton_results, "baseline"), _load(triton_results, name)
    assert torch.equal(got["out"], base["out"])
    for stat, t in base["stats"].items():
        assert torch.equal(got["stats"][stat], t), stat


def test_triton_reweighting_matches_hand_computation(triton_results):
    got = _load(triton_results, "hand")
    check_hand_example(got["out"], got["stats"])


def test_triton_picks_its_mode_without_the_environment_variable(triton_results):
    meta = json.loads((triton_results[0] / "meta.json").read_text())
    assert meta["env_before"] is None and meta["env_after"] is None  # nothing leaks to child processes
    assert meta["interpret"] == (not meta["cuda"])


def test_triton_refuses_what_it_cannot_run(triton_results):
    found = json.loads((triton_results[0] / "errors.json").read_text())
    assert "one dtype among" in found["mixed_dtypes"] and "impl='torch'" in found["mixed_dtypes"]
    assert "one dtype among" in found["float64"]
    assert "power of two >= 16" in found["block"]


@pytest.mark.slow
def test_kernels_compile_for_nvidia_targets():
    """The interpreter runs kernels as Python; compiling for sm_80 catches what only compiled Triton rejects."""
    script = WORKER.with_name("triton_compile_check.py")
    env = {n: v for n, v in os.environ.items() if n != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def _tiles(lo: int, hi: int, block: int) -> set[int]:
    return set(range(lo, hi, block))


def test_triton_visits_exactly_the_tiles_someone_can_see(triton_results):
    """Each program's loop covers every tile holding a visible (query, key) pair; with contiguous padding,
    no other: causal, window and padded key tiles are never loaded."""
    found = json.loads((triton_results[0] / "tile_bounds.json").read_text())
    for (n_q, n_k, causal, window, spans, bm, bn), got in zip(TILE_GEOMETRIES, found):
        pos = torch.arange(n_q)[:, None] + n_k - n_q  # (Q, 1) query positions
        j = torch.arange(n_k)[None, :]
        ok = (j <= pos if causal else torch.ones(n_q, n_k, dtype=torch.bool)) & (j > pos - (window or n_q + n_k))
        for b, (keys, queries) in enumerate(zip(got["keys"], got["queries"])):
            lo_k, hi_k = spans[b] if spans else (0, n_k)
            seen = ok & (j >= lo_k) & (j < hi_k)  # (Q, K) pairs this batch row computes
            for start_m in range(0, n_q, bm):
                need = {c // bn * bn for c in seen[start_m:start_m + bm].any(0).nonzero().flatten().tolist()}
                assert _tiles(*keys[start_m // bm], bn) == need, (n_q, n_k, causal, window, b, start_m)
            for start_n in range(0, n_k, bn):
                need = {r // bm * bm for r in seen[:, start_n:start_n + bn].any(1).nonzero().flatten().tolist()}
                visited = _tiles(*queries[start_n // bn], bm)
                assert need <= visited, (n_q, n_k, causal, window, b, start_n)
                if not need or spans is None:  # all-padding key tiles are skipped; without padding, exactly
                    assert visited == need, (n_q, n_k, causal, window, b, start_n)


def test_triton_never_reads_padded_key_tiles(triton_results):
    got = _load(triton_results, "padding")
    q, k, v, kw = make_inputs(CASES_BY_NAME["left_pad_multi_tile"])
    assert_matches(got["out"], got["stats"], *textbook_attention(q, k, v, **kw), "float32", "NaN padding")
