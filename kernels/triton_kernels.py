"""Triton kernels behind ``impl="triton"``: a one-pass forward with statistics and a key-parallel column-sum pass.

The forward is FlashAttention-2's online softmax (one program per query block and batch*head) in base-2
logits. Every running sum is kept per *partition* of the keys: ``S`` (the plan's source set), ``T`` (its
target minus ``S``) and ``R`` (the rest). Reweighting multiplies a whole partition by one per-row weight,
so the epilogue gets the output, entropy, max and per-set masses of the reweighted rows exactly as linear
combinations of the partition accumulators, with no subtraction that could cancel. Entropy rides along as
``t = sum p*d`` (``d`` = logit minus the running max), re-based like the normaliser when the max moves
(online softmax: Milakov & Gimelshein 2018; FlashAttention-2, Dao 2023, §3.1).

Importing this module fixes Triton's mode: without CUDA the kernels are decorated for the CPU interpreter.
"""

from __future__ import annotations

import os

import torch

_NEED_INTERPRETER = not torch.cuda.is_available()
if _NEED_INTERPRETER:
    # ``triton.jit`` fixes the mode when a function is decorated, and triton.language decorates its own
    # helpers (tl.sum, tl.max, tl.zeros) on import: setting only the knob after ``import triton`` leaves
    # those compiled and any kernel calling them fails under the interpreter. So the variable is set
    # around the first import; the knob then keeps the mode for this process, and the variable (which
    # triton mirrors from the knob) is restored so the choice does not leak into child processes.
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton

        triton.knobs.runtime.interpret = True
    finally:
        if _previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _previous

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

if _NEED_INTERPRETER and type(tl.standard.sum).__name__ != "InterpretedFunction":
    raise ImportError(
        "triton was imported before attnlab's Triton kernels on a machine without CUDA, so its language "
        "helpers were built for compiled mode and cannot run in the CPU interpreter. Start Python with "
        "TRITON_INTERPRET=1, or import attnlab.kernels.triton_attention before anything imports triton."
    )

#: True when the kernels below run under Triton's CPU interpreter.
INTERPRET = bool(triton.knobs.runtime.interpret)
LOG2E = 1.4426950408889634  # host side: logits are scaled by scale * log2(e) to use exp2
LN2 = tl.constexpr(0.6931471805599453)  # compiled kernels only read constexpr globals; keep it right of a tensor
LOG2E_C = tl.constexpr(1.4426950408889634)


