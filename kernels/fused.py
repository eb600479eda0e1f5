"""Attention that asks for no statistic, on torch's fused kernel, with a layer plan applied around it.

A model generating under an intervention (VAR, ACT, head masking) needs the output and nothing else: no weights,
no statistic. Then the torch path hands the masked softmax to ``torch.nn.functional.scaled_dot_product_attention``
(one fused op: ~10 us for a decoding row on the CPU, where the blockwise path's two dozen small ops cost ~150 us) and
applies the plan around it:

* head scaling multiplies each head's output;
* a :class:`~attnlab.kernels.plan.Reweight` needs each row's weights, so the rows and heads it may change are
  computed explicitly, reweighted by :func:`~attnlab.kernels.reference.reweight_rows` (the blockwise path's own
  function), and written over the fused kernel's output; every other row and head is the fused kernel's. A
  reweighting limited to a query set (VAR: the text after the image, a few rows of a prompt) or to some heads (ACT:
  its calibrated heads, the other factors being 1) thus costs little beyond the plain call.

Masks are the same on both sides: causality and windows (query ``i`` at position ``i + K - Q``), padding, any
``attn_mask`` and an additive ``bias``; a row with nothing to attend to gives 0, as on every attnlab path. The eager
path and the float64 textbook are this route's oracles (``tests/kernels/test_kernel_fused.py``); calls that ask for
statistics, a pattern, a soft cap or explicit blocks take the blockwise path.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
import torch.nn.functional as F

from . import cpu_rows
from .plan import LayerPlan, Reweight
from .reference import MASKED, _additive, _expand_kv, positional_mask, reweight_rows


def _allowed(n_q: int, n_k: int, *, causal: bool, window: int | None, key_mask: torch.Tensor | None,
             attn_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``[B|1, 1|H, Q, K]`` bool pairs a row may attend to, or ``None`` when every pair is allowed."""
    allowed = None
    if (causal and n_q > 1) or window is not None:
        allowed = positional_mask(0, n_q, 0, n_k, n_q, n_k, causal, window, device)[None, None]  # (1, 1, Q, K)
    if key_mask is not None and not bool(key_mask.all()):
        keys = key_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, K)
        allowed = keys if allowed is None else allowed & keys
    if attn_mask is not None:
        allowed = attn_mask.to(torch.bool) if allowed is None else allowed & attn_mask.to(torch.bool)
    return allowed


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    key_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, scale: float | None,
                    layer_plan: LayerPlan | None, key_sets: dict[str, torch.Tensor],
                    query_sets: dict[str, torch.Tensor], window: int | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output ``[B, H, Q, dv]`` (q's dtype) under ``layer_plan``, computed in float32 by torch's fused
    kernel; arguments as in :func:`attnlab.kernels.attention` (no statistic, no soft cap). Rows with nothing to
    attend to give 0, as on every attnlab path."""
    n_heads, n_q, n_k = q.shape[1], q.shape[2], k.shape[2]
    qf = q.float()
    kf, vf = _expand_kv(k.float(), n_heads), _expand_kv(v.float(), n_heads)  # (B, H, K, d)
    allowed = _allowed(n_q, n_k, causal=causal, window=window, key_mask=key_mask, attn_mask=attn_mask,
                       device=q.device)
    # a causal square with no other mask: the fused kernel's own causal path (no mask tensor to read)
    plain_causal = causal and n_q == n_k and window is None and bias is None and allowed is not None and \
        allowed.shape[:2] == (1, 1) and attn_mask is None and (key_mask is None or bool(key_mask.all()))
    if bias is not None:  # float terms: the bias (its -inf entries made finite) plus MASKED where not allowed
        mask = bias.float().clamp_min(MASKED)
        mask = mask if allowed is None else mask + _additive(allowed)
        dead = mask.amax(-1, keepdim=True) <= MASKED / 2  # (B|1, 1|H, Q, 1)
    else:
        mask = allowed
        dead = None if allowed is None or plain_causal else ~allowed.any(-1, keepdim=True)
    rw = None if layer_plan is None else layer_plan.reweight
    heads = [] if rw is None else _changed_heads(rw, n_heads)
    q_rows = None if not heads or not rw.queries else query_sets[rw.queries].to(torch.bool)  # (B, Q)
    if q_rows is not None and bool(q_rows.all()):  # every row of every item (decoding): no row set to apply
        q_rows = None
    rows = None if q_rows is None else q_rows.any(0).nonzero().flatten()  # rows some item reweights (r,)
    if heads and len(heads) == n_heads and (rows is None or rows.numel() == n_q):
        out = _reweighted(qf, kf, vf, mask, scale, rw, key_sets, q_rows)  # every row of every head
    elif heads and len(heads) == n_heads and rows.numel():  # VAR at prefill: the rows after the image, every head
        # (B, H, Q, dv) over a token-major buffer, the layout a model's attention hands back (no copy there)
        out = qf.new_empty(qf.shape[0], n_q, n_heads, vf.shape[-1]).transpose(1, 2)
        first = int(rows[0])
        if first == n_q - rows.numel():  # the rows to redo are the last ones: the fused kernel computes a prefix
            redo = slice(first, None)
            if first and plain_causal:  # a prefix of a causal square: a smaller square
                out[:, :, :first] = F.scaled_dot_product_attention(qf[:, :, :first], kf[:, :, :first],
                                                                   vf[:, :, :first], scale=scale, is_causal=True)
            elif first:
                out[:, :, :first] = F.scaled_dot_product_attention(
                    qf[:, :, :first], kf, vf, scale=scale, attn_mask=_subset(mask, None, slice(0, first), n_heads, n_q))
        else:
            redo = rows
            kept = torch.ones(n_q, dtype=torch.bool, device=q.device)
            kept[rows] = False
            kept = kept.nonzero().flatten()  # (Q - r,) the rows the fused kernel computes
            out[:, :, kept] = F.scaled_dot_product_attention(qf.index_select(2, kept), kf, vf, scale=scale,
                                                             attn_mask=_subset(mask, None, kept, n_heads, n_q))
        # written in place where the rows to redo are a slice (a suffix); an index of rows takes a copy
        dest = out[:, :, redo] if isinstance(redo, slice) else None
        part = _reweighted(_pick(qf, 2, redo), kf, vf, _subset(mask, None, redo, n_heads, n_q), scale, rw, key_sets,
                           _pick(q_rows, 1, redo), out=dest)
        if dest is None:
            out[:, :, redo] = part
    else:
        out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=None if plain_causal else mask, scale=scale,
                                             is_causal=plain_causal)  # (B, H, Q, dv)
        if heads and (rows is None or rows.numel()):  # e.g. ACT: its calibrated heads, on every row
            every_row = rows is None or rows.numel() == n_q  # else rows is the (r,) index of the rows to redo
            # a run of heads is a view (ACT's one calibrated head, decoding: no copies), other subsets an index
            run = heads == list(range(heads[0], heads[-1] + 1))
            hs = slice(heads[0], heads[-1] + 1) if run else torch.tensor(heads, device=q.device)
            sub = _subset(mask, hs, None if every_row else rows, n_heads, n_q)
            if len(heads) < n_heads:  # keys, values, per-head sets and factors of the reweighted heads only
                qf, kf, vf = _pick(qf, 1, hs), _pick(kf, 1, hs), _pick(vf, 1, hs)
                key_sets = {name: m if m.dim() == 2 else _pick(m, 1, hs) for name, m in key_sets.items()}
                rw = _heads_reweight(rw, n_heads)
            out = out.clone() if out.requires_grad else out  # the kernel's output is saved for its backward
            dest = _pick(out, 1, hs) if run and every_row else None  # the heads' rows, written in place
            part = _reweighted(qf if every_row else qf.index_select(2, rows), kf, vf, sub, scale, rw, key_sets,
                               None if q_rows is None or every_row and bool(q_rows.all()) else
                               q_rows if every_row else q_rows.index_select(1, rows), out=dest)
            if dest is None:  # an index of heads or of rows: written back by indexing
                if run or every_row:
                    out[:, hs, slice(None) if every_row else rows] = part
                else:
                    out[:, hs[:, None], rows[None, :]] = part
    if dead is not None and bool(dead.any()):  # in place (keeping the layout) unless a gradient flows through it
        out = out.masked_fill(dead, 0.0) if out.requires_grad else out.masked_fill_(dead, 0.0)
    if layer_plan is not None and layer_plan.head_scale is not None:
        out = out * torch.tensor(layer_plan.head_scale, dtype=out.dtype, device=out.device)[None, :, None, None]
    return out if out.dtype == q.dtype else out.to(q.dtype)


@functools.lru_cache(maxsize=256)
def _changed_heads(rw: Reweight, n_heads: int) -> list[int]:
    """:meth:`Reweight.changed_heads` as a list, worked out once per (frozen) reweighting and head count: a decoding
    step asks at every layer the plan reweights. Read-only."""
    return list(rw.changed_heads(n_heads))


@functools.lru_cache(maxsize=256)
def _heads_reweight(rw: Reweight, n_heads: int) -> Reweight:
    """``rw`` restricted to its changed heads (their factors, in order), for the explicit rows of those heads alone."""
    factors = rw.factors(n_heads)
    return replace(rw, factor=tuple(factors[h] for h in _changed_heads(rw, n_heads)))


def _subset(mask: torch.Tensor | None, heads: torch.Tensor | slice | None, rows: torch.Tensor | slice | None,
            n_heads: int, n_q: int) -> torch.Tensor | None:
    """``mask`` ``[B|1, 1|H, 1|Q, K]`` cut to ``heads`` and ``rows`` (each an index or a slice; ``None``: all); axes of
    size 1 stay whole."""
    if mask is None:
        return None
    if heads is not None and mask.shape[1] == n_heads and n_heads > 1:
        mask = _pick(mask, 1, heads)
    return _pick(mask, 2, rows) if rows is not None and mask.shape[2] == n_q and n_q > 1 else mask


def _pick(t: torch.Tensor, dim: int, index: torch.Tensor | slice) -> torch.Tensor:
    """``t`` cut along ``dim`` to ``index``: a slice (step 1) as a view through ``narrow``, an index tensor by
    ``index_select``."""
    if isinstance(index, slice):
        start, stop, _ = index.indices(t.shape[dim])
        return t.narrow(dim, start, stop - start)
    return t.index_select(dim, index)


def _reweighted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
                rw: Reweight, key_sets: dict[str, torch.Tensor], q_rows: torch.Tensor | None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``q`` ``[B, H, r, d]`` attending to ``k``, ``v`` ``[B, H, K, d|dv]`` (float32) under ``rw``, their weights
    computed and reweighted explicitly (:func:`~attnlab.kernels.reference.reweight_rows`) -> ``[B, H, r, dv]``, written
    into ``out`` (a view of the caller's output) when given.
    ``mask`` ``[B|1, 1|H, 1|r, K]`` (bool, or float terms) or ``None``; ``q_rows`` ``[B, r]`` bool or ``None``. Rows
    with nothing to attend to come out as the mean of the values (0 from the compiled kernel); the caller zeroes
    them. Without a gradient to keep, the compiled CPU kernel (:mod:`~attnlab.kernels.cpu_rows`) does it all in one
    call where it applies."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    done = cpu_rows.reweighted_rows(q, k, v, mask, scale, rw, key_sets, q_rows, out=out)
    if done is not None:
        return done
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # (B, H, r, K)
    if mask is not None:
        s = s.add_(mask if mask.is_floating_point() else _additive(mask))
    p = torch.softmax(s, -1)
    del s  # freed before the reweighting's temporary is made, which then reuses its memory
    p = reweight_rows(p, rw, key_sets, q_rows, inplace=not p.requires_grad)  # (B, H, r, K)
    return p @ v if out is None else out.copy_(p @ v)
