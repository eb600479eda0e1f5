"""``impl="triton"``: the host side of the fused attention kernels (packing a plan, launching, Stats).

On a machine without CUDA the kernels run under Triton's CPU interpreter (chosen in
``triton_kernels`` before decoration), so ``attention(..., impl="triton")`` works in CPU tests while
``impl="auto"`` keeps picking the torch path there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .plan import LayerPlan, Reweight
from .stats import Stats
from .triton_kernels import INTERPRET, LOG2E, attention_fwd_kernel, attention_received_kernel

# No ``import triton`` here: triton_kernels must be the first to import it (it picks the interpreter).

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REST, _SOURCE, _TARGET = 0, 1, 2  # key partition codes the kernels read from PART


@dataclass(frozen=True)
class _PlanArgs:
    """A layer plan and the key/query sets packed as kernel arguments (unused pointers are placeholders)."""

    part: torch.Tensor  # (B, 1|H, K) uint8 partition code of each key (per head for per-head key sets)
    sets: torch.Tensor  # (B, 1|H, K, NSP) float32 0/1 membership of each named key set
    qrow: torch.Tensor  # (B, Q) uint8 rows the reweighting may touch
    factor: torch.Tensor  # (H,) float32 per-head factor a
    head_scale: torch.Tensor  # (H,) float32 per-head output multiplier
    has_rw: bool
    has_qrow: bool
    n_sets: int
    nsp: int
    gate_w: int = -1
    gate_p: int = -1
    gate_min_mass: float = 0.0
    gate_min_share: float = 0.0

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """Batch and head strides of PART and SETS (head stride 0 when shared by the heads)."""
        return (self.part.stride(0), self.part.stride(1) if self.part.shape[1] > 1 else 0,
                self.sets.stride(0), self.sets.stride(1) if self.sets.shape[1] > 1 else 0)


def _next_pow2(n: int) -> int:
    """The smallest power of two >= max(n, 16) (tl.arange needs powers of two, tl.dot dims >= 16)."""
    return max(16, 1 << max(n - 1, 0).bit_length())


def _heads(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A ``[B, K]`` (shared) or ``[B, H, K]`` (per-head) key set as bool ``[B, 1|H, K]``."""
    mask = mask.to(device, torch.bool)
    return mask[:, None] if mask.dim() == 2 else mask


def _u8(mask: torch.Tensor) -> torch.Tensor:
    """A bool/integer mask as uint8 0/1 without copying bool storage."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).to(torch.uint8)


def _active_reweight(layer_plan: LayerPlan | None, n_heads: int) -> Reweight | None:
    """The plan's reweighting, or None when it cannot change anything (all factors 1)."""
    rw = None if layer_plan is None else layer_plan.reweight
    if rw is None or not rw.changed_heads(n_heads):
        return None
    return rw


def _pack_plan(layer_plan: LayerPlan | None, key_sets: dict[str, torch.Tensor], query_sets: dict[str, torch.Tensor],
               want_mass: bool, shape: tuple[int, int, int, int], device: torch.device) -> _PlanArgs:
    """Kernel arguments for a plan; ``shape`` is ``(B, H, Q, K)``."""
    bsz, n_heads, _, n_k = shape
    rw = _active_reweight(layer_plan, n_heads)
    names = list(key_sets) if (want_mass or (rw is not None and rw.gate is not None)) else []
    nsp = _next_pow2(len(names))
    kw: dict = {}
    part = torch.zeros(bsz, 1, n_k, dtype=torch.uint8, device=device)  # (B, 1, K)
    qrow = part[:, 0, :1]
    if rw is not None:
        src = _heads(key_sets[rw.source], device)  # (B, 1|H, K)
        tgt = ~src if rw.target is None else _heads(key_sets[rw.target], device) & ~src  # (B, 1|H, K)
        part = torch.where(src, _SOURCE, torch.where(tgt, _TARGET, _REST)).to(torch.uint8)
        if rw.queries:
            qrow = _u8(query_sets[rw.queries].to(device)).contiguous()  # (B, Q)
        if rw.gate is not None:
            g = rw.gate
            kw = dict(gate_w=names.index(g.within), gate_min_mass=float(g.min_mass),
                      gate_p=-1 if g.part is None else names.index(g.part), gate_min_share=float(g.min_share))
    per_head = any(key_sets[n].dim() == 3 for n in names)
    sets = torch.zeros(bsz, n_heads if per_head else 1, n_k, nsp if names else 1, dtype=torch.float32,
                       device=device)  # (B, 1|H, K, NSP)
    for i, name in enumerate(names):
        sets[..., i] = _heads(key_sets[name], device).to(torch.float32)
    scale = layer_plan.head_scale if layer_plan is not None and layer_plan.head_scale is not None else (1.0,) * n_heads
    return _PlanArgs(
        part=part.contiguous(), sets=sets, qrow=qrow,
        factor=torch.tensor(rw.factors(n_heads) if rw else (1.0,) * n_heads, dtype=torch.float32, device=device),
        head_scale=torch.tensor(scale, dtype=torch.float32, device=device),
        has_rw=rw is not None, has_qrow=bool(rw is not None and rw.queries), n_sets=len(names), nsp=nsp, **kw,
    )


