"""Hand-built Traces for the probe tests (no model runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta


def _t(x) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def make_trace(
    *, patterns=None, resid=None, head_out=None, received=None, embeddings=None, tokens=None, segments=None,
    causal=False, token_mask=None, n_heads=None, n_layers=None, captured=None, family="vit",
) -> Trace:
    """Build a Trace from per-layer numpy arrays (lists indexed by layer; ``None`` entries are skipped)."""
    per_layer = [x for x in (patterns, resid, head_out, received) if x is not None]
    n_layers = n_layers or max(len(x) for x in per_layer)
    layers = {}
    for i in range(n_layers):
        rec = LayerRecord(
            pattern=_t(patterns[i]) if patterns is not None and i < len(patterns) else None,
            resid=_t(resid[i]) if resid is not None and i < len(resid) else None,
            head_out=_t(head_out[i]) if head_out is not None and i < len(head_out) else None,
        )
        if received is not None and i < len(received) and received[i] is not None:
            rec.stats["received"] = _t(received[i])
        if any(v is not None for v in (rec.pattern, rec.resid, rec.head_out)) or rec.stats:
            layers[i] = rec
    first = next(iter(layers.values()))
    if first.pattern is not None:
        bsz, n_tok = first.pattern.shape[0], first.pattern.shape[-1]
    elif first.resid is not None:
        bsz, n_tok = first.resid.shape[:2]
    elif first.head_out is not None:
        bsz, n_tok = first.head_out.shape[0], first.head_out.shape[2]
    else:
        bsz, n_tok = first.stats["received"].shape[0], first.stats["received"].shape[-1]
    if n_heads is None:
        src = next((v for v in (first.pattern, first.head_out, first.stats.get("received")) if v is not None), None)
        n_heads = src.shape[1] if src is not None else 1
    if captured is None:
        captured = tuple(n for n, given in (("pattern", patterns), ("stats", received), ("head_out", head_out),
                                            ("resid", resid)) if given is not None)
    tokens = tokens or [[f"t{n}" for n in range(n_tok)] for _ in range(bsz)]
    segments = segments or [[Segment("text", 0, n_tok)] for _ in range(bsz)]
    mask = torch.ones(bsz, n_tok, dtype=torch.bool) if token_mask is None else torch.as_tensor(np.asarray(token_mask), dtype=torch.bool)
    meta = TraceMeta(
        model="hand-built", family=family, n_layers=n_layers, n_heads=n_heads,
        d_head=first.head_out.shape[-1] if first.head_out is not None else 4,
        d_model=first.resid.shape[-1] if first.resid is not None else 8, causal=causal, captured=tuple(captured),
    )
    return Trace(tokens=[list(t) for t in tokens], segments=[list(s) for s in segments], layers=layers, meta=meta,
                 token_mask=mask, embeddings=_t(embeddings))


def softmax_rows(scores: np.ndarray, causal: bool = False, mask: np.ndarray | None = None) -> np.ndarray:
    """Row softmax of ``[..., Q, K]`` scores with causal / key masking (masked rows become all zero)."""
    n = scores.shape[-1]
    allowed = np.ones(scores.shape, dtype=bool)
    if causal:
        allowed &= np.tril(np.ones((n, n), dtype=bool))
    if mask is not None:
        allowed &= mask[:, None, None, :]
    s = np.where(allowed, scores, -np.inf)
    top = np.max(s, axis=-1, keepdims=True)
    e = np.where(allowed, np.exp(s - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1), 0.0)


def random_patterns(n_layers, bsz, n_heads, n, *, causal=False, seed=0, sharpness=3.0, mask=None):
    """Random attention patterns ``[L][B, H, n, n]``."""
    rng = np.random.default_rng(seed)
    return [softmax_rows(sharpness * rng.normal(size=(bsz, n_heads, n, n)), causal, mask) for _ in range(n_layers)]


@pytest.fixture
def build_trace():
    """The :func:`make_trace` builder."""
    return make_trace


@pytest.fixture
def patterns_for():
    """The :func:`random_patterns` generator."""
    return random_patterns


@pytest.fixture
def row_softmax():
    """The :func:`softmax_rows` helper."""
    return softmax_rows