@triton.jit
def _scores(q, kt, offs_m, offs_n, b, attn_off, bias_off, KEYMASK, ATTN, BIAS, saq, sak, sbq, sbk, NQ, NK, qk_scale,
            cap2, WINDOW, CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr, HAS_ATTN: tl.constexpr,
            SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Base-2 logits of one tile, ``-inf`` where not allowed: (s2, valid), both (BLOCK_M, BLOCK_N).

    Soft-capping (``cap2`` is the cap in base-2 units) comes first, then the additive bias, then the masks.
    """
    s2 = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BM, BN)
    if SOFTCAP:  # cap * tanh(s / cap), tanh(x) = 1 - 2 / (e^(2x) + 1): saturates to +-1 without inf / inf
        s2 = cap2 * (1.0 - 2.0 / (tl.exp2(s2 * (2.0 * LOG2E_C / cap2)) + 1.0))
    in_k = offs_n < NK
    valid = in_k[None, :] & (offs_m < NQ)[:, None]  # (BM, BN)
    if HAS_BIAS:
        bias = tl.load(BIAS + bias_off + offs_m[:, None] * sbq + offs_n[None, :] * sbk, mask=valid, other=0.0)
        s2 = s2 + bias.to(tl.float32) * LOG2E_C
        valid = valid & (s2 > float("-inf"))  # a -inf bias masks its pair
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (NK - NQ))
    if HAS_WINDOW:
        valid = valid & (offs_n[None, :] > offs_m[:, None] + (NK - NQ) - WINDOW)
    if HAS_KEYMASK:
        km = tl.load(KEYMASK + b * NK + offs_n, mask=in_k, other=0)  # (BN,)
        valid = valid & (km != 0)[None, :]
    if HAS_ATTN:
        am = tl.load(ATTN + attn_off + offs_m[:, None] * saq + offs_n[None, :] * sak, mask=valid, other=0)
        valid = valid & (am != 0)
    return tl.where(valid, s2, float("-inf")), valid


@triton.jit
def _key_tiles(start_m, b, KSPAN, NQ, NK, WINDOW, CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr,
               HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key range ``[lo, hi)`` (lo a tile start) that some row of the query tile at ``start_m`` may see."""
    lo = start_m * 0  # a tensor, so both bounds keep one type through the branches
    hi = lo + NK
    if CAUSAL:
        hi = tl.minimum(hi, tl.maximum(start_m + BLOCK_M + NK - NQ, 0))
    if HAS_WINDOW:
        lo = tl.maximum(lo, start_m + NK - NQ - WINDOW + 1)
    if HAS_KEYMASK:  # the batch row's padding before its first and after its last real key
        lo = tl.maximum(lo, tl.load(KSPAN + 2 * b))
        hi = tl.minimum(hi, tl.load(KSPAN + 2 * b + 1))
    return lo // BLOCK_N * BLOCK_N, hi


@triton.jit
def _query_tiles(start_n, b, KSPAN, NQ, NK, WINDOW, CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query range ``[lo, hi)`` (lo a tile start) whose rows may see some key of the key tile at ``start_n``."""
    lo = start_n * 0
    hi = lo + NQ
    if CAUSAL:  # row i sees keys <= i + NK - NQ
        lo = tl.maximum(lo, start_n - (NK - NQ))
    if HAS_WINDOW:  # row i sees keys > i + NK - NQ - WINDOW
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 + WINDOW - (NK - NQ))
    if HAS_KEYMASK:
        real = (start_n < tl.load(KSPAN + 2 * b + 1)) & (start_n + BLOCK_N > tl.load(KSPAN + 2 * b))
        hi = tl.where(real, hi, lo)
    return lo // BLOCK_M * BLOCK_M, hi


@triton.jit
def _accumulate(l, t, x, acc, c, p, pd, v, members, alpha, shift, HAS_SETS: tl.constexpr):
    """Rescale one partition's running sums by ``alpha`` and add this tile (p, p*d already restricted to it)."""
    t = alpha * (t + shift * l) + tl.sum(pd, 1)  # re-base sum p*d on the new max: d shifts by `shift` for every key seen
    l = alpha * l + tl.sum(p, 1)
    x = tl.maximum(alpha * x, tl.max(p, 1))
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")  # (BM, BDV)
    if HAS_SETS:
        c = c * alpha[:, None] + tl.dot(p, members, input_precision="ieee")  # (BM, NSP)
    return l, t, x, acc, c


@triton.jit
def _plogp(w, l_x, t_x, log2l):
    """Unnormalised ``sum p' ln p'`` of one partition scaled by ``w`` (0 where ``w <= 0``, as the reference)."""
    w_pos = tl.where(w > 0, w, 1.0)
    return tl.where(w > 0, w * (l_x * tl.log(w_pos) + (t_x - l_x * log2l) * LN2), 0.0)


@triton.jit
def _column(c, cols, index):
    """Column ``index`` of a (BM, NSP) tile as a (BM,) vector."""
    return tl.sum(tl.where(cols[None, :] == index, c, 0.0), 1)


@triton.jit
def _row_weights(l_s, l_t, c, cols, l_safe, a, qrow, gate_min_mass, gate_min_share,
                 GATE_W: tl.constexpr, GATE_P: tl.constexpr):
    """Per-row weights of the S and T partitions (1 where the reweighting does not apply)."""
    apply = (l_t > 0) & qrow
    if GATE_W >= 0:
        within = _column(c, cols, GATE_W) / l_safe  # unmodified mass: c holds the raw partition sums
        ok = within >= gate_min_mass
        if GATE_P >= 0:
            part = _column(c, cols, GATE_P) / l_safe
            ok = ok & (part >= gate_min_share * within) & (within > 0)
        apply = apply & ok
    w_s = tl.where(apply, a, 1.0)
    w_t = tl.where(apply, 1.0 + (1.0 - a) * l_s / tl.where(l_t > 0, l_t, 1.0), 1.0)
    return w_s, w_t


@triton.jit
def attention_fwd_kernel(
    Q, K, V, OUT, KEYMASK, KSPAN, PART, SETS, ATTN, BIAS, QROW, FACTOR, HSCALE, ROWS, MASS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, sab, sah, saq, sak,
    sbb, sbh, sbq, sbk, spb, sph, ssb, ssh,
    H, GROUP, NQ, NK, DK, DV, NSETS, qk_scale, cap2, WINDOW, gate_min_mass, gate_min_share,
    CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr, HAS_ATTN: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_RW: tl.constexpr,
    HAS_QROW: tl.constexpr, HAS_SETS: tl.constexpr, GATE_W: tl.constexpr, GATE_P: tl.constexpr,
    NSP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr,
):
    """One (query block, batch*head) program. ROWS is (6, B, H, Q): lse, entropy, max, lse2, w_S, w_T.

    Key tiles no row of the block may see (causal, window, or outside the batch row's real keys KSPAN
    ``(B, 2)`` int32 ``[first, last + 1)``) are never loaded. PART and SETS are per head when ``sph``/``ssh`` != 0.

    One long function on purpose: a Triton program is one JIT kernel, and the one pass over the key tiles keeps
    the running max, sum, entropy terms and key-set masses in registers across its loop.
    """
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    b64 = b.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    cols = tl.arange(0, NSP)
    in_m = offs_m < NQ
    q = tl.load(Q + b64 * sqb + h * sqh + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                mask=in_m[:, None] & (offs_dk < DK)[None, :], other=0.0)  # (BM, BDK)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b64 * skb + (h // GROUP) * skh
    v_base = V + b64 * svb + (h // GROUP) * svh
    attn_off = b64 * sab + h * sah
    bias_off = b64 * sbb + h * sbh
    part_base = PART + b64 * spb + h * sph
    sets_base = SETS + b64 * ssb + h * ssh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_s = tl.zeros([BLOCK_M], tl.float32)
    t_s, x_s, l_t, t_t, x_t, l_r, t_r, x_r = l_s, l_s, l_s, l_s, l_s, l_s, l_s, l_s
    acc_s = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    acc_t, acc_r = acc_s, acc_s
    c_s = tl.zeros([BLOCK_M, NSP], tl.float32)
    c_t, c_r = c_s, c_s
    members = tl.zeros([BLOCK_N, NSP], tl.float32)  # loaded per tile when HAS_SETS; a typed placeholder otherwise

    lo, hi = _key_tiles(start_m, b64, KSPAN, NQ, NK, WINDOW, CAUSAL, HAS_KEYMASK, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_k = offs_n < NK
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                     mask=in_k[None, :] & (offs_dk < DK)[:, None], other=0.0)  # (BDK, BN)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=in_k[:, None] & (offs_dv < DV)[None, :], other=0.0)  # (BN, BDV)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s2, valid = _scores(q, kt, offs_m, offs_n, b64, attn_off, bias_off, KEYMASK, ATTN, BIAS, saq, sak, sbq, sbk,
                            NQ, NK, qk_scale, cap2, WINDOW, CAUSAL, HAS_KEYMASK, HAS_ATTN, SOFTCAP, HAS_BIAS,
                            HAS_WINDOW)
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # FA2: a row masked so far uses max 0
        alpha = tl.exp2(m_i - m_safe)
        shift = tl.where(m_i == float("-inf"), 0.0, m_i - m_safe)
        p = tl.exp2(s2 - m_safe[:, None])  # (BM, BN), 0 where not allowed
        pd = p * tl.where(valid, s2 - m_safe[:, None], 0.0)  # avoids 0 * (-inf)
        if HAS_SETS:
            members = tl.load(sets_base + offs_n[:, None] * NSP + cols[None, :], mask=in_k[:, None],
                              other=0.0)  # (BN, NSP)
        if HAS_RW:
            part = tl.load(part_base + offs_n, mask=in_k, other=0)
            in_s = (part == 1)[None, :]
            in_t = (part == 2)[None, :]
            l_s, t_s, x_s, acc_s, c_s = _accumulate(l_s, t_s, x_s, acc_s, c_s, tl.where(in_s, p, 0.0),
                                                    tl.where(in_s, pd, 0.0), v, members, alpha, shift, HAS_SETS)
            l_t, t_t, x_t, acc_t, c_t = _accumulate(l_t, t_t, x_t, acc_t, c_t, tl.where(in_t, p, 0.0),
                                                    tl.where(in_t, pd, 0.0), v, members, alpha, shift, HAS_SETS)
            in_r = (part == 0)[None, :]
            p = tl.where(in_r, p, 0.0)
            pd = tl.where(in_r, pd, 0.0)
        l_r, t_r, x_r, acc_r, c_r = _accumulate(l_r, t_r, x_r, acc_r, c_r, p, pd, v, members, alpha, shift,
                                                HAS_SETS)
        m_i = m_new

    l = l_s + l_t + l_r
    live = l > 0
    l_safe = tl.where(live, l, 1.0)
    log2l = tl.log2(l_safe)
    w_s = tl.full([BLOCK_M], 1.0, tl.float32)
    w_t = w_s
    if HAS_RW:
        qrow = in_m
        if HAS_QROW:
            qrow = tl.load(QROW + b64 * NQ + offs_m, mask=in_m, other=0) != 0
        w_s, w_t = _row_weights(l_s, l_t, c_s + c_t + c_r, cols, l_safe, tl.load(FACTOR + h), qrow,
                                gate_min_mass, gate_min_share, GATE_W, GATE_P)
    out = (w_s[:, None] * acc_s + w_t[:, None] * acc_t + acc_r) / l_safe[:, None] * tl.load(HSCALE + h)
    tl.store(OUT + b64 * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
             out.to(OUT.dtype.element_ty), mask=in_m[:, None] & (offs_dv < DV)[None, :])

    plogp_r = (t_r - l_r * log2l) * LN2  # the rest keeps weight 1
    ent = -(_plogp(w_s, l_s, t_s, log2l) + _plogp(w_t, l_t, t_t, log2l) + plogp_r) / l_safe
    mx = tl.maximum(tl.maximum(tl.maximum(w_s, 0.0) * x_s, tl.maximum(w_t, 0.0) * x_t), x_r) / l_safe
    lse2 = m_i + log2l  # -inf for a fully masked row, whose m_i stayed -inf
    row_ptr = ROWS + (b64 * H + h) * NQ + offs_m
    plane = tl.num_programs(1).to(tl.int64) * NQ  # the stride between the six (B, H, Q) planes
    tl.store(row_ptr, lse2 * LN2, mask=in_m)
    tl.store(row_ptr + plane, tl.where(live, ent, 0.0), mask=in_m)
    tl.store(row_ptr + 2 * plane, tl.where(live, mx, 0.0), mask=in_m)
    tl.store(row_ptr + 3 * plane, lse2, mask=in_m)
    tl.store(row_ptr + 4 * plane, w_s, mask=in_m)
    tl.store(row_ptr + 5 * plane, w_t, mask=in_m)
    if HAS_SETS:
        mass = (w_s[:, None] * c_s + w_t[:, None] * c_t + c_r) / l_safe[:, None]  # (BM, NSP)
        tl.store(MASS + ((b64 * H + h) * NQ + offs_m[:, None]) * NSP + cols[None, :], mass,
                 mask=in_m[:, None] & (cols < NSETS)[None, :])


@triton.jit
def attention_received_kernel(
    Q, K, KEYMASK, KSPAN, PART, ATTN, BIAS, ROWS, ROWMASK, RECV,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, sab, sah, saq, sak, sbb, sbh, sbq, sbk, spb, sph,
    H, GROUP, NQ, NK, DK, qk_scale, cap2, WINDOW,
    CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr, HAS_ATTN: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_RW: tl.constexpr, HAS_ROWMASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, UPCAST: tl.constexpr,
):
    """One (key block, batch*head) program: column sums of the applied attention, recomputing p from lse2.

    RECV is (B, H, K). Deterministic (no atomics); the structure of FlashAttention-2's dK/dV pass (Dao 2023, §3.1.2).
    ROWMASK (B, Q) uint8, when HAS_ROWMASK: only rows marked 1 are summed (padding rows are left out).
    """
    start_n = tl.program_id(0) * BLOCK_N
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    b64 = b.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    in_k = offs_n < NK
    kt = tl.load(K + b64 * skb + (h // GROUP) * skh + offs_n[None, :] * skn + offs_dk[:, None] * skd,
                 mask=in_k[None, :] & (offs_dk < DK)[:, None], other=0.0)  # (BDK, BN)
    if UPCAST:
        kt = kt.to(tl.float32)
    part = tl.load(PART + b64 * spb + h * sph + offs_n, mask=in_k, other=0)
    row_base = ROWS + (b64 * H + h) * NQ
    plane = tl.num_programs(1).to(tl.int64) * NQ
    col = tl.zeros([BLOCK_N], tl.float32)
    lo, hi = _query_tiles(start_n, b64, KSPAN, NQ, NK, WINDOW, CAUSAL, HAS_KEYMASK, HAS_WINDOW, BLOCK_M, BLOCK_N)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_m = offs_m < NQ
        q = tl.load(Q + b64 * sqb + h * sqh + offs_m[:, None] * sqm + offs_dk[None, :] * sqd,
                    mask=in_m[:, None] & (offs_dk < DK)[None, :], other=0.0)  # (BM, BDK)
        if UPCAST:
            q = q.to(tl.float32)
        s2, valid = _scores(q, kt, offs_m, offs_n, b64, b64 * sab + h * sah, b64 * sbb + h * sbh, KEYMASK, ATTN,
                            BIAS, saq, sak, sbq, sbk, NQ, NK, qk_scale, cap2, WINDOW, CAUSAL, HAS_KEYMASK, HAS_ATTN,
                            SOFTCAP, HAS_BIAS, HAS_WINDOW)
        lse2 = tl.load(row_base + 3 * plane + offs_m, mask=in_m, other=float("-inf"))
        live = lse2 > float("-inf")
        p = tl.exp2(s2 - tl.where(live, lse2, 0.0)[:, None])  # (BM, BN)
        p = tl.where(valid & live[:, None], p, 0.0)
        if HAS_ROWMASK:
            counted = tl.load(ROWMASK + b64 * NQ + offs_m, mask=in_m, other=0)
            p = tl.where((counted != 0)[:, None], p, 0.0)
        if HAS_RW:
            w_s = tl.load(row_base + 4 * plane + offs_m, mask=in_m, other=1.0)
            w_t = tl.load(row_base + 5 * plane + offs_m, mask=in_m, other=1.0)
            p = p * tl.where((part == 1)[None, :], w_s[:, None], tl.where((part == 2)[None, :], w_t[:, None], 1.0))
        col += tl.sum(p, 0)
    tl.store(RECV + (b64 * H + h) * NK + offs_n, col, mask=in_k)