def _attn_mask_args(attn_mask: torch.Tensor | None, placeholder: torch.Tensor, bias: bool = False
                    ) -> tuple[torch.Tensor, tuple]:
    """The general mask as uint8 (or the float ``bias``) with broadcast batch/head strides set to 0 (no copy)."""
    if attn_mask is None:
        return placeholder, (0, 0, 0, 0)
    m = (attn_mask if attn_mask.dtype in SUPPORTED_DTYPES else attn_mask.float()) if bias else _u8(attn_mask)
    sb, sh, sq, sk = m.stride()
    return m, (0 if m.shape[0] == 1 else sb, 0 if m.shape[1] == 1 else sh, sq, sk)


def _block_sizes(d_max: int, itemsize: int, has_rw: bool, block_m: int | None,
                 block_n: int | None) -> tuple[int, int]:
    """Tile sizes: 64x64 when interpreting (its cost is per program and iteration, not per element).

    On a GPU, key tiles shrink to 32 rows once a K or V row exceeds 128 bytes and query tiles once a
    row exceeds 256 bytes or three P@V accumulators of d > 64 are alive (reweighting). This keeps
    shared memory under the 99 KiB of sm_86/89 (compiled for sm_80: fp32 d=64 took 98 KiB at 64x64,
    57 KiB at 64x32; fp32 d=128 took 107 KiB at 64x32, 90 KiB at 32x32).
    """
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if val is not None and (val < 16 or val & (val - 1)):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum); got {val}")
    if INTERPRET:
        return block_m or 64, block_n or 64
    row_bytes = d_max * itemsize
    return (block_m or (32 if row_bytes > 256 or (has_rw and d_max > 64) else 64),
            block_n or (64 if row_bytes <= 128 else 32))


