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


def _row_mass(p: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mass of ``p`` ``[B, H, q, K]`` on a key set ``keys`` ``[B, K]`` -> ``[B, H, q]``."""
    return (p * keys[:, None, None, :].to(p.dtype)).sum(-1)


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
    src = key_sets[rw.source].to(torch.bool)  # (B, K)
    tgt = ~src if rw.target is None else key_sets[rw.target].to(torch.bool) & ~src  # (B, K)
    a = torch.tensor(rw.factors(n_heads), dtype=p.dtype, device=p.device)[None, :, None]  # (1, H, 1)
    m_s, m_t = _row_mass(p, src), _row_mass(p, tgt)  # (B, H, q)
    apply = m_t > 0
    if query_rows is not None:
        apply = apply & query_rows[:, None, :]
    if rw.gate is not None:
        within = _row_mass(p, key_sets[rw.gate.within].to(torch.bool))
        ok = within >= rw.gate.min_mass
        if rw.gate.part is not None:
            part = _row_mass(p, key_sets[rw.gate.part].to(torch.bool))
            ok = ok & (part >= rw.gate.min_share * within) & (within > 0)
        apply = apply & ok
    a_eff = torch.where(apply, a.expand_as(m_s), torch.ones_like(m_s))  # (B, H, q)
    boost = 1 + (1 - a_eff) * m_s / m_t.clamp_min(torch.finfo(p.dtype).tiny)  # (B, H, q)
    boost = torch.where(apply, boost, torch.ones_like(boost))
    col_src, col_tgt = src[:, None, None, :], tgt[:, None, None, :]  # (B, 1, 1, K)
    factor = torch.where(col_src, a_eff[..., None], torch.where(col_tgt, boost[..., None], torch.ones_like(p[..., :1])))
    return p * factor


def attention_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, allowed: torch.Tensor, scale: float,
    layer_plan: LayerPlan | None, key_sets: dict[str, torch.Tensor], query_rows: torch.Tensor | None,
    stats: tuple[str, ...], want_pattern: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Attention for one block of query rows, in float32.

    Args:
        q: ``[B, H, q, d]``; k, v: ``[B, H, K, d]`` (already expanded for GQA).
        allowed: ``[B, 1|H, q, K]`` bool.
        scale: score multiplier.
        layer_plan: intervention for this layer, or ``None``.
        key_sets: ``{name: [B, K] bool}``.
        query_rows: ``[B, q]`` bool for the plan's query set, or ``None``.
        stats: statistic names to compute.
        want_pattern: also return the applied pattern.

    Returns:
        ``(out [B, H, q, d], row_stats {name: [B, H, q] or received [B, H, K]}, pattern or None)``.
    """
    s = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, q, K)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, q)
    live = torch.isfinite(lse)[..., None]  # (B, H, q, 1)
    p = torch.where(live, torch.exp(s - torch.where(live, lse[..., None], 0.0)), 0.0)  # (B, H, q, K)
    if layer_plan is not None and layer_plan.reweight is not None:
        p = reweight_rows(p, layer_plan.reweight, key_sets, query_rows)
    out = p @ v.float()  # (B, H, q, d)
    if layer_plan is not None and layer_plan.head_scale is not None:
        out = out * torch.tensor(layer_plan.head_scale, dtype=out.dtype, device=out.device)[None, :, None, None]
    row: dict[str, torch.Tensor] = {}
    if "lse" in stats:
        row["lse"] = lse
    if "entropy" in stats:
        row["entropy"] = -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)
    if "max" in stats:
        row["max"] = p.amax(-1)
    if "mass" in stats:
        for name, keys in key_sets.items():
            row[f"mass.{name}"] = _row_mass(p, keys.to(torch.bool))
    if "received" in stats:
        row["received"] = p.sum(-2)  # (B, H, K)
    return out, row, (p if want_pattern else None)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None, scale: float | None, layer_plan: LayerPlan | None,
    key_sets: dict[str, torch.Tensor], query_sets: dict[str, torch.Tensor], stats: tuple[str, ...],
    block_q: int | None, return_pattern: bool = False,
) -> tuple[torch.Tensor, Stats]:
    """Blockwise (``block_q`` rows at a time) or eager (``block_q=None``) attention; see ``kernels.attention``."""
    bsz, n_heads, n_q, d = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k, v = _expand_kv(k, n_heads), _expand_kv(v, n_heads)
    rw = layer_plan.reweight if layer_plan is not None else None
    q_set = query_sets[rw.queries] if rw is not None and rw.queries else None
    step = n_q if block_q is None else max(1, block_q)
    outs, rows, pats = [], [], []
    received = None
    for start in range(0, n_q, step):
        stop = min(n_q, start + step)
        allowed = build_allowed(bsz, n_q, n_k, causal=causal, key_mask=key_mask, attn_mask=attn_mask,
                                device=q.device, q_start=start, q_stop=stop)
        out, row, pat = attention_rows(
            q[:, :, start:stop], k, v, allowed=allowed, scale=scale, layer_plan=layer_plan, key_sets=key_sets,
            query_rows=None if q_set is None else q_set[:, start:stop].to(torch.bool), stats=stats,
            want_pattern=return_pattern,
        )
        if "received" in row:
            part = row.pop("received")
            received = part if received is None else received + part
        outs.append(out)
        rows.append(row)
        if pat is not None:
            pats.append(pat)
    cat = {name: torch.cat([r[name] for r in rows], dim=-1) for name in rows[0]} if rows else {}
    result = Stats(
        lse=cat.get("lse"), entropy=cat.get("entropy"), max=cat.get("max"),
        mass={n[len("mass."):]: t for n, t in cat.items() if n.startswith("mass.")},
        received=received, pattern=torch.cat(pats, dim=2) if pats else None,
    )
    return torch.cat(outs, dim=2).to(q.dtype), result
