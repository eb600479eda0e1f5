"""``attention()``: the one entry point over the eager, blockwise-torch and Triton implementations."""

from __future__ import annotations

import torch

from .plan import LayerPlan
from .reference import reference_attention
from .stats import Stats, check_stat_names

IMPLS = ("auto", "eager", "torch", "triton")
DEFAULT_BLOCK_Q = 128


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask, attn_mask, key_sets) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, d]; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share [B, Hkv, K]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    n_k = k.shape[2]
    if key_mask is not None and tuple(key_mask.shape) != (k.shape[0], n_k):
        raise ValueError(f"key_mask must be [B, K] = {(k.shape[0], n_k)}; got {tuple(key_mask.shape)}")
    if attn_mask is not None and (attn_mask.dim() != 4 or attn_mask.shape[-2:] != (q.shape[2], n_k)):
        raise ValueError(f"attn_mask must be [B, 1|H, Q, K]; got {tuple(attn_mask.shape)}")
    for name, m in (key_sets or {}).items():
        if tuple(m.shape) != (k.shape[0], n_k):
            raise ValueError(f"key set {name!r} must be a [B, K] = {(k.shape[0], n_k)} bool mask; got {tuple(m.shape)}")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` on CUDA, ``torch`` elsewhere; validates the name."""
    if impl not in IMPLS:
        raise ValueError(f"Unknown attention impl {impl!r}; choose from {IMPLS}")
    if impl == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return impl


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    key_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None, scale: float | None = None,
    plan: LayerPlan | None = None, stats: tuple[str, ...] | None = None,
    key_sets: dict[str, torch.Tensor] | None = None, query_sets: dict[str, torch.Tensor] | None = None,
    impl: str = "auto", return_pattern: bool = False, block_q: int = DEFAULT_BLOCK_Q,
) -> tuple[torch.Tensor, Stats]:
    """Softmax attention that applies a layer plan and emits statistics in the same pass.

    Args:
        q: ``[B, Hq, Q, d]`` queries (float32, float16 or bfloat16).
        k: ``[B, Hkv, K, d]`` keys, ``Hq`` a multiple of ``Hkv`` (grouped-query attention).
        v: ``[B, Hkv, K, d]`` values.
        causal: query ``i`` sees keys ``<= i + K - Q`` (last query aligned with last key, as in decoding).
        key_mask: ``[B, K]`` bool, ``True`` for real keys (padding mask).
        attn_mask: ``[B, 1|Hq, Q, K]`` bool, ``True`` where attending is allowed (any other mask).
        scale: score scale; ``1/sqrt(d)`` by default.
        plan: the :class:`LayerPlan` of this layer, or ``None``.
        stats: names from ``lse``, ``entropy``, ``max``, ``mass`` (per key set), ``received``.
        key_sets: ``{name: [B, K] bool}`` named key sets for ``mass`` and the plan.
        query_sets: ``{name: [B, Q] bool}`` named query sets for the plan.
        impl: ``auto`` (Triton on CUDA, torch elsewhere), ``eager``, ``torch`` or ``triton``.
        return_pattern: also return the ``[B, Hq, Q, K]`` pattern (eager only, materialises it).
        block_q: query rows per block on the torch path.

    Returns:
        ``(out [B, Hq, Q, d] in q's dtype, Stats)``.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> out, st = attention(q, k, v, causal=True, stats=("entropy",), impl="torch")
        >>> out.shape, st.entropy.shape
        (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 5]))
    """
    stats = check_stat_names(stats)
    key_sets = dict(key_sets or {})
    query_sets = dict(query_sets or {})
    _check_inputs(q, k, v, key_mask, attn_mask, key_sets)
    if plan is not None and plan.reweight is not None:
        rw = plan.reweight
        needed = {rw.source, rw.target, *(() if rw.gate is None else (rw.gate.within, rw.gate.part))} - {None}
        missing = needed - key_sets.keys()
        if missing:
            raise ValueError(f"The plan reweights key sets {sorted(missing)} that were not passed in key_sets")
        if rw.queries and rw.queries not in query_sets:
            raise ValueError(f"The plan restricts rows to query set {rw.queries!r}, not passed in query_sets")
    chosen = resolve_impl(impl, q.device)
    if return_pattern and chosen != "eager":
        raise ValueError("return_pattern=True needs impl='eager' (the only path that materialises the pattern)")
    if chosen == "triton":
        from .triton_attention import triton_attention

        return triton_attention(q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale,
                                layer_plan=plan, key_sets=key_sets, query_sets=query_sets, stats=stats)
    return reference_attention(
        q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale, layer_plan=plan,
        key_sets=key_sets, query_sets=query_sets, stats=stats,
        block_q=None if chosen == "eager" else block_q, return_pattern=return_pattern,
    )
