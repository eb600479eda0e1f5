"""Plain-torch attention with plans and statistics: the eager oracle and the blockwise CPU path.

Both run the same row-block function; ``eager`` uses one block holding every query (and can return
the pattern), ``torch`` walks query blocks so only ``[B, H, block, K]`` is alive at once.
"""

from __future__ import annotations

import math

import torch

from .plan import LayerPlan, Reweight
from .stats import Stats, build_allowed


def _expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, Hkv, K, d]`` -> ``[B, H, K, d]`` for grouped-query attention."""
    rep = n_heads // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def _per_head(mask: torch.Tensor) -> torch.Tensor:
    """A ``[B, K]`` (shared by heads) or ``[B, H, K]`` (per head) key set as ``[B, 1|H, K]``."""
    return mask[:, None] if mask.dim() == 2 else mask


def _masses(p: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """Mass of rows ``p`` ``[B, H, q, K]`` on each key set (``[B, K]`` or ``[B, H, K]``) -> ``[B, H, q, n]``.

    One matmul for every set instead of a masked sum each: the sets ride along as extra columns.
    """
    cols = torch.broadcast_tensors(*[_per_head(c).to(p.dtype) for c in columns])  # each (B, 1|H, K)
    return p @ torch.stack(cols, dim=-1)  # (B, H, q, n)


def reweight_rows(
    p: torch.Tensor, rw: Reweight, key_sets: dict[str, torch.Tensor],
    query_rows: torch.Tensor | None,
) -> torch.Tensor:
    """Apply a :class:`Reweight` to normalised attention rows.

    Args:
        p: ``[B, H, q, K]`` attention rows (each sums to 1, or 0 when fully masked).
        rw: the reweighting (factors per head).
        key_sets: ``{name: [B, K] bool}``.
        query_rows: ``[B, q]`` bool rows where the reweighting may apply, or ``None`` for all.

    Returns:
        ``[B, H, q, K]`` reweighted rows.
    """
    n_heads = p.shape[1]
    src = _per_head(key_sets[rw.source].to(torch.bool))  # (B, 1|H, K)
    tgt = ~src if rw.target is None else _per_head(key_sets[rw.target].to(torch.bool)) & ~src  # (B, 1|H, K)
    gate = rw.gate
    cols = [src, tgt] + ([] if gate is None else [key_sets[gate.within]] + ([key_sets[gate.part]] if gate.part else []))
    masses = _masses(p, cols)  # (B, H, q, 2..4)
    m_s, m_t = masses[..., 0], masses[..., 1]  # (B, H, q)
    a = torch.tensor(rw.factors(n_heads), dtype=p.dtype, device=p.device)[None, :, None]  # (1, H, 1)
    apply = m_t > 0
    if query_rows is not None:
        apply = apply & query_rows[:, None, :]
    if gate is not None:
        within = masses[..., 2]
        ok = within >= gate.min_mass
        if gate.part is not None:
            ok = ok & (masses[..., 3] >= gate.min_share * within) & (within > 0)
        apply = apply & ok
    ones = torch.ones_like(m_s)
    a_eff = torch.where(apply, a.expand_as(m_s), ones)  # (B, H, q)
    boost = torch.where(apply, 1 + (1 - a_eff) * m_s / m_t.clamp_min(torch.finfo(p.dtype).tiny), ones)  # (B, H, q)
    # each key's weight is one of (1, a, boost) by its partition: one gather instead of nested wheres
    weights = torch.stack([ones, a_eff, boost], dim=-1)  # (B, H, q, 3)
    part = (src.long() + 2 * tgt.long())[:, :, None, :].expand(p.shape)  # (B, H, q, K) view, 0 rest/1 S/2 T
    return p * torch.gather(weights, -1, part)


def _softmax_rows(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-place softmax of masked scores ``s`` ``[B, H, q, K]`` (``-inf`` = not allowed).

    Returns ``(p, lse, p_max)``, the last two ``[B, H, q]``. A fully masked row gets ``p = 0``,
    ``lse = -inf`` and ``p_max = 0`` (its max is replaced by 0, as in FlashAttention-2). The largest
    weight is ``exp(top - top) / z = 1 / z``, so it costs no pass over the row.
    """
    top = s.amax(-1, keepdim=True)  # (B, H, q, 1)
    top = top.masked_fill_(top == float("-inf"), 0.0)
    p = s.sub_(top).exp_()  # (B, H, q, K), reuses the scores' memory
    z = p.sum(-1, keepdim=True)  # (B, H, q, 1)
    lse = (z.log() + top)[..., 0]  # log 0 = -inf for fully masked rows
    p_max = torch.where(z > 0, 1.0 / z, 0.0)[..., 0]
    return p.div_(z.clamp_min_(torch.finfo(p.dtype).tiny)), lse, p_max


