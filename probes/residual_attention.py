"""Residual-augmented attention matrices: the per-layer graph that rollout and flow both walk.

Abnar & Zuidema (2020) model the skip connection by mixing each layer's head-fused attention
with the identity, ``A = 0.5 * W_att + 0.5 * I``; jacobgil/vit-explain adds head fusion by
max/min and discarding the weakest entries. Matrices here are over the real (non-padding)
tokens of one batch item, rows = queries, columns = keys.
"""

from __future__ import annotations

import numpy as np

from attnlab.core.trace import Trace

from .tokens import to_numpy

HEAD_FUSIONS = ("mean", "max", "min")
NORMALIZATIONS = ("row", "vit-explain")


def fuse_heads(pattern: np.ndarray, head_fusion: str = "mean") -> np.ndarray:
    """Combine heads: ``[H, Q, K] -> [Q, K]`` by mean (the paper), max or min (vit-explain)."""
    if head_fusion == "mean":
        return pattern.mean(axis=0)  # (Q, K)
    if head_fusion == "max":
        return pattern.max(axis=0)  # (Q, K)
    if head_fusion == "min":
        return pattern.min(axis=0)  # (Q, K)
    raise ValueError(f"Unknown head_fusion {head_fusion!r}; choose from {HEAD_FUSIONS}")


def discard_lowest(fused: np.ndarray, discard_ratio: float) -> np.ndarray:
    """Zero the ``int(Q * K * discard_ratio)`` smallest entries, vit-explain style.

    As in vit-explain the (0, 0) entry (the first token attending to itself, i.e. [CLS]->[CLS]) is
    never zeroed: when it is among the smallest it is skipped, not replaced by the next one.
    Ties are broken by row-major position (a stable sort), where vit-explain's ``topk`` is arbitrary.

    Args:
        fused: ``[Q, K]`` head-fused attention.
        discard_ratio: fraction in ``[0, 1)``.

    Returns:
        ``[Q, K]`` copy with the entries zeroed.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1); got {discard_ratio}")
    flat = fused.reshape(-1).copy()  # (Q*K,)
    n_drop = int(flat.size * discard_ratio)
    if n_drop:
        lowest = np.argsort(flat, kind="stable")[:n_drop]
        flat[lowest[lowest != 0]] = 0.0
    return flat.reshape(fused.shape)


def residual_augment(fused: np.ndarray, normalization: str = "row") -> np.ndarray:
    """``0.5 * fused + 0.5 * I``, renormalised.

    Args:
        fused: ``[N, N]`` head-fused attention.
        normalization: ``"row"`` divides each row by its own sum (the evident intent, and what the
            paper's ``aug /= aug.sum(-1)`` does); ``"vit-explain"`` reproduces vit-explain's
            broadcasting, which divides entry ``(i, j)`` by the sum of row ``j``. The two agree when the
            rows of ``fused`` sum to 1 (mean fusion, no discard).

    Returns:
        ``[N, N]`` matrix.
    """
    a = 0.5 * fused + 0.5 * np.eye(fused.shape[0])  # (N, N)
    if normalization == "row":
        return a / a.sum(axis=-1, keepdims=True)
    if normalization == "vit-explain":
        return a / a.sum(axis=-1)[None, :]
    raise ValueError(f"Unknown normalization {normalization!r}; choose from {NORMALIZATIONS}")


def uniform_attention(n: int, causal: bool) -> np.ndarray:
    """``[n, n]`` attention spread evenly over each query's receptive field (its visible keys)."""
    vis = np.tril(np.ones((n, n))) if causal else np.ones((n, n))  # (n, n)
    return vis / vis.sum(axis=-1, keepdims=True)


def augmented_attention(
    trace: Trace, batch: int, layers: tuple[int, ...], *, head_fusion: str = "mean",
    discard_ratio: float = 0.0, normalization: str = "row",
) -> np.ndarray:
    """Residual-augmented, head-fused attention of one batch item, over its real tokens.

    Args:
        trace: a Trace with ``pattern`` for ``layers``.
        batch: batch item.
        layers: layer indices, bottom first.
        head_fusion: ``mean`` | ``max`` | ``min``.
        discard_ratio: vit-explain's fraction of weakest fused entries to zero (0 disables).
        normalization: see :func:`residual_augment`.

    Returns:
        ``[L, n, n]`` with ``n`` the item's real tokens.
    """
    real = trace.real_positions(batch).numpy()
    out = []
    for i in layers:
        pattern = to_numpy(trace.layers[i].pattern[batch])[:, real][:, :, real]  # (H, n, n)
        fused = fuse_heads(pattern, head_fusion)  # (n, n)
        if discard_ratio:
            fused = discard_lowest(fused, discard_ratio)
        out.append(residual_augment(fused, normalization))
    return np.stack(out)  # (L, n, n)