def _key_span(key_mask: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` int32 ``[first real key, last real key + 1)`` of each batch row (``[K, 0)`` when none)."""
    if key_mask is None:
        return placeholder
    real = key_mask.to(torch.bool)  # (B, K)
    n_k = real.shape[1]
    idx = torch.arange(n_k, device=real.device)
    first = torch.where(real, idx, n_k).amin(1)
    last = torch.where(real, idx + 1, 0).amax(1)
    return torch.stack([first, last], 1).to(torch.int32).contiguous()


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"impl='triton' needs q, k, v of one dtype among {SUPPORTED_DTYPES}; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}. Cast them, or use impl='torch'")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"impl='triton' runs compiled on CUDA here, but q is on {q.device}; move the tensors "
                         "to the GPU or use impl='torch'")


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, key_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None, scale: float | None, layer_plan: LayerPlan | None,
    key_sets: dict[str, torch.Tensor], query_sets: dict[str, torch.Tensor], stats: tuple[str, ...],
    block_m: int | None = None, block_n: int | None = None, received_queries: torch.Tensor | None = None,
    window: int | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Fused attention with a layer plan and one-pass statistics; semantics of ``reference_attention``.

    Args:
        q: ``[B, H, Q, d]``; k: ``[B, Hkv, K, d]``; v: ``[B, Hkv, K, dv]`` (one dtype: fp32, fp16 or bf16).
        causal: query ``i`` sees keys ``<= i + K - Q``.
        key_mask: ``[B, K]`` True for real keys, or None.
        attn_mask: ``[B|1, 1|H, Q, K]`` True where attending is allowed, or None (read tile by tile).
        scale: score scale, ``1/sqrt(d)`` when None.
        layer_plan: head scaling and reweighting of this layer, or None.
        key_sets: ``{name: [B, K] or per-head [B, H, K] bool}``; query_sets: ``{name: [B, Q] bool}``.
        stats: names from ``lse, entropy, max, mass, received``.
        block_m, block_n: tile sizes (powers of two >= 16); defaults suit the device.
        received_queries: ``[B, Q]`` bool, the query rows ``received`` sums over, or None (all).
        window: with ``causal``, each query sees only its last ``window`` keys; softcap: ``cap * tanh(s / cap)``;
        bias: ``[B|1, H|1, Q, K]`` float added to the scores (see ``kernels.attention``).
        num_warps, num_stages: Triton launch options of both kernels (``None``: Triton's defaults), for tuning on a
            GPU (``benchmarks/gpu_check.py``'s tile sweep); the interpreter ignores them.

    Returns:
        ``(out [B, H, Q, dv] in q's dtype, Stats)`` with float32 statistics.
    """
    _check_tensors(q, k, v)
    bsz, n_heads, n_q, d_k = q.shape
    n_kv, n_k, d_v = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d_k) if scale is None else float(scale)
    pa = _pack_plan(layer_plan, key_sets, query_sets, "mass" in stats, (bsz, n_heads, n_q, n_k), q.device)
    bm, bn = _block_sizes(max(d_k, d_v), q.element_size(), pa.has_rw, block_m, block_n)
    bdk, bdv = _next_pow2(d_k), _next_pow2(d_v)
    km = _u8(key_mask).contiguous() if key_mask is not None else pa.part
    am, am_strides = _attn_mask_args(attn_mask, pa.part)
    bias_t, bias_strides = _attn_mask_args(bias, pa.sets, bias=True)
    span = _key_span(key_mask, pa.factor)
    # the interpreter rounds fp32 -> bf16 stores toward zero, so it writes fp32 and torch rounds
    out = torch.empty(bsz, n_heads, n_q, d_v, device=q.device, dtype=torch.float32 if INTERPRET else q.dtype)
    rows = torch.empty(6, bsz, n_heads, n_q, device=q.device, dtype=torch.float32)  # lse, H, max, lse2, w_S, w_T
    mass = torch.empty(bsz, n_heads, n_q, pa.nsp, device=q.device, dtype=torch.float32) if pa.n_sets else rows
    flags = dict(CAUSAL=causal, HAS_KEYMASK=key_mask is not None, HAS_ATTN=attn_mask is not None,
                 SOFTCAP=softcap is not None, HAS_BIAS=bias is not None, HAS_WINDOW=window is not None,
                 HAS_RW=pa.has_rw, UPCAST=INTERPRET, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=bdk,
                 **{n: v for n, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None})
    terms = (scale * LOG2E, (softcap or 1.0) * LOG2E, window or 0)
    attention_fwd_kernel[(-(-n_q // bm), bsz * n_heads)](
        q, k, v, out, km, span, pa.part, pa.sets, am, bias_t, pa.qrow, pa.factor, pa.head_scale, rows, mass,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *am_strides, *bias_strides, *pa.strides,
        n_heads, n_heads // n_kv, n_q, n_k, d_k, d_v, pa.n_sets, *terms, pa.gate_min_mass, pa.gate_min_share,
        HAS_QROW=pa.has_qrow, HAS_SETS=pa.n_sets > 0, GATE_W=pa.gate_w, GATE_P=pa.gate_p, NSP=pa.nsp,
        BLOCK_DV=bdv, **flags,
    )
    result = Stats(
        lse=rows[0].clone() if "lse" in stats else None,
        entropy=rows[1].clone() if "entropy" in stats else None,
        max=rows[2].clone() if "max" in stats else None,
        mass={n: mass[..., i].contiguous() for i, n in enumerate(key_sets)} if "mass" in stats else {},
    )
    if "received" in stats:
        result.received = torch.empty(bsz, n_heads, n_k, device=q.device, dtype=torch.float32)  # (B, H, K)
        rq = _u8(received_queries).contiguous() if received_queries is not None else pa.qrow
        attention_received_kernel[(-(-n_k // bn), bsz * n_heads)](
            q, k, km, span, pa.part, am, bias_t, rows, rq, result.received, *q.stride(), *k.stride(), *am_strides,
            *bias_strides, *pa.strides[:2], n_heads, n_heads // n_kv, n_q, n_k, d_k, *terms,
            HAS_ROWMASK=received_queries is not None,
            **flags,
        )
    return out.to(q.dtype), result
