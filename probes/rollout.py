"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Each layer's attention is fused over heads, mixed with the identity for the skip connection
(``A = 0.5 * W_att + 0.5 * I``, rows renormalised) and multiplied up the stack, later layer on the
left: ``R(1) = A(1)``, ``R(l) = A(l) @ R(l-1)``. Row ``p`` of ``R(L)`` says how much each input token
reaches output position ``p``.

Paper defaults: mean head fusion, no discarding, the [CLS] row for the encoder they study.
jacobgil/vit-explain adds max/min fusion and ``discard_ratio`` (its class defaults: mean, 0.9;
its CLI: max, 0.9); this module follows its conventions with three stated differences:

* protected entry: like vit-explain only the (0, 0) entry of the fused matrix is never discarded
  (its comment says "don't drop the class token", but only index 0 of the flattened matrix is kept);
* normalisation: each row is divided by its own sum (``normalization="row"``); vit-explain's
  ``a / a.sum(dim=-1)`` broadcasts so that entry ``(i, j)`` is divided by the sum of row ``j``, which
  differs once rows stop summing to 1 (discard, max/min fusion). ``normalization="vit-explain"``
  reproduces it;
* discarding applies to every batch item (vit-explain changes batch item 0 only) over the item's
  real tokens. vit-explain then drops the [CLS] column and divides by the max for display; here
  the full row is kept (it sums to 1 under row normalisation).

Causal decoders: the paper's conclusion warns that rollout and flow favour early tokens there and
suggests normalising "based on the receptive field of attention", without a formula. With
``receptive_field=True`` relevance is divided by the relevance the same rollout gives when every
query attends uniformly over its receptive field (the keys it can see), then renormalised to sum
to 1: a model whose attention is uniform gets uniform relevance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnlab.core.trace import Segment, Trace

from .residual_attention import augmented_attention, residual_augment, uniform_attention
from .results import TokenRelevance
from .tokens import relevance_output, select_layers, token_mask


@dataclass(frozen=True, eq=False)
class RolloutResult(TokenRelevance):
    """Rollout relevance of every input token for one output position per batch item.

    Attributes:
        relevance: ``[B, N]`` after the last rolled-out layer; 0 on padding.
        layer_relevance: ``[L, B, N]`` the same after each layer (``layer_relevance[-1] == relevance``).
        mask: ``[B, N]`` real tokens.
        positions: output position of each batch item; ``MEAN_POOLED`` (-1) for the mean-pooled output.
        layers: rolled-out layers, bottom first.
        tokens: ``tokens[b][n]``.
        segments: ``segments[b]`` (image spans carry their patch grid).
        head_fusion: ``mean`` | ``max`` | ``min``.
        discard_ratio: fraction of weakest fused entries zeroed per layer.
        normalization: ``row`` | ``vit-explain``.
        receptive_field: whether the receptive-field normalisation was applied.
    """

    relevance: np.ndarray
    layer_relevance: np.ndarray
    mask: np.ndarray
    positions: tuple[int, ...]
    layers: tuple[int, ...]
    tokens: list[list[str]]
    segments: list[list[Segment]]
    head_fusion: str
    discard_ratio: float
    normalization: str
    receptive_field: bool
    probe = "rollout"


def joint_attention(mats: np.ndarray) -> np.ndarray:
    """Roll residual-augmented matrices up the stack (``compute_joint_attention`` in the paper's code).

    Args:
        mats: ``[L, N, N]`` per-layer matrices, bottom layer first.

    Returns:
        ``[L, N, N]`` with ``out[0] = mats[0]`` and ``out[l] = mats[l] @ out[l - 1]``.
    """
    out = np.empty_like(mats)  # (L, N, N)
    out[0] = mats[0]
    for l in range(1, mats.shape[0]):
        out[l] = mats[l] @ out[l - 1]  # (N, N)
    return out