def attention_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, allowed: torch.Tensor, scale: float,
    layer_plan: LayerPlan | None, key_sets: dict[str, torch.Tensor], query_rows: torch.Tensor | None,
    stats: tuple[str, ...], want_pattern: bool, received_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Attention for one block of query rows, in float32.

    Args:
        q: ``[B, H, q, d]``; k, v: ``[B, H, K, d]`` float32 (already expanded for GQA).
        allowed: ``[B, 1|H, q, K]`` bool.
        scale: score multiplier.
        layer_plan: intervention for this layer, or ``None``.
        key_sets: ``{name: [B, K] bool}``.
        query_rows: ``[B, q]`` bool for the plan's query set, or ``None``.
        stats: statistic names to compute.
        want_pattern: also return the applied pattern.
        received_rows: ``[B, q]`` bool, the rows ``received`` sums over (``None``: all).

    Returns:
        ``(out [B, H, q, d], row_stats {name: [B, H, q] or received [B, H, K]}, pattern or None)``.
    """
    s = (q.float() * scale) @ k.transpose(-1, -2)  # (B, H, q, K)
    p, lse, p_max = _softmax_rows(s.masked_fill_(~allowed, float("-inf")))  # (B, H, q, K), (B, H, q) x 2
    rw = layer_plan.reweight if layer_plan is not None else None
    if rw is not None:
        p = reweight_rows(p, rw, key_sets, query_rows)
    out = p @ v  # (B, H, q, d)
    if layer_plan is not None and layer_plan.head_scale is not None:
        out = out * torch.tensor(layer_plan.head_scale, dtype=out.dtype, device=out.device)[None, :, None, None]
    row: dict[str, torch.Tensor] = {}
    if "lse" in stats:
        row["lse"] = lse
    if "entropy" in stats:
        # a factor > 1 can push T's weights below 0; those entries add nothing (p log p only for p > 0)
        pos = p.clamp_min(0.0) if rw is not None and max(rw.factors(p.shape[1])) > 1 else p
        row["entropy"] = -torch.special.xlogy(pos, pos).sum(-1)
    if "max" in stats:
        row["max"] = p.amax(-1) if rw is not None else p_max
    if "mass" in stats and key_sets:
        masses = _masses(p, list(key_sets.values()))  # (B, H, q, n_sets)
        row.update({f"mass.{name}": masses[..., i] for i, name in enumerate(key_sets)})
    if "received" in stats:
        kept = p if received_rows is None else p * received_rows[:, None, :, None].to(p.dtype)
        row["received"] = kept.sum(-2)  # (B, H, K)
    return out, row, (p if want_pattern else None)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None, scale: float | None, layer_plan: LayerPlan | None,
    key_sets: dict[str, torch.Tensor], query_sets: dict[str, torch.Tensor], stats: tuple[str, ...],
    block_q: int | None, return_pattern: bool = False, received_queries: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Blockwise (``block_q`` rows at a time) or eager (``block_q=None``) attention; see ``kernels.attention``."""
    bsz, n_heads, n_q, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k, v = _expand_kv(k.float(), n_heads), _expand_kv(v.float(), n_heads)  # converted once, not per block
    rw = layer_plan.reweight if layer_plan is not None else None
    q_set = query_sets[rw.queries] if rw is not None and rw.queries else None
    step = n_q if block_q is None else max(1, block_q)
    outs, rows, pats = [], [], []
    received = torch.zeros(bsz, n_heads, n_k, device=q.device) if "received" in stats else None  # (B, H, K)
    for start in range(0, n_q, step):
        stop = min(n_q, start + step)
        # causal: keys past the block's last row's horizon are masked for the whole block, so skip them
        hi = min(n_k, max(1, stop + n_k - n_q)) if causal else n_k
        allowed = build_allowed(bsz, n_q, n_k, causal=causal, key_mask=key_mask, attn_mask=attn_mask,
                                device=q.device, q_start=start, q_stop=stop)[..., :hi]
        out, row, pat = attention_rows(
            q[:, :, start:stop], k[:, :, :hi], v[:, :, :hi], allowed=allowed, scale=scale, layer_plan=layer_plan,
            key_sets={n: m[:, :hi] for n, m in key_sets.items()},
            query_rows=None if q_set is None else q_set[:, start:stop].to(torch.bool), stats=stats,
            want_pattern=return_pattern,
            received_rows=None if received_queries is None else received_queries[:, start:stop].to(torch.bool),
        )
        if received is not None:
            received[..., :hi] += row.pop("received")
        outs.append(out)
        rows.append(row)
        if pat is not None:
            pats.append(torch.nn.functional.pad(pat, (0, n_k - hi)))  # (B, H, q, K)
    cat = {name: torch.cat([r[name] for r in rows], dim=-1) for name in rows[0]} if rows else {}
    result = Stats(
        lse=cat.get("lse"), entropy=cat.get("entropy"), max=cat.get("max"),
        mass={n[len("mass."):]: t for n, t in cat.items() if n.startswith("mass.")},
        received=received, pattern=torch.cat(pats, dim=2) if pats else None,
    )
    return torch.cat(outs, dim=2).to(q.dtype), result
