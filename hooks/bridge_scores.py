"""Row statistics of a map a model computed itself (a TransformerLens bridge's hook points), from its scores
(:func:`score_rows`) or from its weights and the queries and keys behind them (:func:`weight_rows`).

TransformerLens' generic ``AttentionBridge`` (BERT, OPT) hands its attention *weights* to the hook meant for the
scores, so ``lse`` cannot be read off the scores as for other bridges. Where the bridge's ``hook_q``/``hook_k`` are
the vectors its softmax saw, the two terms the statistics need come from them at the cost of one product with the
keys, checked first against the weights themselves:

* at a row's largest weight ``p_max = exp(s_top - lse)`` with ``s_top = scale * q . k_top``, so ``top = s_top``;
* ``sum_j p_j s_j = scale * q . (sum_j p_j k_j)``, so ``sum_j p_j (s_j - top)`` needs ``p @ K``, not the map of
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


def top_and_spread(p: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top, p_max, sum_j p_j (s_j - top))``, each ``[B, H, Q]``, of rows whose scores are ``scale * q . k``.

    Args:
        p: ``[B, H, Q, K]`` weights; q: ``[B, H, Q, d]``; k: ``[B, H, K, d]``.
    """
    p_max, at = p.max(-1)  # (B, H, Q)
    qf, kf = q.float(), k.float()
    k_top = kf.gather(2, at[..., None].expand(-1, -1, -1, kf.shape[-1]))  # (B, H, Q, d)
    top = scale * (qf * k_top).sum(-1)  # (B, H, Q)
    p_dot_s = scale * (qf * (p @ kf)).sum(-1)  # (B, H, Q)
    return top, p_max, p_dot_s - top * p.sum(-1)


def score_rows(p: torch.Tensor, scores: torch.Tensor) -> tuple:
    """``(top, p_max, dead, sum p (s - top))`` ``[B, H, Q]`` each, of weights ``p`` and the scores ``[B, H, Q, K]``
    behind them (masked pairs at the dtype's minimum or ``-inf``)."""
    s = scores.float()
    if torch.isneginf(s).any():
        s = s.clamp_min(torch.finfo(s.dtype).min)  # 0 * -inf would be NaN; 0 * min is 0
    top = s.amax(-1)  # (B, H, Q)
    # one temporary, multiplied in place (vecdot took 3x as long on a 12 x 512 x 512 map on CPU)
    return top, p.amax(-1), top <= torch.finfo(s.dtype).min / 2, (s - top[..., None]).mul_(p).sum(-1)


def weight_rows(p: torch.Tensor, score_qk: tuple | None) -> tuple | None:
    """The same terms as :func:`score_rows` from the queries and keys behind weights ``p``, or ``None`` when there
    are none or they do not reproduce the weights (:func:`scores_reproduce`)."""
    if score_qk is None:
        return None
    q, k, scale = score_qk
    k = k.repeat_interleave(p.shape[1] // k.shape[1], dim=1)  # (B, H, K, d)
    if not scores_reproduce(p, q, k, scale):
        return None
    top, p_max, spread = top_and_spread(p, q, k, scale)
    return top, p_max, p_max <= 0, spread
