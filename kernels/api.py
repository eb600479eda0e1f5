"""``attention()``: the one entry point over the eager, blockwise-torch and Triton implementations.

``attention(q, k, v, ..., plan=..., stats=..., impl="auto")`` is the entry point; ``Plan``, ``LayerPlan``,
``Reweight`` and ``Gate`` (from :mod:`attnlab.kernels.plan`) describe interventions; ``Stats`` (from
:mod:`attnlab.kernels.stats`) holds what a call emits. ``attnlab.kernels`` itself is a namespace package with
no ``__init__.py``, so the repository's ``kernels/`` folder never shadows Hugging Face's ``kernels``
distribution when the repository root is on ``sys.path`` (see docs/architecture.md).
"""

from __future__ import annotations

import torch

from .fused import fused_attention
from .plan import LayerPlan
from .reference import KEY_TILE, reference_attention
from .stats import Stats, check_stat_names

IMPLS = ("auto", "eager", "torch", "triton")
#: Most score elements per row block on the torch path when ``block_q`` is None: 2**22 float32 = 16 MiB.
BLOCK_ELEMENTS = 1 << 22
#: The torch path keeps two score-block buffers alive; each holds at most this fraction of the output's
#: elements, so the call's extra memory stays near 2x the output (SDPA's extra memory is about the output).
BLOCK_OUTPUT_FRACTION = 0.4
#: Score elements a block may always hold, whatever the output's size: 2**19 float32 = 2 MiB. Short inputs get
#: blocks of 64-128 rows instead of 16, where the per-block overhead dominated (see ``default_block_q``).
BLOCK_FLOOR_ELEMENTS = 1 << 19


