"""Plain-torch attention with plans and statistics: the eager oracle and the blockwise CPU path.

Both run the same row-block function; ``eager`` uses one block holding every query (and can return
the pattern), ``torch`` walks query blocks so only ``[B, H, block, w]`` is alive at once, where ``w`` is
the span of keys some row of the block can see: key columns that causality, a sliding window or padding
hide from every row of a block are never computed. Without a reweighting plan every statistic comes
from the unnormalised block in one sweep (normaliser ``z`` applied to row and column sums afterwards).
"""

from __future__ import annotations

import math

import torch

from .plan import LayerPlan, Reweight
from .stats import Stats

#: Score of a masked pair. Finite, so ``p * (s - max)`` is ``0 * finite = 0`` rather than NaN, and far below
#: any real score; a row whose max stays at this level has nothing to attend to (treated as fully masked).
MASKED = -1.0e30
#: Rows x keys of one head's map from which key-set masses are matrix-vector products (:func:`_masses`).
MV_MIN_ELEMENTS = 1 << 14
#: Keys per tile when a block's rows span more (:func:`_key_tiled_rows`): a 128-row tile of one head is 4 MiB.
KEY_TILE = 8192


def _expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, Hkv, K, d]`` -> ``[B, H, K, d]`` for grouped-query attention."""
    rep = n_heads // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def _per_head(mask: torch.Tensor) -> torch.Tensor:
    """A ``[B, K]`` (shared by heads) or ``[B, H, K]`` (per head) key set as ``[B, 1|H, K]``."""
    return mask[:, None] if mask.dim() == 2 else mask


def _masses(p: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """Mass of rows ``p`` ``[B, H, q, K]`` on each key set (``[B, K]`` or ``[B, H, K]``) -> ``[B, H, q, n]``.

    Sets shared by the heads of a large map take one matrix-vector product per item and set (on the CPU 0.55 ms
    for a 12 x 512 x 512 map, against 3.6 ms for the batched matmul with a handful of columns, which runs as a
    slow skinny GEMM); per-head sets and small maps (a decoding row) ride along as the columns of one matmul.
    """
    if p.dim() == 4 and all(c.dim() == 2 for c in columns):
        sets = torch.stack(columns, dim=-1).to(p.dtype)  # (B, K, n)
        if p.shape[2] * p.shape[3] >= MV_MIN_ELEMENTS:
            return torch.stack([torch.stack([p[b] @ sets[b, :, i] for i in range(sets.shape[-1])], dim=-1)
                                for b in range(p.shape[0])])  # (B, H, q, n)
        # heads folded into the rows, and the product taken as sets^T @ p^T: a GEMM with n (2-4) output columns
        # runs as a slow skinny kernel on the CPU (32 items x 8 heads x 9 rows x 74 keys: 0.26 ms broadcast over the
        # heads, 0.19 folded, 0.04 transposed)
        rows = p.reshape(p.shape[0], -1, p.shape[3]).transpose(1, 2)  # (B, K, H q)
        return (sets.transpose(1, 2) @ rows).transpose(1, 2).reshape(*p.shape[:3], sets.shape[-1])
    cols = torch.broadcast_tensors(*[_per_head(c) for c in columns])  # each (B, 1|H, K)
    return (torch.stack(cols, dim=-2).to(p.dtype) @ p.transpose(-1, -2)).transpose(-1, -2)  # (B, H, q, n), as above


def row_entropy(p: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """Entropy in nats of attention rows ``p`` ``[..., K]`` -> ``[...]`` (``0 log 0 = 0``).

    ``clamp`` drops negative weights first (a reweighting factor > 1 can push some below 0; they add nothing).
    """
    pos = p.clamp_min(0.0) if clamp else p
    # -sum x log x as log, multiply and sum over one temporary, in place: 4.6 ms on a 12 x 512 x 512 map on CPU,
    # against 8.1 ms for special.entr (branching per element) and 9.9 ms for xlogy. x = 0 gives 0 * log(tiny) = 0.
    logs = pos.clamp_min(torch.finfo(pos.dtype).tiny).log_()
    return -logs.mul_(pos).sum(-1)


def pattern_stats(p: torch.Tensor, stats: tuple[str, ...], key_sets: dict[str, torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """The row statistics of a materialised pattern, by the definitions :func:`reference_attention` emits.

    For views that hold a stored pattern but not the statistics (the dashboard, a Run captured with patterns).

    Args:
        p: ``[B, H, Q, K]`` applied attention.
        stats: names from ``entropy``, ``max``, ``mass``.
        key_sets: ``{name: [B, K] or [B, H, K] bool}`` for ``mass``.

    Returns:
        ``{"entropy": [B, H, Q], "max": [B, H, Q], "mass.<name>": [B, H, Q]}`` for the names asked.
    """
    out = {}
    if "entropy" in stats:
        out["entropy"] = row_entropy(p)
    if "max" in stats:
        out["max"] = p.amax(-1)
    if "mass" in stats and key_sets:
        masses = _masses(p, list(key_sets.values()))  # (B, H, Q, n)
        out.update({f"mass.{name}": masses[..., i] for i, name in enumerate(key_sets)})
    return out


def reweight_rows(
    p: torch.Tensor, rw: Reweight, key_sets: dict[str, torch.Tensor],
    query_rows: torch.Tensor | None, inplace: bool = False,
) -> torch.Tensor:
    """Apply a :class:`Reweight` to normalised attention rows.

    Args:
        p: ``[B, H, q, K]`` attention rows (each sums to 1, or 0 when fully masked).
        rw: the reweighting (factors per head).
        key_sets: ``{name: [B, K] or [B, H, K] bool}``.
        query_rows: ``[B, q]`` bool rows where the reweighting may apply, or ``None`` for all.
        inplace: write the result into ``p`` (no autograd through it): one row-block temporary fewer, which on the
            CPU also spares the page faults of a fresh allocation.

    Returns:
        ``[B, H, q, K]`` reweighted rows.
    """
    if query_rows is not None:  # only the rows some item's query set holds are computed (VAR: the text after the
        rows = query_rows.any(0).nonzero().flatten()  # image, a few of the prompt's rows at prefill) (r,)
        if rows.numel() == 0:
            return p
        if rows.numel() < p.shape[2]:
            sub = reweight_rows(p.index_select(2, rows), rw, key_sets, query_rows.index_select(1, rows), inplace=True)
            return p.index_copy_(2, rows, sub) if inplace else p.index_copy(2, rows, sub)
    src = key_sets[rw.source].to(torch.bool)  # (B, K) or (B, H, K)
    tgt = ~src if rw.target is None else key_sets[rw.target].to(torch.bool)
    if tgt.dim() != src.dim():  # one set per item beside one per head: both per head
        src, tgt = _per_head(src), _per_head(tgt)
    tgt = tgt & ~src  # (B, K) or (B, H, K)
    gate = rw.gate
    cols = [src, tgt] + ([] if gate is None else [key_sets[gate.within]] + ([key_sets[gate.part]] if gate.part else []))
    d_src, d_tgt = reweight_factors(_masses(p, cols), rw, p.shape[1], query_rows)  # (B, H, q) each
    # each key's factor 1 + d_S [j in S] + d_T [j in T], built in three ops over the rows
    factors = d_src[..., None] * _per_head(src)[:, :, None, :]  # (B, H, q, K)
    factors.addcmul_(d_tgt[..., None], _per_head(tgt)[:, :, None, :]).add_(1.0)
    return p.mul_(factors) if inplace else p * factors


def reweight_factors(masses: torch.Tensor, rw: Reweight, n_heads: int, query_rows: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's factors on the source and on the target of a :class:`Reweight`, less 1: ``(d_S, d_T)``
    ``[B, H, q]``, ``(a - 1, (1 - a) m_S / m_T)`` where the row is reweighted, ``(0, 0)`` where it is left alone
    (``m_T = 0``, the gate fails, or the row is outside ``query_rows``). The one owner of the formula, for every
    torch route.

    Args:
        masses: ``[B, H, q, 2..4]`` the unmodified rows' mass on the source, the target minus the source, and the
            gate's ``within`` and ``part`` sets when it has them.
        rw: the reweighting; n_heads: ``H``.
        query_rows: ``[B, q]`` bool rows the reweighting may touch, or ``None`` for all.
    """
    m_s, m_t = masses[..., 0], masses[..., 1]  # (B, H, q)
    apply = m_t > 0
    if query_rows is not None:
        apply &= query_rows[:, None, :]
    gate = rw.gate
    if gate is not None:
        within = masses[..., 2]
        apply &= within >= gate.min_mass
        if gate.part is not None:
            apply &= masses[..., 3] >= gate.min_share * within
            if gate.min_mass <= 0:  # otherwise implied by the mass test
                apply &= within > 0
    factors = rw.factors(n_heads)
    if len(set(factors)) == 1:  # one factor for every head (VAR): a scalar, no tensor to build per call
        d_src = apply.to(masses.dtype).mul_(factors[0] - 1.0)
    else:
        d_src = apply * torch.tensor([f - 1.0 for f in factors], dtype=masses.dtype, device=masses.device)[:, None]
    d_tgt = (d_src * m_s).div_(m_t.clamp_min(torch.finfo(masses.dtype).tiny)).neg_()  # (1 - a) m_S / m_T
    return d_src, d_tgt


