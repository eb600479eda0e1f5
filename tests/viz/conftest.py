"""Small probe results for the figure tests, from hand-built Traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta

GRID = (4, 4)
N = 2 + GRID[0] * GRID[1]


def _trace(patterns, resid, head_out, segments, tokens, causal=False) -> Trace:
    f = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    layers = {i: LayerRecord(pattern=f(p), resid=f(r), head_out=f(h)) for i, (p, r, h) in enumerate(zip(patterns, resid, head_out))}
    n = len(tokens)
    meta = TraceMeta(model="hand-built", family="vit", n_layers=len(layers), n_heads=2, d_head=4, d_model=resid[0].shape[-1],
                     causal=causal, captured=("pattern", "head_out", "resid"))
    return Trace(tokens=[tokens], segments=[segments], layers=layers, meta=meta, token_mask=torch.ones(1, n, dtype=torch.bool),
                 embeddings=f(resid[0]))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def vit_trace() -> Trace:
    rng = np.random.default_rng(0)
    segs = [Segment("special", 0, 1, label="[CLS]"), Segment("image", 1, N - 1, grid=GRID), Segment("register", N - 1, N)]
    resid = [rng.normal(size=(1, N, 8)) for _ in range(3)]
    resid[2][0, 3] *= 20  # one high-norm patch at the output
    resid[2][0, 7, 2] = 5000.0
    patterns = [_softmax(3 * rng.normal(size=(1, 2, N, N))) for _ in range(3)]
    head_out = [rng.normal(size=(1, 2, N, 4)) for _ in range(3)]
    return _trace(patterns, resid, head_out, segs, ["[CLS]"] + ["p"] * (N - 2) + ["[REG]"])


@pytest.fixture
def text_trace() -> Trace:
    rng = np.random.default_rng(1)
    segs = [Segment("special", 0, 1), Segment("text", 1, 3)]
    return _trace([_softmax(rng.normal(size=(1, 2, 3, 3)))] * 3, [rng.normal(size=(1, 3, 8))] * 3,
                  [rng.normal(size=(1, 2, 3, 4)) for _ in range(3)], segs, ["[CLS]", "a", "p"])
