"""Attention-flow benchmark: attnlab's exact max flow against the paper's networkx code path.

The reference is what ``samiraabnar/attention_flow`` does: build the full ``(L + 1) N``-node graph
with ``networkx.from_numpy_array`` and run ``maximum_flow_value(..., flow_func=edmonds_karp)`` once
per input token. Both run in this process on the same residual-augmented matrices, one after the
other; the run checks that they agree to 1e-6 and reports the speed-up (wall clock; CPU time too,
since a shared machine's load inflates wall time).

Cases (declarative, below): 6 layers x 64 tokens against networkx (target: >= 20x faster), and
12 layers x 197 tokens (ViT-B/16 at 224 px) alone (target: under 60 s). The last printed line is
one JSON object.

Usage::

    python benchmarks/flow.py                        # full run (networkx needs a few minutes)
    python benchmarks/flow.py --reference-targets 8  # time networkx on 8 targets, extrapolate to all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta
from attnlab.probes.flow import attention_flow
from attnlab.probes.residual_attention import augmented_attention


@dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    Attributes:
        name: label in the report.
        n_layers: attention layers.
        n_tokens: sequence length.
        n_heads: heads per layer (fused by the mean before the flow).
        reference: also time the networkx reference.
        min_speedup: required speed-up over networkx (when ``reference``).
        budget_s: required wall time of attnlab's flow (when set).
    """

    name: str
    n_layers: int
    n_tokens: int
    n_heads: int = 12
    reference: bool = False
    min_speedup: float | None = None
    budget_s: float | None = None


CASES = (
    Case("6x64", n_layers=6, n_tokens=64, reference=True, min_speedup=20.0),
    Case("12x197", n_layers=12, n_tokens=197, budget_s=60.0),
)


def synthetic_trace(case: Case, seed: int = 0) -> Trace:
    """A ViT-like Trace: [CLS] + patches, peaked random softmax attention in every head."""
    rng = np.random.default_rng(seed)
    layers = {}
    for i in range(case.n_layers):
        scores = 3.0 * rng.normal(size=(1, case.n_heads, case.n_tokens, case.n_tokens))
        p = np.exp(scores - scores.max(-1, keepdims=True))
        layers[i] = LayerRecord(pattern=torch.as_tensor(p / p.sum(-1, keepdims=True), dtype=torch.float32))
    meta = TraceMeta(model="synthetic", family="vit", n_layers=case.n_layers, n_heads=case.n_heads, d_head=64,
                     d_model=768, causal=False, captured=("pattern",))
    segs = [Segment("special", 0, 1, label="[CLS]"), Segment("text", 1, case.n_tokens)]
    return Trace(tokens=[["[CLS]"] + ["patch"] * (case.n_tokens - 1)], segments=[segs], layers=layers, meta=meta,
                 token_mask=torch.ones(1, case.n_tokens, dtype=torch.bool))


def networkx_reference(mats: np.ndarray, position: int, targets: range) -> np.ndarray:
    """The paper's graph and per-target Edmonds-Karp; unnormalised flows for ``targets``."""
    n_layers, n, _ = mats.shape
    adj = np.zeros(((n_layers + 1) * n,) * 2)
    for i in range(1, n_layers + 1):
        adj[i * n : (i + 1) * n, (i - 1) * n : i * n] = mats[i - 1]
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph(), edge_attr="capacity")
    source = n_layers * n + position
    return np.array([nx.maximum_flow_value(graph, source, j, flow_func=nx.algorithms.flow.edmonds_karp)
                     for j in targets])


def run_case(case: Case, reference_targets: int | None) -> dict:
    """Time attnlab (and networkx) on one case; returns the case's report."""
    trace = synthetic_trace(case)
    start, cpu = time.perf_counter(), time.process_time()
    result = attention_flow(trace)
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    report = {"case": case.name, "layers": case.n_layers, "tokens": case.n_tokens, "attnlab_s": round(ours_s, 3),
              "attnlab_cpu_s": round(ours_cpu, 3), "max_error_bound": float(result.error_bound.max())}
    if case.budget_s is not None:
        report.update(budget_s=case.budget_s, within_budget=ours_s < case.budget_s)
    if case.reference:
        mats = augmented_attention(trace, 0, tuple(range(case.n_layers)))
        n_ref = case.n_tokens if reference_targets is None else min(reference_targets, case.n_tokens)
        start, cpu = time.perf_counter(), time.process_time()
        ref = networkx_reference(mats, 0, range(n_ref))
        ref_s = (time.perf_counter() - start) * case.n_tokens / n_ref
        ref_cpu = (time.process_time() - cpu) * case.n_tokens / n_ref
        diff = float(np.abs(result.flow[0, :n_ref] - ref).max())
        speedup = ref_s / ours_s
        report.update(networkx_s=round(ref_s, 3), networkx_cpu_s=round(ref_cpu, 3), networkx_targets_timed=n_ref,
                      extrapolated=n_ref < case.n_tokens, speedup=round(speedup, 1),
                      cpu_speedup=round(ref_cpu / ours_cpu, 1), max_abs_diff=diff, agree_1e6=diff <= 1e-6,
                      min_speedup=case.min_speedup, fast_enough=speedup >= (case.min_speedup or 0))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-targets", type=int, default=None,
                        help="time networkx on this many targets and extrapolate (default: all targets)")
    args = parser.parse_args()
    reports = []
    for case in CASES:
        report = run_case(case, args.reference_targets)
        reports.append(report)
        line = f"{case.name}: attnlab {report['attnlab_s']:.2f} s (cpu {report['attnlab_cpu_s']:.2f} s)"
        if case.reference:
            line += (f", networkx {report['networkx_s']:.1f} s{' (extrapolated)' if report['extrapolated'] else ''}, "
                     f"speed-up {report['speedup']:.0f}x, max |diff| {report['max_abs_diff']:.1e}")
        print(line, flush=True)
    ok = all(r.get("agree_1e6", True) and r.get("fast_enough", True) and r.get("within_budget", True) for r in reports)
    print(json.dumps({"benchmark": "attention_flow", "python": platform.python_version(),
                      "load_avg": os.getloadavg()[0], "cases": reports, "pass": ok}))


if __name__ == "__main__":
    main()