def visible_keys(r0: int, r1: int, n_q: int, n_k: int, causal: bool, window: int | None) -> tuple[int, int]:
    """Keys ``[lo, hi)`` that some query row in ``r0:r1`` may see by position (``hi <= lo``: none).

    Query ``i`` sits at position ``i + K - Q``; causal rows see keys up to it, a window of ``W`` keeps the
    last ``W`` of those (the query's own key included).
    """
    off = n_k - n_q
    hi = min(n_k, r1 + off) if causal else n_k
    lo = max(0, r0 + off - window + 1) if window is not None else 0
    return lo, hi


def positional_mask(r0: int, r1: int, c0: int, c1: int, n_q: int, n_k: int, causal: bool, window: int | None,
                    device: torch.device) -> torch.Tensor:
    """``[q, c]`` bool: may query row ``i`` in ``r0:r1`` see key ``j`` in ``c0:c1`` by causality and window."""
    pos = torch.arange(r0, r1, device=device)[:, None] + (n_k - n_q)  # (q, 1)
    keys = torch.arange(c0, c1, device=device)[None, :]  # (1, c)
    ok = keys <= pos if causal else torch.ones(r1 - r0, c1 - c0, dtype=torch.bool, device=device)
    return ok & (keys > pos - window) if window is not None else ok