def default_block_q(batch: int, heads: int, n_q: int, n_keys: int, d_v: int) -> int:
    """Query rows per block on the torch path (at least 16).

    A ``[B, H, rows, K]`` score block holds at most ``BLOCK_ELEMENTS`` values and at most
    ``BLOCK_OUTPUT_FRACTION`` of the ``[B, H, Q, dv]`` output (so extra memory stays linear in N), except that
    ``BLOCK_FLOOR_ELEMENTS`` (2 MiB) are always allowed: at short lengths the output bound alone gave 16-row
    blocks, and per-block overhead dominated.

    Measured on CPU, one thread, every statistic (thread time per call, median of 15): MiniLM's shape (B=1,
    H=12, N=512, d=32) 25.0 ms at 16 rows, 20.4 ms at 64 (SDPA 7.4 ms); GPT-2's (d=64, causal) 24.9 ms at 25
    rows, 19.3 ms at 64 (SDPA 12.7 ms). Long inputs keep the output bound (32k: 25 rows at d=64).
    """
    per_row = max(1, batch * heads * n_keys)
    by_output = int(BLOCK_OUTPUT_FRACTION * n_q * d_v / max(1, n_keys))
    rows = min(BLOCK_ELEMENTS // per_row, max(by_output, BLOCK_FLOOR_ELEMENTS // per_row))
    return max(16, rows)


#: Query rows a score GEMM needs to run near full speed on the CPU. At 12 heads x 8k keys x d 64, one thread:
#: 25 rows 46-52 GFLOP/s, 64 rows 65-71, 128 rows 77-81 (SDPA's fused kernel: 83). Long inputs leave the
#: memory bound only ~25 rows for all heads at once, so their blocks take fewer heads and more rows.
GEMM_ROWS = 128
#: Keys from which a block with fewer than ``GEMM_ROWS`` rows over every head is regrouped (:func:`default_blocks`).
#: Below it the extra blocks and the causal waste of taller blocks cost more than the faster GEMMs save (12 heads,
#: d 64, causal: 512 keys, 85 rows x 12 heads 1.12x SDPA against 145 x 7 1.28x; 1k 1.23x against 1.29x; 2k, 25
#: rows: 1.48x against 1.39x).
REGROUP_MIN_KEYS = 2048
#: Score elements per block (6 MiB float32) past which a block falls out of cache: at 8k keys, one head,
#: non-causal, 128 or 200 rows gave 1.35-1.37x SDPA and 300 rows (or 2 heads x 150) 1.47-1.54x.
BLOCK_CACHE_ELEMENTS = 3 << 19


def default_blocks(batch: int, heads: int, n_q: int, n_keys: int, d_v: int) -> tuple[int, int]:
    """``(rows, heads)`` per block on the torch path: the same score elements as :func:`default_block_q`'s rows
    over every head, regrouped into fewer heads with more rows where that leaves too few rows for fast GEMMs.

    With ``rows >= GEMM_ROWS`` or fewer than ``REGROUP_MIN_KEYS`` keys every head goes in each block. Otherwise
    the block holds ``rows x heads`` head-rows (no more memory than before), capped near
    :data:`BLOCK_CACHE_ELEMENTS` but never below ``GEMM_ROWS`` rows, split into as many heads as keep ``GEMM_ROWS``
    rows each. E.g. 12 heads, d 64: 2k keys -> 150 rows x 2 heads, 8k -> 192 x 1, 16k and more -> 128 x 1.
    """
    rows = default_block_q(batch, heads, n_q, n_keys, d_v)
    if rows >= GEMM_ROWS or n_keys < REGROUP_MIN_KEYS or rows >= n_q or heads == 1:
        return rows, heads
    cache_rows = BLOCK_CACHE_ELEMENTS // max(1, batch * n_keys)
    head_rows = min(rows * heads, max(GEMM_ROWS, cache_rows))
    group = max(1, min(heads, head_rows // GEMM_ROWS))
    return head_rows // group, group


def working_bytes(batch: int, heads: int, n_q: int, n_keys: int, d_v: int, pattern: bool = False) -> int:
    """Bytes one attention call on the torch path holds beyond its inputs (no reweighting plan): the float32 output
    and the block buffers of :func:`default_blocks`' shape (the weights over every key the block sees, the scores
    over one key tile of :data:`~attnlab.kernels.reference.KEY_TILE`), or the whole ``[B, H, Q, K]`` map when
    ``pattern``.

    Linear in the length unless the pattern is asked for: this is the estimate ``attnlab capture`` prints.
    """
    if pattern:
        return 4 * batch * heads * (n_q * d_v + n_q * n_keys)
    rows, group = default_blocks(batch, heads, n_q, n_keys, d_v)
    return 4 * batch * (heads * n_q * d_v + group * min(n_q, rows) * (n_keys + min(n_keys, KEY_TILE)))


def _check_mask(name: str, mask: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> None:
    """A mask must have ``shape`` (``-1`` entries accept 1 or the given size), be bool/integer and sit on ``device``."""
    if mask.dim() != len(shape) or any(n != s and not (s < 0 and n in (1, -s)) for n, s in zip(mask.shape, shape)):
        want = ", ".join(f"1|{-s}" if s < 0 else str(s) for s in shape)
        raise ValueError(f"{name} must be [{want}]; got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"{name} must be a bool mask (True = allowed/member); got {mask.dtype}. "
                         "For an additive float mask (0 / -inf) pass `mask == 0`")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but q is on {device}; move it with .to(q.device)")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask, attn_mask, key_sets,
                  query_sets) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, d]; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must share [B, Hkv, K]; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()):
        raise ValueError(f"q, k, v must be floating point; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"attention needs at least one query and one key; got Q={q.shape[2]}, K={k.shape[2]}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    bsz, n_heads, n_q = q.shape[:3]
    n_k = k.shape[2]
    if key_mask is not None:
        _check_mask("key_mask", key_mask, (bsz, n_k), q.device)
    if attn_mask is not None:
        _check_mask("attn_mask", attn_mask, (-bsz, -n_heads, n_q, n_k), q.device)
    for name, m in key_sets.items():
        # a per-head key set [B, H, K] (e.g. ACT's sinks, detected head by head) is allowed too
        _check_mask(f"key set {name!r}", m, (bsz, n_heads, n_k) if m.dim() == 3 else (bsz, n_k), q.device)
    for name, m in query_sets.items():
        _check_mask(f"query set {name!r}", m, (bsz, n_q), q.device)


def _check_score_terms(q: torch.Tensor, k: torch.Tensor, causal: bool, window, softcap, bias) -> None:
    """``window`` (look-back length), ``softcap`` (tanh cap) and ``bias`` (additive float scores)."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (keys each query sees, itself included) or None; "
                             f"got {window!r}")
        if not causal:
            raise ValueError("window needs causal=True: a sliding window looks back from each query. For another "
                             "band of keys pass it as attn_mask")
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"softcap must be a float (Gemma 2's attn_logit_softcapping, e.g. 50.0) or None; "
                            f"got {type(softcap).__name__}")
        if not (0 < softcap < float("inf")):
            raise ValueError(f"softcap must be positive and finite; got {softcap}")
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a float tensor [1|B, 1|H, Q, K]; got {type(bias).__name__}")
    if not bias.is_floating_point():
        raise ValueError(f"bias must be floating point (added to the scores, e.g. ALiBi or T5's relative bias); got "
                         f"{bias.dtype}. For a boolean mask of allowed pairs pass attn_mask")
    want = (-q.shape[0], -q.shape[1], q.shape[2], k.shape[2])
    if bias.dim() != 4 or any(n != s and not (s < 0 and n in (1, -s)) for n, s in zip(bias.shape, want)):
        raise ValueError(f"bias must be [1|{q.shape[0]}, 1|{q.shape[1]}, {q.shape[2]}, {k.shape[2]}]; got "
                         f"{tuple(bias.shape)}. Expand a per-head [H, Q, K] bias with bias[None]")
    if bias.device != q.device:
        raise ValueError(f"bias is on {bias.device} but q is on {q.device}; move it with .to(q.device)")


def _check_plan(plan, n_heads: int, key_sets: dict, query_sets: dict) -> None:
    if plan is None:
        return
    if not isinstance(plan, LayerPlan):
        raise TypeError(f"plan must be a LayerPlan (one layer's plan) or None; got {type(plan).__name__}. "
                        "For a model-wide Plan pass plan.for_layer(layer_index)")
    if plan.head_scale is not None and len(plan.head_scale) != n_heads:
        raise ValueError(f"plan.head_scale has {len(plan.head_scale)} values for {n_heads} query heads")
    rw = plan.reweight
    if rw is None:
        return
    factors = rw.factors(n_heads)  # raises on a wrong per-head length
    if any(not f >= 0 for f in factors):
        raise ValueError(f"Reweight factors must be >= 0 (a multiplies attention probabilities); got {factors}")
    missing = set(rw.key_set_names()) - key_sets.keys()
    if missing:
        raise ValueError(f"The plan reweights key sets {sorted(missing)} that were not passed in key_sets")
    if rw.queries and rw.queries not in query_sets:
        raise ValueError(f"The plan restricts rows to query set {rw.queries!r}, not passed in query_sets")


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
    impl: str = "auto", return_pattern: bool = False, block_q: int | None = None, block_heads: int | None = None,
    received_queries: torch.Tensor | None = None, window: int | None = None, softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Softmax attention that applies a layer plan and emits statistics in the same pass.

    Args:
        q: ``[B, Hq, Q, d]`` queries (float32, float16 or bfloat16).
        k: ``[B, Hkv, K, d]`` keys, ``Hq`` a multiple of ``Hkv`` (grouped-query attention).
        v: ``[B, Hkv, K, dv]`` values (``dv`` may differ from ``d``).
        causal: query ``i`` sees keys ``<= i + K - Q`` (last query aligned with last key, as in decoding).
        key_mask: ``[B, K]`` bool, ``True`` for real keys (padding mask).
        attn_mask: ``[1|B, 1|Hq, Q, K]`` bool, ``True`` where attending is allowed (any other mask).
        scale: score scale; ``1/sqrt(d)`` by default.
        plan: the :class:`LayerPlan` of this layer, or ``None``.
        stats: names from ``lse``, ``entropy``, ``max``, ``mass`` (per key set), ``received``.
        key_sets: ``{name: [B, K] bool}`` named key sets for ``mass`` and the plan, or ``[B, Hq, K]`` per-head
            sets (e.g. ACT's sinks, found head by head).
        query_sets: ``{name: [B, Q] bool}`` named query sets for the plan.
        impl: ``auto`` (Triton on CUDA, torch elsewhere), ``eager``, ``torch`` or ``triton``.
        return_pattern: also return the ``[B, Hq, Q, K]`` pattern (eager only, materialises it).
        block_q: query rows per block on the torch path; None sizes blocks by :func:`default_blocks`, or, when no
            statistic and no pattern is asked (and no ``softcap``), runs torch's fused kernel with the plan applied
            around it (:mod:`attnlab.kernels.fused`).
        block_heads: heads per block on the torch path (with ``block_q``); None: every head, or with
            ``block_q=None`` what :func:`default_blocks` picks. A reweighting plan keeps every head in a block.
        received_queries: ``[B, Q]`` bool, the query rows ``received`` sums over (``None``: all). Padding rows
            of a padded batch still attend to the real keys; leaving them out keeps ``received`` a property of
            the real tokens alone.
        window: sliding window (Mistral, Gemma 2 local layers): with ``causal=True`` query ``i`` sees only the
            ``window`` keys ending at its position. Key blocks outside every row's window are never computed.
        softcap: logit soft-capping (Gemma 2): scores become ``softcap * tanh(scores / softcap)``, before
            ``bias`` and the masks.
        bias: ``[1|B, 1|Hq, Q, K]`` float added to the (soft-capped) scores: ALiBi (Press et al., 2022) or
            T5's relative position bias (Raffel et al., 2020, section 2.1). ``-inf`` entries mask their pair.

    Statistics are those of the applied attention, so ``lse`` includes the bias and the cap.

    Returns:
        ``(out [B, Hq, Q, dv] in q's dtype, Stats)``.

    Example:
        >>> q = k = v = torch.randn(1, 2, 5, 8)
        >>> out, st = attention(q, k, v, causal=True, stats=("entropy",), impl="torch")
        >>> out.shape, st.entropy.shape
        (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 5]))
    """
    stats = check_stat_names(stats)
    key_sets = dict(key_sets or {})
    query_sets = dict(query_sets or {})
    _check_inputs(q, k, v, key_mask, attn_mask, key_sets, query_sets)
    if received_queries is not None:
        _check_mask("received_queries", received_queries, (q.shape[0], q.shape[2]), q.device)
    _check_plan(plan, q.shape[1], key_sets, query_sets)
    _check_score_terms(q, k, causal, window, softcap, bias)
    for name, size in (("block_q", block_q), ("block_heads", block_heads)):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{name} must be a positive int or None; got {size!r}")
    return run_attention(q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale, plan=plan,
                         stats=stats, key_sets=key_sets, query_sets=query_sets, impl=impl,
                         return_pattern=return_pattern, block_q=block_q, block_heads=block_heads,
                         received_queries=received_queries, window=window, softcap=softcap, bias=bias)


def run_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    key_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None, scale: float | None = None,
    plan: LayerPlan | None = None, stats: tuple[str, ...] = (), key_sets: dict[str, torch.Tensor] | None = None,
    query_sets: dict[str, torch.Tensor] | None = None, impl: str = "auto", return_pattern: bool = False,
    block_q: int | None = None, block_heads: int | None = None, received_queries: torch.Tensor | None = None,
    window: int | None = None, softcap: float | None = None, bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """:func:`attention` without its checks of the inputs, which it has run: the route to a kernel and the call.

    For callers whose inputs are well formed by construction: the recorder hands a model's own ``q``, ``k``, ``v``
    and masks and the key sets it built, at every planned layer of every decoding step, where the checks cost
    ~30 us a call. Arguments as in :func:`attention`, ``stats`` a tuple of known names.

    Returns:
        ``(out [B, Hq, Q, dv] in q's dtype, Stats)``.
    """
    key_sets = {} if key_sets is None else key_sets
    query_sets = {} if query_sets is None else query_sets
    chosen = resolve_impl(impl, q.device)
    if chosen == "torch" and not stats and not return_pattern and softcap is None and block_q is None:
        # nothing but the output is asked: torch's fused kernel, the plan applied around it (kernels.fused)
        return fused_attention(q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale,
                               layer_plan=plan, key_sets=key_sets, query_sets=query_sets, window=window,
                               bias=bias), Stats()
    if block_q is None:
        block_q, block_heads = default_blocks(q.shape[0], q.shape[1], q.shape[2], k.shape[2], v.shape[3])
    if return_pattern and chosen != "eager":
        raise ValueError("return_pattern=True needs impl='eager' (the only path that materialises the pattern)")
    terms = dict(window=window, softcap=None if softcap is None else float(softcap), bias=bias)
    if chosen == "triton":
        from .triton_attention import triton_attention

        return triton_attention(q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale,
                                layer_plan=plan, key_sets=key_sets, query_sets=query_sets, stats=stats,
                                received_queries=received_queries, **terms)
    return reference_attention(
        q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale, layer_plan=plan,
        key_sets=key_sets, query_sets=query_sets, stats=stats,
        block_q=None if chosen == "eager" else block_q, block_heads=None if chosen == "eager" else block_heads,
        return_pattern=return_pattern,
        received_queries=received_queries, **terms,
    )