def output_rows(joint: np.ndarray, output: int | np.ndarray) -> np.ndarray:
    """``[L, n]`` rollout rows of an output: row ``output`` of each ``joint[l]``, or for ``[n]`` pooling weights
    their weighted sum (rollout is linear in its output row)."""
    return joint[:, output] if np.ndim(output) == 0 else np.einsum("k,lkn->ln", output, joint)


def receptive_field_baseline(n: int, n_layers: int, output: int | np.ndarray, causal: bool) -> np.ndarray:
    """``[L, n]`` rollout rows for an output when every query attends uniformly to what it can see.

    ``output`` is a real-token index, or ``[n]`` pooling weights (see :func:`attnlab.probes.tokens.relevance_output`).
    """
    a = residual_augment(uniform_attention(n, causal))  # (n, n)
    return output_rows(joint_attention(np.broadcast_to(a, (n_layers, n, n)).copy()), output)  # (L, n)


def _divide_by_baseline(rows: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """``rows / baseline`` renormalised per layer; 0 where the baseline is 0 (keys the output cannot see)."""
    safe = np.where(baseline > 0, baseline, 1.0)
    out = np.where(baseline > 0, rows / safe, 0.0)  # (L, n)
    total = out.sum(axis=-1, keepdims=True)
    return out / np.where(total > 0, total, 1.0)


def attention_rollout(
    trace: Trace, *, position: int | str | None = None, head_fusion: str = "mean", discard_ratio: float = 0.0,
    normalization: str = "row", receptive_field: bool = False, layers=None,
) -> RolloutResult:
    """Attention rollout of every batch item.

    Args:
        trace: a Trace captured with ``Capture(pattern=True)`` for every rolled-out layer.
        position: output position as an index into each item's real tokens (negative from the end);
            ``None``: the first token ([CLS]) for encoders, the last token for causal decoders; ``"mean"``: the
            mean over real tokens (rollout is linear in its output row, so this is the mean of the token rows);
            ``"pooled"``: the model's own pooling (``trace.meta.pooling``, e.g. mean for all-MiniLM-L6-v2).
        head_fusion: ``mean`` (paper) | ``max`` | ``min`` (vit-explain).
        discard_ratio: vit-explain's fraction of the weakest fused entries to zero per layer (0 = off).
        normalization: ``row`` (default) | ``vit-explain`` (see the module docstring).
        receptive_field: divide by the uniform-attention rollout (for causal decoders; see module docstring).
        layers: layers to roll out, bottom first; ``None`` = every layer of the model.

    Returns:
        :class:`RolloutResult`. Cost ``O(L n^3)`` per item (the per-layer rows need the full products).

    Example:
        >>> result = attention_rollout(trace)                    # doctest: +SKIP
        >>> result.relevance[0].argmax(), result.grids(0)[0].values.shape  # doctest: +SKIP
    """
    trace.require("pattern", "attention_rollout")
    trace.require_self_attention("attention_rollout")
    layers = select_layers(trace, layers, "pattern", "attention_rollout")
    mask = token_mask(trace)
    bsz, n_tok = mask.shape
    layer_rel = np.zeros((len(layers), bsz, n_tok))  # (L, B, N)
    positions = []
    for b in range(bsz):
        real = trace.real_positions(b).numpy()
        output, pos = relevance_output(trace, b, position)
        mats = augmented_attention(trace, b, layers, head_fusion=head_fusion, discard_ratio=discard_ratio,
                                   normalization=normalization)  # (L, n, n)
        rows = output_rows(joint_attention(mats), output)  # (L, n)
        if receptive_field:
            rows = _divide_by_baseline(rows, receptive_field_baseline(real.size, len(layers), output, trace.meta.causal))
        layer_rel[:, b, real] = rows
        positions.append(pos)
    return RolloutResult(
        relevance=layer_rel[-1], layer_relevance=layer_rel, mask=mask, positions=tuple(positions), layers=layers,
        tokens=[list(t) for t in trace.tokens], segments=[list(s) for s in trace.segments], head_fusion=head_fusion,
        discard_ratio=float(discard_ratio), normalization=normalization, receptive_field=receptive_field,
    )