class _Call:
    """One attention call's fixed inputs, float32 and expanded for GQA once rather than per block."""

    def __init__(self, q, k, v, *, causal, window, key_mask, attn_mask, scale, softcap, bias, layer_plan,
                 key_sets, query_sets, stats, received_queries, want_pattern):
        self.q, self.n_q, self.n_k = q, q.shape[2], k.shape[2]
        self.k, self.v = _expand_kv(k.float(), q.shape[1]), _expand_kv(v.float(), q.shape[1])  # (B, H, K, d)
        self.scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        self.causal, self.window, self.softcap, self.bias = causal, window, softcap, bias
        self.key_mask = None if key_mask is None else key_mask.to(torch.bool)  # (B, K)
        self.attn_mask = None if attn_mask is None else attn_mask.to(torch.bool)  # (B|1, 1|H, Q, K)
        if self.attn_mask is not None and self.attn_mask.shape[1] == 1 and bool(
                (self.attn_mask == self.attn_mask[:, :, :1]).all()):
            # the same for every query and head (a padding mask, as HF models pass it): a key mask, which adds to
            # the scores instead of a masked fill over each block and skips keys no row sees
            keys = self.attn_mask[:, 0, 0].expand(q.shape[0], self.n_k)  # (B, K)
            self.key_mask = keys if self.key_mask is None else self.key_mask & keys
            self.attn_mask = None
        rw = layer_plan.reweight if layer_plan is not None else None
        # factors of 1 change nothing: such a plan takes the plain path and reproduces the baseline bit for bit
        self.rw = None if rw is None or not rw.changed_heads(q.shape[1]) else rw
        self.head_scale = None if layer_plan is None or layer_plan.head_scale is None else torch.tensor(
            layer_plan.head_scale, dtype=torch.float32, device=q.device)[None, :, None, None]  # (1, H, 1, 1)
        self.key_sets, self.stats, self.want_pattern = key_sets, stats, want_pattern
        # values with the key sets as extra columns: one GEMM gives the output and the mass on every set, instead
        # of a second skinny GEMM over the whole block (the sets ride along as values 0/1)
        self.v_mass = None
        if "mass" in stats and key_sets:
            sets = torch.broadcast_tensors(*[_per_head(m).to(self.v.dtype) for m in key_sets.values()])  # (B, 1|H, K)
            members = torch.stack(sets, dim=-1).expand(*self.v.shape[:3], len(sets))  # (B, H, K, n)
            self.v_mass = torch.cat([self.v, members], dim=-1)  # (B, H, K, dv + n)
        self.q_set = query_sets[self.rw.queries].to(torch.bool) if self.rw is not None and self.rw.queries else None
        self.received_rows = None if received_queries is None else received_queries.to(torch.bool)  # (B, Q)
        self.key_span = (0, self.n_k)
        # a pass that builds a graph (a circuit's gradients, a user's backward) takes out-of-place ops only;
        # a no-grad pass reuses block buffers and works in place
        self.grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, bias))
        self._buffers: dict[int, torch.Tensor] = {}
        self.h0, self.h1 = 0, q.shape[1]  # the heads the current block computes (see reference_attention)
        if self.key_mask is not None:  # padding no batch row can see is never computed
            real = self.key_mask.any(0).nonzero()
            self.key_span = (int(real[0]), int(real[-1]) + 1) if len(real) else (0, 0)

    def workspace(self, index: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Block buffer ``index`` viewed as ``shape``: reused across blocks, so no block pays fresh pages.

        ``None`` when the pass builds a graph: autograd cannot see writes into a shared buffer.
        """
        if self.grad:
            return None
        size = math.prod(shape)
        buf = self._buffers.get(index)
        if buf is None or buf.numel() < size:  # the first block asks for the widest span or close to it
            width = self.keys(0, self.n_q)[1] - self.keys(0, self.n_q)[0]
            if index == 0 and self.tiles(width):  # scores are computed a key tile at a time
                width = KEY_TILE
            buf = self._buffers[index] = torch.empty(max(size, math.prod(shape[:3]) * width), device=self.v.device)
        return buf[:size].view(shape)

    def tiles(self, width: int) -> bool:
        """Whether rows over ``width`` keys go in key tiles (:func:`_key_tiled_rows`): plain rows (no reweighting),
        no pattern to return, no graph to build, more than :data:`KEY_TILE` keys."""
        return self.rw is None and not self.want_pattern and not self.grad and width > KEY_TILE

    def heads(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """``t`` ``[B, H|1, ...]`` cut to the heads of the current block (a shared head axis of 1 stays whole)."""
        return t if t is None or t.shape[1] == 1 else t[:, self.h0:self.h1]

    def keys(self, r0: int, r1: int) -> tuple[int, int]:
        """Key columns ``[lo, hi)`` computed for rows ``r0:r1``."""
        lo, hi = visible_keys(r0, r1, self.n_q, self.n_k, self.causal, self.window)
        return max(lo, self.key_span[0]), min(hi, self.key_span[1])


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """A bool mask as float32 terms to add to scores: 0 where allowed, ``MASKED`` elsewhere.

    Adding it masks a pair (``s + MASKED`` is ``MASKED`` in float32 for any score below ~1e22, and twice ``MASKED``
    is still finite) 8-17x faster than ``masked_fill_`` on the CPU: 0.30 against 2.7 ms for a causal
    12 x 512 x 512 block, 0.20 against 3.5 ms for a padding mask.
    """
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, MASKED)


def _add(c: _Call, s: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """``s + terms``: in place, or out of place when the pass builds a graph."""
    return s + terms if c.grad else s.add_(terms)


def _hide(c: _Call, s: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
    """``s`` with the pairs ``hide`` marks set to ``MASKED``: in place, or out of place when the pass builds a graph."""
    return s.masked_fill(hide, MASKED) if c.grad else s.masked_fill_(hide, MASKED)


def block_scores(c: _Call, r0: int, r1: int, lo: int, hi: int) -> torch.Tensor:
    """Scores ``[B, H, q, hi - lo]`` of rows ``r0:r1`` on keys ``lo:hi``: scaled, soft-capped, biased, masked.

    Only the columns near the diagonal and the window's edge get the positional mask: the columns
    between them are visible to every row of the block.
    """
    qb, kb = c.q[:, c.h0:c.h1, r0:r1].float() * c.scale, c.k[:, c.h0:c.h1, lo:hi]
    s = torch.matmul(qb, kb.transpose(-1, -2), out=c.workspace(0, qb.shape[:3] + (hi - lo,)))  # (B, H, q, w)
    if c.softcap is not None:  # Gemma 2: cap * tanh(s / cap), before any bias or mask
        s = torch.tanh(s / c.softcap) * c.softcap if c.grad else s.div_(c.softcap).tanh_().mul_(c.softcap)
    if c.bias is not None:  # a -inf bias entry masks its pair
        bias = c.heads(c.bias)[:, :, r0:r1, lo:hi]
        s = (s + bias).clamp_min(MASKED) if c.grad else s.add_(bias).clamp_min_(MASKED)
    off = c.n_k - c.n_q
    edges = []
    if c.causal:
        edges.append((max(lo, r0 + off + 1), hi))  # keys after the block's first query
    if c.window is not None:
        edges.append((lo, min(hi, r1 + off - c.window)))  # keys before the last query's window
    for c0, c1 in edges:
        if c1 > c0:
            ok = positional_mask(r0, r1, c0, c1, c.n_q, c.n_k, c.causal, c.window, s.device)  # (q, c)
            if c.grad:  # out of place: the mask widened to the block
                hide = torch.zeros(s.shape[-2:], device=s.device)  # (q, w)
                hide[:, c0 - lo:c1 - lo] = _additive(ok)
                s = _add(c, s, hide)
            else:  # in place on the columns it touches
                s[..., c0 - lo:c1 - lo].add_(_additive(ok))
    if c.key_mask is not None:
        km = c.key_mask[:, lo:hi]  # (B, w)
        if not bool(km.all()):
            s = _add(c, s, _additive(km)[:, None, None, :])  # (B, 1, 1, w)
    if c.attn_mask is not None:
        s = _hide(c, s, ~c.heads(c.attn_mask)[:, :, r0:r1, lo:hi])
    return s


def softmax_row_stats(top: torch.Tensor, p_max: torch.Tensor, dead: torch.Tensor, p_dot_d: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(lse, entropy)`` of softmax rows from what the softmax already gave, without a pass of ``exp``/``log``.

    At a row's largest weight ``p_max = exp(top - lse)``, so ``lse = top - log p_max``; with ``d = s - top``,
    ``-log p_j = -log p_max - d_j``, so the entropy ``H = -sum_j p_j log p_j = -log p_max - sum_j p_j d_j``.
    The same holds at any key the row weighs (an anchor: ``top`` its score, ``p_max`` its weight), which bridges use
    to skip the row argmax. The one derivation of both, for the kernels' torch path and for maps a model computed
    itself (bridges).

    Args:
        top: ``[...]`` each row's largest (scaled, masked) score, or its anchor's score.
        p_max: ``[...]`` each row's largest weight, or its anchor's weight.
        dead: ``[...]`` bool, rows with nothing to attend to (``lse = -inf``, entropy 0).
        p_dot_d: ``[...]`` ``sum_j p_j (s_j - top)``, or ``None`` when the entropy is not wanted.

    Returns:
        ``(lse [...], entropy [...] or None)``.
    """
    neg_log_max = -p_max.log()  # +inf on dead rows, which the where()s replace
    lse = torch.where(dead, float("-inf"), top + neg_log_max)
    entropy = None if p_dot_d is None else torch.where(dead, 0.0, neg_log_max - p_dot_d)
    return lse, entropy


def _softmax_rows(s: torch.Tensor, buf: torch.Tensor | None, grad: bool = False, shift: bool = True,
                  row_max: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                 torch.Tensor]:
    """Softmax of masked scores ``s`` ``[B, H, q, w]`` and what the statistics need: ``(p, d, top, p_max, dead)``.

    ``top`` is each row's largest score and ``d = s - top`` (``<= 0``; ``s``'s own memory unless ``grad``), both
    kept for the statistics; ``p = softmax(d)`` goes into ``buf`` when given. torch's softmax kernel, not
    ``torch.exp``: on the CPU ``exp`` takes a slow path for arguments below its underflow bound, which every
    masked pair (``MASKED``) is, and measured 10x slower on a causal block (24 vs 2 ms at 12 x 512 x 512).
    ``dead`` ``[B, H, q, 1]`` marks rows with nothing to attend to; their ``p`` is 0. ``p_max`` ``[B, H, q, 1]``.
    With ``grad`` every op is out of place, so autograd can differentiate through it.

    Without ``shift`` (no entropy to compute) ``d`` is ``s`` unshifted: softmax subtracts the same row maximum
    itself, so ``p`` is bit for bit the same, one pass sooner; without ``row_max`` (no lse, entropy or max asked)
    ``p_max`` is ``None``.
    """
    top = s.amax(-1, keepdim=True)  # (B, H, q, 1)
    if not shift:
        d = s
    else:
        d = s - top if grad else s.sub_(top)
    p = torch.softmax(d, -1) if buf is None or grad else torch.softmax(d, -1, out=buf)
    dead = top <= MASKED / 2
    if bool(dead.any()):
        p = p.masked_fill(dead, 0.0) if grad else p.masked_fill_(dead, 0.0)
    return p, d, top, p.amax(-1, keepdim=True) if row_max else None, dead


def _weigh_values(c: _Call, w: torch.Tensor, lo: int, hi: int, row: dict) -> torch.Tensor:
    """``w @ v`` for weights ``w`` ``[B, H, q, hi - lo]``, ``[B, H, q, dv]``.

    With ``mass`` asked for, the key sets are extra value columns (:attr:`_Call.v_mass`), so the same GEMM puts the
    mass on each set in ``row["mass"]`` ``[B, H, q, n]``.
    """
    values = c.v if c.v_mass is None else c.v_mass
    both = w @ values[:, c.h0:c.h1, lo:hi]  # (B, h, q, dv [+ n])
    dv = c.v.shape[3]
    if c.v_mass is not None:
        row["mass"] = both[..., dv:]
    return both[..., :dv]


def _normalised_stats(c: _Call, p: torch.Tensor, lo: int, hi: int, r0: int, r1: int, row: dict) -> torch.Tensor:
    """Statistics of applied rows ``p`` ``[B, H, q, w]`` that were normalised (and maybe reweighted)."""
    if "entropy" in c.stats:
        row["entropy"] = row_entropy(p, clamp=c.rw is not None and max(c.rw.factors(p.shape[1])) > 1)
    if "max" in c.stats:
        row["max"] = p.amax(-1)
    if "received" in c.stats:
        row["received"] = _column_sums(c, p, r0, r1)  # (B, h, w)
    return _weigh_values(c, p, lo, hi, row)


def _softmax_block(c: _Call, r0: int, r1: int, lo: int, hi: int, buf: torch.Tensor | None, merged: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Softmax of rows ``r0:r1`` over keys ``lo:hi`` and its row statistics: ``(p [B, h, q, hi - lo], lse, entropy,
    max)``, the last three ``[B, h, q]`` or ``None`` when not asked for (``entropy`` also with a reweighting plan,
    which takes it from the reweighted rows). ``merged``: a key tile, whose ``lse`` its merge needs."""
    s = block_scores(c, r0, r1, lo, hi)  # (B, h, q, w)
    wants_entropy = c.rw is None and "entropy" in c.stats
    row_stats = merged or "lse" in c.stats or (c.rw is None and ("entropy" in c.stats or "max" in c.stats))
    p, d, top, p_max, dead = _softmax_rows(s, buf, c.grad, shift=wants_entropy, row_max=row_stats)
    if not row_stats:
        return p, None, None, None
    p_dot_d = None
    if wants_entropy:
        # (B, h, q); in place on d (no longer needed), so no block-sized temporary (vecdot makes one)
        p_dot_d = ((p * d) if c.grad else d.mul_(p)).sum(-1)
    lse, entropy = softmax_row_stats(top[..., 0], p_max[..., 0], dead[..., 0], p_dot_d)
    return p, lse, entropy, p_max[..., 0]


def _column_sums(c: _Call, p: torch.Tensor, r0: int, r1: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``received`` of rows ``p`` ``[B, h, q, w]`` (scaled by ``weights`` ``[B, h, q]`` when given): their sum over the
    query rows ``received`` counts, ``[B, h, w]``, as a matrix-vector product (half the time of ``p.sum(-2)``)."""
    rows = (p.new_ones(1, 1, 1, r1 - r0) if c.received_rows is None else
            c.received_rows[:, None, None, r0:r1].to(p.dtype))  # (B|1, 1, 1, q)
    if weights is not None:
        rows = rows * weights[:, :, None, :]  # (B, h, 1, q)
    return (rows @ p)[..., 0, :]


def _key_tiled_rows(c: _Call, r0: int, r1: int, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows ``r0:r1`` over keys ``lo:hi`` in tiles of :data:`KEY_TILE` keys, each softmax-normalised on its own and
    merged by the tiles' share of the row's mass, so every pass over a tile runs in cache.

    With ``lse_t`` a tile's log-normaliser, ``w_t = exp(lse_t - lse)`` is its share (``lse = logsumexp_t lse_t``):
    the output and masses are ``sum_t w_t out_t``, the largest weight ``max_t w_t max_t``, the entropy (of a mixture
    over disjoint keys) ``sum_t w_t H_t - sum_t w_t log w_t``, and a tile's column sums weigh each row by ``w_t``.
    Measured on the CPU, 128 rows x 32k keys x d 64 in one block: the score GEMM ran at 49 GFLOP/s (81 at 8k) and
    every elementwise pass at a third of its speed at 8k keys, the block having left the cache.

    Returns:
        ``(out [B, h, q, dv], row)`` as :func:`attention_rows`'s plain path gives them.
    """
    bsz, n_heads, n_rows = c.q.shape[0], c.h1 - c.h0, r1 - r0
    store = c.workspace(1, (bsz, n_heads, n_rows, hi - lo)).view(-1)  # each tile's rows, contiguous, side by side
    tiles, lses, entropies, maxima, outs, masses = [], [], [], [], [], []
    offset = 0
    for t0 in range(lo, hi, KEY_TILE):
        t1 = min(hi, t0 + KEY_TILE)
        size = bsz * n_heads * n_rows * (t1 - t0)
        buf = store[offset:offset + size].view(bsz, n_heads, n_rows, t1 - t0)
        offset += size
        p, lse, entropy, p_max = _softmax_block(c, r0, r1, t0, t1, buf, merged=True)
        part: dict[str, torch.Tensor] = {}
        outs.append(_weigh_values(c, p, t0, t1, part))  # (B, h, q, dv)
        tiles.append(p)
        lses.append(lse)
        entropies.append(entropy)
        maxima.append(p_max)
        masses.append(part.get("mass"))
    lse_t = torch.stack(lses)  # (T, B, h, q)
    lse = torch.logsumexp(lse_t, 0)  # (B, h, q)
    share = torch.exp(lse_t - lse).nan_to_num_(0.0)  # (T, B, h, q); rows that see nothing: -inf - -inf -> 0
    row: dict[str, torch.Tensor] = {"lse": lse}
    if entropies[0] is not None:
        row["entropy"] = (share * torch.stack(entropies)).sum(0) - torch.special.xlogy(share, share).sum(0)
    if "max" in c.stats:
        row["max"] = (share * torch.stack(maxima)).amax(0)
    if masses[0] is not None:
        row["mass"] = (share[..., None] * torch.stack(masses)).sum(0)  # (B, h, q, n)
    if "received" in c.stats:
        row["received"] = torch.cat([_column_sums(c, p, r0, r1, w) for p, w in zip(tiles, share)], dim=-1)
    return (share[..., None] * torch.stack(outs)).sum(0), row


def attention_rows(c: _Call, r0: int, r1: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """Attention of query rows ``r0:r1`` in float32, every statistic from one sweep over the score block.

    Returns:
        ``(out [B, H, q, dv], row, pattern [B, H, q, K] or None)``; ``row`` holds ``lse``, ``entropy``,
        ``max`` ``[B, H, q]``, ``mass`` ``[B, H, q, n_sets]``, and ``received`` ``[B, H, hi - lo]`` (this
        block's column sums over the keys ``lo:hi`` it computed) with ``keys``, the tensor ``[lo, hi]``.
    """
    lo, hi = c.keys(r0, r1)
    bsz, n_heads = c.q.shape[0], c.h1 - c.h0
    if hi <= lo:  # no row of the block may see any key
        pattern = c.v.new_zeros(bsz, n_heads, r1 - r0, c.n_k) if c.want_pattern else None
        return c.v.new_zeros(bsz, n_heads, r1 - r0, c.v.shape[3]), _empty_rows(c, r1 - r0), pattern
    pattern = None
    if c.tiles(hi - lo):
        out, row = _key_tiled_rows(c, r0, r1, lo, hi)
    else:
        buf = c.workspace(1, (bsz, n_heads, r1 - r0, hi - lo)) if c.rw is None and not c.want_pattern else None
        p, lse, entropy, p_max = _softmax_block(c, r0, r1, lo, hi, buf)  # p is not kept: buf reuses memory
        row = {} if lse is None else {"lse": lse}
        if c.rw is None:  # statistics of the applied rows straight from the softmax
            if entropy is not None:
                row["entropy"] = entropy
            if "max" in c.stats:
                row["max"] = p_max
            if "received" in c.stats:
                row["received"] = _column_sums(c, p, r0, r1)  # (B, h, w)
            out = _weigh_values(c, p, lo, hi, row)
        else:
            q_rows = None if c.q_set is None else c.q_set[:, r0:r1]
            p = reweight_rows(p, c.rw, {n: m[..., lo:hi] for n, m in c.key_sets.items()}, q_rows)
            out = _normalised_stats(c, p, lo, hi, r0, r1, row)
        if c.want_pattern:  # the rows over every key; padding copies, so a block that spans them all is kept as is
            pattern = p if (lo, hi) == (0, c.n_k) else torch.nn.functional.pad(p, (lo, c.n_k - hi))
    if c.head_scale is not None:
        out = out * c.heads(c.head_scale)
    row["keys"] = torch.tensor([lo, hi])
    return out, row, pattern


def _empty_rows(c: _Call, n: int) -> dict[str, torch.Tensor]:
    """Statistics of ``n`` rows that see no key: lse -inf, entropy, max and mass 0, no received mass."""
    shape = (c.q.shape[0], c.h1 - c.h0, n)
    row = {"lse": c.v.new_full(shape, float("-inf")), "entropy": c.v.new_zeros(shape), "max": c.v.new_zeros(shape),
           "mass": c.v.new_zeros(*shape, len(c.key_sets))}
    return row


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None, scale: float | None, layer_plan: LayerPlan | None,
    key_sets: dict[str, torch.Tensor], query_sets: dict[str, torch.Tensor], stats: tuple[str, ...],
    block_q: int | None, return_pattern: bool = False, received_queries: torch.Tensor | None = None,
    window: int | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
    block_heads: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Blockwise (``block_q`` rows of ``block_heads`` heads at a time) or eager (``block_q=None``) attention.

    See ``kernels.attention``. A reweighting plan (per-head factors) and a returned pattern keep every head in
    each block.
    """
    c = _Call(q, k, v, causal=causal, window=window, key_mask=key_mask, attn_mask=attn_mask, scale=scale,
              softcap=softcap, bias=bias, layer_plan=layer_plan, key_sets=key_sets, query_sets=query_sets,
              stats=stats, received_queries=received_queries, want_pattern=return_pattern)
    bsz, n_heads, n_q = q.shape[:3]
    out = torch.empty(bsz, n_heads, n_q, v.shape[3], device=q.device)  # (B, H, Q, dv), filled block by block
    rows = {n: torch.empty(bsz, n_heads, n_q, device=q.device) for n in ("lse", "entropy", "max") if n in stats}
    mass = torch.empty(bsz, n_heads, n_q, len(key_sets), device=q.device) if "mass" in stats else None
    received = torch.zeros(bsz, n_heads, c.n_k, device=q.device) if "received" in stats else None  # (B, H, K)
    step = n_q if block_q is None else max(1, block_q)
    group = n_heads if block_heads is None or c.rw is not None or return_pattern else max(1, block_heads)
    pattern = None
    for h0 in range(0, n_heads, group):
        c.h0, c.h1 = h0, min(n_heads, h0 + group)
        heads = slice(c.h0, c.h1)
        for r0 in range(0, n_q, step):
            r1 = min(n_q, r0 + step)
            out[:, heads, r0:r1], row, pattern = attention_rows(c, r0, r1)
            for name, t in rows.items():
                t[:, heads, r0:r1] = row[name]
            if mass is not None and key_sets:
                mass[:, heads, r0:r1] = row["mass"]
            if received is not None and "received" in row:
                lo, hi = row["keys"].tolist()
                received[:, heads, lo:hi] += row["received"]
    result = Stats(lse=rows.get("lse"), entropy=rows.get("entropy"), max=rows.get("max"),
                   mass={n: mass[..., i].contiguous() for i, n in enumerate(key_sets)} if mass is not None else {},
                   received=received, pattern=pattern)
    return out.to(q.dtype), result
