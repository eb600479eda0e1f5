"""Row statistics of a map a model computed itself (a TransformerLens bridge's hook points), from its scores
(:func:`score_rows`) or from its weights and the queries and keys behind them (:func:`weight_rows`).

TransformerLens' generic ``AttentionBridge`` (BERT, OPT) hands its attention *weights* to the hook meant for the
scores, so ``lse`` cannot be read off the scores as for other bridges. Where the bridge's ``hook_q``/``hook_k`` are
the vectors its softmax saw, the two terms the statistics need come from them at the cost of one product with the
keys, checked first against the weights themselves:

* at any key ``a`` a row weighs, ``p_a = exp(s_a - lse)`` with ``s_a = scale * q . k_a``;
* ``sum_j p_j s_j = scale * q . (sum_j p_j k_j)``, so ``sum_j p_j (s_j - s_a)`` needs ``p @ K``, not the map of
  scores.

:func:`attnlab.kernels.reference.softmax_row_stats` turns them into ``lse`` and the entropy.
"""

from __future__ import annotations

import torch

#: largest |softmax(scale q k^T) - weights| on the checked row for q and k to count as what the softmax saw
MATCH_TOLERANCE = 1e-4


def scores_reproduce(p: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> bool:
    """Whether ``softmax(scale * q k^T)`` over the keys a row weighs equals the weights ``p`` on the last query row
    (a position bias, RoPE applied after the hooks or another scale would not).

    Args:
        p: ``[B, H, Q, K]`` weights; q: ``[B, H, Q, d]``; k: ``[B, H, K, d]`` (heads repeated for GQA).
    """
    row = p[:, :, -1:]  # (B, H, 1, K)
    s = scale * (q[:, :, -1:].float() @ k.float().transpose(-1, -2))  # (B, H, 1, K)
    rebuilt = torch.softmax(s.masked_fill(row <= 0, float("-inf")), -1).nan_to_num(0.0)
    return bool((rebuilt - row).abs().max() <= MATCH_TOLERANCE)


#: Smallest weight an anchor key may have on a row (well above float32's subnormals, where ``log`` loses digits);
#: rows whose anchor weighs less take their largest weight instead.
ANCHOR_FLOOR = 1e-30


def anchor_and_spread(p: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s_a, p_a, sum_j p_j (s_j - s_a))``, each ``[B, H, Q]``, at one anchor key ``a`` per row, for rows whose
    scores are ``scale * q . k``.

    ``p_a = exp(s_a - lse)`` holds at any key, and a float32 softmax weight carries its few-ulp relative error at
    any normal magnitude, so ``lse = s_a - log p_a`` is as exact at the first key each item's last row weighs as at
    the row's largest weight, without the row argmax (2.9 ms on a 12 x 512 x 512 map on the CPU, against 0.16 ms
    for the row maxima). Rows where the anchor weighs under :data:`ANCHOR_FLOOR` (or nothing) fall back to their
    largest weight.

    Args:
        p: ``[B, H, Q, K]`` weights; q: ``[B, H, Q, d]``; k: ``[B, H, K, d]``.
    """
    qf, kf = q.float(), k.float()
    items = torch.arange(p.shape[0], device=p.device)
    anchor = (p[:, 0, -1] > 0).to(torch.uint8).argmax(-1)  # (B,) the first key the last row weighs
    p_a = p.gather(-1, anchor[:, None, None, None].expand(-1, p.shape[1], p.shape[2], 1))[..., 0]  # (B, H, Q)
    s_a = scale * (qf * kf[items, :, anchor][:, :, None]).sum(-1)  # (B, H, Q)
    weak = p_a < ANCHOR_FLOOR
    if bool(weak.any()):
        b, h, i = weak.nonzero(as_tuple=True)  # (n,) each
        p_top, at = p[b, h, i].max(-1)  # (n,)
        p_a[b, h, i] = p_top
        s_a[b, h, i] = scale * (qf[b, h, i] * kf[b, h, at]).sum(-1)
    p_dot_s = scale * (qf * (p @ kf)).sum(-1)  # (B, H, Q)
    return s_a, p_a, p_dot_s - s_a * p.sum(-1)


def score_rows(p: torch.Tensor, scores: torch.Tensor) -> tuple:
    """``(top, p_max, dead, sum p (s - top), p_max)`` ``[B, H, Q]`` each, of weights ``p`` and the scores
    ``[B, H, Q, K]`` behind them (masked pairs at the dtype's minimum or ``-inf``): the anchor is each row's largest
    score, whose weight is the row's largest weight."""
    s = scores.float()
    if torch.isneginf(s).any():
        s = s.clamp_min(torch.finfo(s.dtype).min)  # 0 * -inf would be NaN; 0 * min is 0
    top = s.amax(-1)  # (B, H, Q)
    # one temporary, multiplied in place (vecdot took 3x as long on a 12 x 512 x 512 map on CPU)
    p_max = p.amax(-1)
    return top, p_max, top <= torch.finfo(s.dtype).min / 2, (s - top[..., None]).mul_(p).sum(-1), p_max


def weight_rows(p: torch.Tensor, score_qk: tuple | None) -> tuple | None:
    """``(s_a, p_a, dead, sum p (s - s_a), p_max)`` from the queries and keys behind weights ``p``, at the anchors of
    :func:`anchor_and_spread`, or ``None`` when there are none or they do not reproduce the weights
    (:func:`scores_reproduce`)."""
    if score_qk is None:
        return None
    q, k, scale = score_qk
    k = k.repeat_interleave(p.shape[1] // k.shape[1], dim=1)  # (B, H, K, d)
    if not scores_reproduce(p, q, k, scale):
        return None
    s_a, p_a, spread = anchor_and_spread(p, q, k, scale)
    return s_a, p_a, p_a <= 0, spread, p.amax(-1)
