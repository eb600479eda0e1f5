"""Small per-input summaries of a stats-only Trace, for captures over whole datasets.

A dataset capture keeps, for every input, layer and head, the mean over the input's real query tokens of each
row statistic (entropy, max weight, log-sum-exp, attention mass on each key set) and the strongest key: the
largest share of the input's attention one key receives (``received_peak``) and its position. Everything else
(the attention each key receives, queries and keys) goes into mergeable reductions (:mod:`attnlab.core.reduce`).

"Share" of attention a key receives = ``received[k] / n_real_queries``: the attention summed over queries,
divided by the number of real queries, so a key every query attends to fully has share 1. Under a causal mask
a key at position ``k`` is seen by fewer queries, so late keys have small shares by construction.

Padding: the query means use real queries only, at any batch size, and so does ``received`` (the recorder
passes the real query rows to the kernels, which leave padding rows out of the column sums).

Cross-attention (an encoder-decoder's ``trace.cross``): queries are the decoder's tokens and keys the encoder's, so
every per-query quantity (row statistics, ``mass.<set>``, the share's denominator) runs over the query side
(``token_mask``) and every per-key one (``received``, its shares, peak position and histogram) over the key side
(:meth:`~attnlab.core.trace.Trace.key_side`, ``key_mask``).

Dimension vocabulary: B batch, L captured layers, H heads, Q queries, K keys, N tokens, d_head.
"""

from __future__ import annotations

import numpy as np
import torch

from .trace import ROW_STATS, Trace

#: Token ids in a sample are ``item_index * TOKEN_ID_STRIDE + position``.
TOKEN_ID_STRIDE = 2**20


def stat_names(trace: Trace, key_sets: tuple[str, ...]) -> list[str]:
    """The per-item statistics :func:`item_statistics` returns: the captured row statistics averaged over real
    queries (:data:`~attnlab.core.trace.ROW_STATS` order), ``mass.<set>`` and ``received_peak``."""
    first = next(iter(trace.layers.values()))
    names = [n for n in ROW_STATS if n in first.stats] + [f"mass.{s}" for s in key_sets]
    return names + (["received_peak"] if "received" in first.stats else [])


def item_statistics(trace: Trace, key_sets: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per item, captured layer and head: query-means of the row statistics and the peak received share.

    Args:
        trace: a Trace captured with ``stats`` (full patterns are not needed).
        key_sets: the key sets to report (``mass.<set>``); a set absent from the whole batch has mass 0.

    Returns:
        ``{name: [B, L, H] float32}`` for :func:`stat_names`, plus ``received_peak_position`` ``[B, L, H]``
        int64 (the key position of the peak), layers in ascending order.
    """
    live = trace.token_mask.bool()  # (B, N) real tokens
    n_real = live.sum(-1).clamp(min=1).float()  # (B,)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in stat_names(trace, key_sets)}
    positions = []
    for _, rec in sorted(trace.layers.items()):
        for name in out:
            if name == "received_peak":
                share, valid = received_share(trace, rec.stats["received"])  # (B, H, K), (B, 1, K)
                peak, where = share.masked_fill(~valid, -1.0).max(-1)  # (B, H)
                out[name].append(peak)
                positions.append(where)
                continue
            value = rec.stats.get(name)
            if value is None:  # a key set absent from every item of the batch
                out[name].append(torch.zeros(live.shape[0], rec.stats["entropy"].shape[1]))
                continue
            rows = live[:, None, : value.shape[-1]]  # (B, 1, Q)
            total = torch.where(rows, value.float(), torch.zeros((), dtype=torch.float32)).sum(-1)  # (B, H)
            out[name].append(total / n_real[:, None])
    result = {name: torch.stack(vals, 1).numpy().astype(np.float32) for name, vals in out.items()}  # (B, L, H)
    if positions:
        result["received_peak_position"] = torch.stack(positions, 1).numpy().astype(np.int64)
    return result


def received_share(trace: Trace, received: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of each item's attention each key receives, ``[B, H, K]``, and which keys are real ``[B, 1, K]``.

    The share divides by the item's real queries (``token_mask``); the keys are the key side's (``key_mask`` for a
    cross-attention Trace, ``token_mask`` otherwise).
    """
    n_real = trace.token_mask.bool().sum(-1).clamp(min=1).float()  # (B,) real queries
    keys = trace.key_side().token_mask.bool()  # (B, K) real keys
    share = received.float() / n_real[:, None, None]  # (B, H, K)
    return share, keys[:, None, : received.shape[-1]]


def layer_received_shares(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Every captured layer's received shares ``[L, H, B, K]`` and their validity ``[L, 1, B, K]`` (for histograms)."""
    shares, valid = [], []
    for _, rec in sorted(trace.layers.items()):
        share, ok = received_share(trace, rec.stats["received"])  # (B, H, K), (B, 1, K)
        shares.append(share.permute(1, 0, 2))  # (H, B, K)
        valid.append(ok.permute(1, 0, 2))  # (1, B, K)
    return torch.stack(shares).numpy(), torch.stack(valid).numpy()


def qk_tokens(trace: Trace, item_index: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every real token's queries and keys across the captured layers, with a dataset-wide token id.

    Args:
        trace: a Trace captured with ``qk``.
        item_index: the dataset index of each batch item ``[B]``.

    Returns:
        ``(ids [T], payload [T, L, 2, H, d_head])`` with ``payload[:, :, 0]`` the queries and ``[:, :, 1]`` the keys.

    Raises:
        ValueError: for a cross-attention Trace, whose queries (decoder tokens) and keys (encoder tokens) belong to
            different tokens and so cannot be paired per token.
    """
    if trace.is_cross:
        raise ValueError("qk_tokens pairs each token's query with its key, but in a cross-attention Trace queries are "
                         f"the decoder's tokens and keys the encoder's ({trace.meta.family}); sample the encoder's "
                         "(trace.encoder) or the decoder's (the main Trace) self-attention instead")
    live = trace.token_mask.bool()  # (B, N)
    if live.shape[1] >= TOKEN_ID_STRIDE:
        raise ValueError(f"Inputs of {live.shape[1]} tokens exceed the sample's id space ({TOKEN_ID_STRIDE} "
                         "positions); shorten them")
    b, n = live.nonzero(as_tuple=True)  # (T,), (T,)
    layers = [rec for _, rec in sorted(trace.layers.items())]
    if any(rec.q is None or rec.k is None for rec in layers):
        raise ValueError("qk_tokens needs a Trace captured with qk=True on every captured layer")
    per_layer = [torch.stack([rec.q[b, :, n], rec.k[b, :, n]], 1) for rec in layers]  # L x (T, 2, H, d)
    payload = torch.stack(per_layer, 1).float().numpy()  # (T, L, 2, H, d)
    ids = torch.tensor(item_index)[b] * TOKEN_ID_STRIDE + n  # (T,)
    return ids.numpy().astype(np.int64), payload
