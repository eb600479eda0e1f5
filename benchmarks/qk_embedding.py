"""Joint query-key embedding speed: every method on the same vectors, and each against scikit-learn's t-SNE.

Vectors (``--source``): ``minilm`` (default) captures the embedded MiniLM's queries and keys of one head
(``--layer``/``--head``) on random word sequences of its own vocabulary until ``--n-vectors`` query+key
vectors (d_head 32) are collected; ``synthetic`` draws them from a 32-D Gaussian mixture instead (no model).

Variants (``--methods``), each ``QKEmbedding(...).fit_vectors`` with ``n_jobs=--n-jobs``:
``umap`` (``random_state=0``: reproducible, so umap-learn runs it on one thread), ``umap-fast``
(``random_state=None, n_epochs=100``: umap-learn's parallel path, half its default epochs), ``tsne``
(openTSNE, FFT-accelerated above 10k points, when installed) and ``pca``.

Measured in one run, on vectors gathered once (gathering excluded and reported apart):

1. ``full``: every variant on all ``--n-vectors`` points. umap-learn compiles its numba kernels once per
   process; that warm-up (serial and parallel kernels) is timed apart.
2. ``subset``: the first ``--subset`` points (whole inputs): scikit-learn's Barnes-Hut ``TSNE`` on the same
   joint vectors, then every variant; ``x_sklearn`` = scikit-learn's time / the variant's time.

Each fit also reports ``nearest_key_percentile``: for 2000 sampled queries, the attention rank (1 = most
attended, 0 = least; chance 0.5) of the query's nearest key of the same input in the 2-D embedding, with
attention recomputed from the captured queries and keys. Wall and CPU seconds are both reported, with the
load average, because the cores may be shared with other work.

Usage: ``python benchmarks/qk_embedding.py [--source minilm|synthetic] [--n-vectors 100000] [--subset 4000]``.
The last printed line is one JSON object with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd

from attnlab.probes.qk_embedding import QKEmbedding
from attnlab.probes.qk_vectors import QKVectors, gather_layer


def _minilm_vectors(n_tokens: int, layer: int, head: int, seed: int) -> QKVectors:
    import torch

    from attnlab.core.capture import Capture
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, tok, spec = load("minilm")
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2]
    rng = np.random.default_rng(seed)
    traces, total = [], 0
    torch.set_num_threads(2)
    while total < n_tokens:
        texts = [" ".join(rng.choice(words, 100)) for _ in range(16)]
        trace = capture_trace(model, tok, spec, Capture(qk=True, layers=(layer,)), texts)
        traces.append(trace)
        total += int(trace.token_mask.sum())
    return _take(gather_layer(traces, layer).head(head), n_tokens)


def _synthetic_vectors(n_tokens: int, seed: int, d: int = 32, n_clusters: int = 40) -> QKVectors:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)) * 3
    which = rng.integers(0, n_clusters, n_tokens)
    queries = centres[which] + rng.normal(size=(n_tokens, d))
    keys = centres[(which + 1) % n_clusters] * 0.5 + rng.normal(size=(n_tokens, d)) + 2.0
    length = 128
    tokens = pd.DataFrame({"input": np.arange(n_tokens) // length, "trace": 0, "batch": np.arange(n_tokens) // length,
                           "position": np.arange(n_tokens) % length, "token": "t", "segment": "text",
                           "category": "other", "patch_row": -1, "patch_col": -1})
    return QKVectors(queries.astype(np.float32), keys.astype(np.float32), tokens,
                     tokens["position"].to_numpy(), False, d)


def _take(vectors: QKVectors, n: int) -> QKVectors:
    """The first ``n`` tokens."""
    return QKVectors(vectors.queries[:n], vectors.keys[:n], vectors.tokens.iloc[:n].reset_index(drop=True),
                     vectors.rank[:n], vectors.causal, vectors.d_head)


def _timed(fn) -> tuple[object, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


VARIANTS = {
    "umap": dict(method="umap", random_state=0),
    "umap-fast": dict(method="umap", random_state=None, n_epochs=100),
    "tsne": dict(method="tsne", random_state=0),
    "pca": dict(method="pca"),
}


def nearest_key_percentile(coords: np.ndarray, vectors: QKVectors, n_queries: int = 2000, seed: int = 0) -> float:
    """Mean attention percentile of each sampled query's nearest same-input key in ``coords`` ([q; k] rows)."""
    m = len(vectors.queries)
    groups = vectors.tokens["input"].to_numpy()
    start = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    end = np.r_[start[1:], m]
    owner = np.repeat(np.arange(len(start)), end - start)
    scale = 1.0 / np.sqrt(vectors.d_head)
    out = []
    for i in np.random.default_rng(seed).choice(m, min(n_queries, m), replace=False):
        lo = start[owner[i]]
        hi = lo + vectors.rank[i] + 1 if vectors.causal else end[owner[i]]
        if hi - lo < 2:
            continue
        logits = vectors.keys[lo:hi] @ vectors.queries[i] * scale  # (n,)
        near = int(np.argmin(((coords[m + lo : m + hi] - coords[i]) ** 2).sum(1)))
        out.append(1.0 - np.argsort(np.argsort(-logits))[near] / (hi - lo - 1))
    return round(float(np.mean(out)), 3)


def _fit(variant: str, vectors: QKVectors, n_jobs: int) -> dict:
    est = QKEmbedding(**VARIANTS[variant], n_jobs=n_jobs)
    _, t = _timed(lambda: est.fit_vectors(vectors))
    return {"method": variant, "backend": est.backend_, "points": 2 * len(vectors.queries), **t,
            "nearest_key_percentile": nearest_key_percentile(est.embedding_, vectors)}


def _umap_warmup(vectors: QKVectors, n_jobs: int) -> dict:
    """Compile umap-learn's numba kernels, serial and parallel."""
    def run():
        for variant in ("umap", "umap-fast"):
            _fit(variant, _take(vectors, 1000), n_jobs)

    return _timed(run)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("minilm", "synthetic"), default="minilm")
    parser.add_argument("--n-vectors", type=int, default=100_000, help="queries + keys")
    parser.add_argument("--subset", type=int, default=4000, help="points for the comparison with scikit-learn")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--head", type=int, default=9)
    parser.add_argument("--n-jobs", type=int, default=2, help="threads for openTSNE, parallel UMAP and scikit-learn")
    parser.add_argument("--methods", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    if set(methods) - set(VARIANTS):
        parser.error(f"unknown --methods {sorted(set(methods) - set(VARIANTS))}; choose from {', '.join(VARIANTS)}")
    report: dict = {"source": args.source, "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    n_tokens = args.n_vectors // 2
    vectors, t = _timed(lambda: _minilm_vectors(n_tokens, args.layer, args.head, 0) if args.source == "minilm"
                        else _synthetic_vectors(n_tokens, 0))
    report["gather"] = {"tokens": n_tokens, **t}
    print(json.dumps({"gather": report["gather"]}), flush=True)
    if any(m.startswith("umap") for m in methods):
        report["umap_warmup"] = _umap_warmup(vectors, args.n_jobs)
        print(json.dumps({"umap_warmup": report["umap_warmup"]}), flush=True)
    report["full"] = []
    for method in methods:
        report["full"].append(_fit(method, vectors, args.n_jobs))
        print(json.dumps({"full": report["full"][-1]}), flush=True)
    report["subset"] = _subset(vectors, args.subset // 2, methods, args.n_jobs)
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report))


def _subset(vectors: QKVectors, n_tokens: int, methods: list[str], n_jobs: int) -> dict:
    from sklearn.manifold import TSNE

    small = _take(vectors, n_tokens)
    joint = QKEmbedding(method="pca").fit_vectors(small).joint_.astype(np.float32)
    sk_coords, sk = _timed(lambda: TSNE(init="pca", random_state=0, n_jobs=n_jobs).fit_transform(joint))
    out = {"points": 2 * n_tokens, "sklearn_barnes_hut": sk, "methods": []}
    sk["nearest_key_percentile"] = nearest_key_percentile(sk_coords, small)
    print(json.dumps({"subset_sklearn": sk}), flush=True)
    for method in methods:
        row = _fit(method, small, n_jobs)
        row["x_sklearn_wall"] = round(sk["wall_s"] / max(row["wall_s"], 1e-3), 1)
        row["x_sklearn_cpu"] = round(sk["cpu_s"] / max(row["cpu_s"], 1e-3), 1)
        out["methods"].append(row)
        print(json.dumps({"subset": row}), flush=True)
    return out


if __name__ == "__main__":
    main()
