"""Shared test inputs and an independent float64 oracle for the attention kernels.

Used by the test modules and by ``triton_worker.py`` (the child process that runs the Triton cases),
so both sides build bit-identical inputs from a case name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnlab.kernels.api import attention

from attnlab.kernels.plan import Gate, LayerPlan, Reweight

ALL_STATS = ("lse", "entropy", "max", "mass", "received")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PLAN_KINDS = (None, "identity", "factor_one", "head_mask", "head_scale", "reweight", "reweight_target",
              "reweight_queries", "reweight_gate", "combo")


@dataclass(frozen=True)
class Case:
    """One attention call: shapes, masks, inputs and plan, all derived from ``seed``."""

    name: str
    b: int = 2
    h: int = 2
    hkv: int = 2
    q: int = 7
    k: int = 13
    d: int = 16
    dv: int | None = None
    dtype: str = "float32"
    causal: bool = False
    key_mask: str | None = "random"  # None | random | empty_batch (batch 1 has no keys) | left_pad (20, 37 keys)
    attn_mask: str | None = None  # None | random ([B,1,Q,K]) | rows ([1,H,Q,K], some rows fully masked)
    plan: str | None = None
    inputs: str = "random"  # random | large | offset | uniform | strided
    sets: str = "random"  # random | empty_target (the target set is empty in batch 0) | per_head ([B, H, K])
    scale: float | None = None
    seed: int = 0
    block: int | None = None  # Triton tile size for both dims; None = the device default
    received_queries: bool = False  # sum ``received`` over a random subset of query rows (padding left out)
    window: int | None = None  # sliding window (needs causal)
    softcap: float | None = None  # Gemma 2 logit soft-capping
    bias: str | None = None  # None | alibi ([1, H, Q, K]) | t5 (random [B, H, Q, K]) | t5_inf (with -inf entries)


def _factors(h: int) -> tuple[float, ...]:
    """Per-head factors covering ablation (0), damping, no-op (1) and boosting (2.5 can push T negative)."""
    return tuple((0.0, 0.6, 1.0, 2.5)[i % 4] for i in range(h))


def make_plan(kind: str | None, h: int) -> LayerPlan | None:
    """The LayerPlan of a plan kind for ``h`` query heads."""
    # thresholds no small fraction j/k equals: with uniform rows masses are such fractions, and a tie
    # would let rounding decide the gate differently in each implementation
    gate = Gate("image", min_mass=0.4513, part="image_core", min_share=0.4037)
    plans = {
        None: None,
        "identity": LayerPlan(head_scale=(1.0,) * h, reweight=Reweight("sink", 1.0, target="image")),
        "factor_one": LayerPlan(reweight=Reweight("sink", (1.0,) * h, target="image", queries="late")),
        "head_mask": LayerPlan(head_scale=tuple(float(i % 2) for i in range(h))),
        "head_scale": LayerPlan(head_scale=tuple(0.5 + i for i in range(h))),
        "reweight": LayerPlan(reweight=Reweight("sink", 0.3)),
        "reweight_target": LayerPlan(reweight=Reweight("sink", _factors(h), target="image")),
        "reweight_queries": LayerPlan(reweight=Reweight("sink", 0.2, target="image", queries="late")),
        "reweight_gate": LayerPlan(reweight=Reweight("sink", 0.1, target="image", gate=gate)),
        "combo": LayerPlan(head_scale=tuple(2.0 - i for i in range(h)),
                           reweight=Reweight("sink", _factors(h), queries="late", gate=Gate("image", 0.3071))),
    }
    return plans[kind]


def _randn(gen: torch.Generator, shape: tuple[int, ...], strided: bool) -> torch.Tensor:
    """Standard normal ``[B, H, N, d]``; a non-contiguous view of a ``[B, N, H, d]`` buffer when ``strided``."""
    if strided:
        b, h, n, d = shape
        return torch.randn(b, n, h, d, generator=gen).transpose(1, 2)
    return torch.randn(shape, generator=gen)


def make_inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """``(q, k, v, kwargs)`` for ``attention``; kwargs hold masks, sets, plan and all statistics."""
    gen = torch.Generator().manual_seed(case.seed)
    b, h, n_q, n_k = case.b, case.h, case.q, case.k
    strided = case.inputs == "strided"
    q = _randn(gen, (b, h, n_q, case.d), strided)  # (B, H, Q, d)
    k = _randn(gen, (b, case.hkv, n_k, case.d), strided)  # (B, Hkv, K, d)
    v = _randn(gen, (b, case.hkv, n_k, case.dv or case.d), strided)  # (B, Hkv, K, dv)
    if case.inputs == "large":
        q, k = q * 20.0, k * 20.0  # scores of order hundreds: one-hot rows, exp under/overflow traps
    elif case.inputs == "offset":
        q[..., -1], k[..., -1] = 20.0, 20.0  # every score shifted by ~100 with an O(1) spread: lse cancellation traps
    elif case.inputs == "uniform":
        q = torch.zeros_like(q)  # every allowed key gets the same weight
    dtype = DTYPES[case.dtype]
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    key_mask = None
    if case.key_mask is not None:
        key_mask = torch.rand(b, n_k, generator=gen) < 0.8  # (B, K)
        if case.key_mask == "empty_batch":
            key_mask[-1] = False
    attn_mask = None
    if case.attn_mask == "random":
        attn_mask = torch.rand(b, 1, n_q, n_k, generator=gen) < 0.7  # (B, 1, Q, K)
    elif case.attn_mask == "rows":
        attn_mask = torch.rand(1, h, n_q, n_k, generator=gen) < 0.7  # (1, H, Q, K), batch broadcast
        attn_mask[0, 0, ::3] = False  # whole rows with nothing to attend to

    sink = torch.rand(b, n_k, generator=gen) < 0.1  # (B, K)
    sink[:, 0] = True
    image = torch.rand(b, n_k, generator=gen) < 0.5  # (B, K), overlaps the sink set on purpose
    if case.sets == "empty_target":
        image[0] = False
    core = image & (torch.rand(b, n_k, generator=gen) < 0.5)  # (B, K)
    late = torch.rand(b, n_q, generator=gen) < 0.6  # (B, Q)
    kwargs = dict(causal=case.causal, key_mask=key_mask, attn_mask=attn_mask, scale=case.scale,
                  plan=make_plan(case.plan, h), stats=ALL_STATS,
                  key_sets={"sink": sink, "image": image, "image_core": core}, query_sets={"late": late})
    if case.received_queries:  # drawn last, so the other cases' inputs do not change
        rows = torch.rand(b, n_q, generator=gen) < 0.6  # (B, Q)
        rows[0, 0], rows[0, -1] = True, False
        kwargs["received_queries"] = rows
    if case.key_mask == "left_pad":  # left padding that spans whole key tiles, different per batch row
        key_mask[:] = True
        key_mask[0, :20], key_mask[-1, :37] = False, False
    if case.sets == "per_head":  # each head its own sets (ACT's sinks are found head by head)
        sink = torch.rand(b, h, n_k, generator=gen) < 0.15  # (B, H, K)
        sink[..., 0] = True
        image = torch.rand(b, h, n_k, generator=gen) < 0.5
        core = image & (torch.rand(b, h, n_k, generator=gen) < 0.5)
        kwargs["key_sets"] = {"sink": sink, "image": image, "image_core": core}
    extra = dict(window=case.window, softcap=case.softcap, bias=_bias(case, gen))
    kwargs.update({n: x for n, x in extra.items() if x is not None})
    return q, k, v, kwargs


def _bias(case: Case, gen: torch.Generator) -> torch.Tensor | None:
    """ALiBi (Press et al., 2022: slope 2^(-8 h / H) times the query-key distance) or a T5-like random bias."""
    b, h, n_q, n_k = case.b, case.h, case.q, case.k
    if case.bias == "alibi":
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)])  # (H,)
        dist = (torch.arange(n_q)[:, None] + (n_k - n_q) - torch.arange(n_k)[None, :]).abs()  # (Q, K)
        return (-slopes[:, None, None] * dist)[None].to(DTYPES[case.dtype])  # (1, H, Q, K)
    if case.bias in ("t5", "t5_inf"):
        bias = torch.randn(b, h, n_q, n_k, generator=gen) * 2.0  # (B, H, Q, K)
        if case.bias == "t5_inf":
            bias[torch.rand(b, h, n_q, n_k, generator=gen) < 0.2] = -math.inf
            bias[0, 0, n_q - 1] = -math.inf  # a row the bias masks entirely (the last: n_q may be 1)
        return bias
    return None


def _cols(keys: torch.Tensor) -> torch.Tensor:
    """A ``[B, K]`` or per-head ``[B, H, K]`` key set as float64 ``[B, 1|H, 1, K]``."""
    keys = keys.double()
    return keys[:, None, None, :] if keys.dim() == 2 else keys[:, :, None, :]


def _row_mass(p: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``p`` ``[B, H, Q, K]`` summed over the keys in ``keys`` ``[B, K]`` or ``[B, H, K]``."""
    return (p * _cols(keys)).sum(-1)


def _textbook_reweight(p: torch.Tensor, rw: Reweight, key_sets: dict, query_sets: dict) -> torch.Tensor:
    """plan.py's formula, applied row by row in float64: S scaled by a, T\\S boosted, the rest kept."""
    h = p.shape[1]
    src = _cols(key_sets[rw.source])  # (B, 1|H, 1, K)
    tgt = (1 - src) if rw.target is None else _cols(key_sets[rw.target]) * (1 - src)  # (B, 1|H, 1, K)
    a = torch.tensor(rw.factors(h), dtype=torch.float64)[None, :, None]  # (1, H, 1)
    m_s, m_t = (p * src).sum(-1), (p * tgt).sum(-1)  # (B, H, Q)
    apply = m_t > 0
    if rw.queries:
        apply = apply & query_sets[rw.queries][:, None, :]
    if rw.gate is not None:
        within = _row_mass(p, key_sets[rw.gate.within])
        apply = apply & (within >= rw.gate.min_mass)
        if rw.gate.part is not None:
            share = _row_mass(p, key_sets[rw.gate.part]) / within
            apply = apply & (within > 0) & (share >= rw.gate.min_share)
    boost = 1 + (1 - a) * m_s / torch.where(m_t > 0, m_t, 1.0)  # (B, H, Q)
    w_src = torch.where(apply, a, 1.0)[..., None]  # (B, H, Q, 1)
    w_tgt = torch.where(apply, boost, 1.0)[..., None]
    return p * (src * w_src + tgt * w_tgt + (1 - src - tgt))


def textbook_attention(q, k, v, *, causal, key_mask, attn_mask, scale, plan, key_sets, query_sets,
                       stats=ALL_STATS, received_queries=None, window=None, softcap=None,
                       bias=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Softmax attention as in the textbook, in float64, with every statistic; independent of attnlab code.

    Returns:
        ``(out [B, H, Q, dv] float64, {stat name or "mass.<set>": tensor})``.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    heads = torch.arange(h) // (h // k.shape[1])
    k, v = k[:, heads], v[:, heads]  # (B, H, K, d)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * (1 / math.sqrt(d) if scale is None else scale)
    if softcap is not None:  # Gemma 2: cap * tanh(scores / cap), then the bias
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias.double()
    ok = torch.ones(b, h, n_q, n_k, dtype=torch.bool)
    if causal:
        ok = ok & (torch.arange(n_k)[None, :] - torch.arange(n_q)[:, None] <= n_k - n_q)
    if window is not None:  # query i (at position i + K - Q) sees its last `window` keys
        ok = ok & (torch.arange(n_k)[None, :] - torch.arange(n_q)[:, None] > n_k - n_q - window)
    if key_mask is not None:
        ok = ok & key_mask.bool()[:, None, None, :]
    if attn_mask is not None:
        ok = ok & attn_mask.bool()
    scores = scores.masked_fill(~ok, -math.inf)
    top = scores.amax(-1, keepdim=True)  # (B, H, Q, 1)
    top = torch.where(torch.isfinite(top), top, 0.0)
    e = torch.exp(scores - top)
    z = e.sum(-1, keepdim=True)  # (B, H, Q, 1)
    p = torch.where(z > 0, e / torch.where(z > 0, z, 1.0), 0.0)  # (B, H, Q, K)
    lse = torch.where(z > 0, torch.log(z) + top, -math.inf)[..., 0]
    if plan is not None and plan.reweight is not None:
        p = _textbook_reweight(p, plan.reweight, key_sets, query_sets)
    out = p @ v  # (B, H, Q, dv)
    if plan is not None and plan.head_scale is not None:
        out = out * torch.tensor(plan.head_scale, dtype=torch.float64)[None, :, None, None]
    safe = torch.where(p > 0, p, 1.0)
    result = {"lse": lse, "entropy": -(torch.where(p > 0, p * torch.log(safe), 0.0)).sum(-1),
              "max": p.amax(-1),
              "received": (p if received_queries is None else p * received_queries[:, None, :, None]).sum(-2)}
    result.update({f"mass.{n}": _row_mass(p, m) for n, m in key_sets.items()})
    keep = set(stats) - {"mass"}
    return out, {n: t for n, t in result.items() if n in keep or (n.startswith("mass.") and "mass" in stats)}


def hand_example(impl: str):
    """One query over four keys with p = (0.1, 0.2, 0.3, 0.4): logits are log p, scale 1, v = identity."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.ones(1, 1, 1, 1)
    k = torch.log(p).float().reshape(1, 1, 4, 1)
    v = torch.eye(4).reshape(1, 1, 4, 4)
    sets = {"S": torch.tensor([[True, False, False, False]]), "T": torch.tensor([[True, True, True, False]])}
    plan = LayerPlan(head_scale=(2.0,), reweight=Reweight("S", 0.5, target="T"))
    return attention(q, k, v, scale=1.0, plan=plan, key_sets=sets, stats=ALL_STATS, impl=impl)


def check_hand_example(out: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
    """The reweighting of :func:`hand_example` worked out by hand from plan.py's formula."""
    # m_S = 0.1, m_T = p1 + p2 = 0.5 (T \ S), a = 0.5: S -> 0.05, T \ S -> p * (1 + 0.5 * 0.1 / 0.5) = p * 1.1
    want = [0.05, 0.22, 0.33, 0.4]
    close = torch.testing.assert_close
    close(out[0, 0, 0], 2.0 * torch.tensor(want))  # head_scale 2 scales the output only
    close(stats["max"], torch.tensor([[[0.4]]]))
    close(stats["entropy"], torch.tensor([[[-sum(w * math.log(w) for w in want)]]]))
    close(stats["mass.S"], torch.tensor([[[0.05]]]))
    close(stats["mass.T"], torch.tensor([[[0.6]]]))
    close(stats["received"][0, 0], torch.tensor(want))
    close(stats["lse"], torch.zeros(1, 1, 1), atol=1e-6, rtol=0)  # log of sum p = 0


OUT_TOL = {"float32": (2e-5, 2e-5), "float16": (3e-3, 3e-3), "bfloat16": (2.5e-2, 2e-2)}  # (atol, rtol)
STAT_TOL = (5e-5, 5e-5)  # statistics are float32 computed from (exactly upcast) inputs, whatever the dtype


def assert_matches(out: torch.Tensor, stats: dict[str, torch.Tensor], want_out: torch.Tensor,
                   want_stats: dict[str, torch.Tensor], dtype: str, label: str) -> None:
    """Compare an implementation's output and statistics with expected ones (infinities must coincide)."""
    assert set(stats) == set(want_stats), f"{label}: stats {sorted(stats)} != {sorted(want_stats)}"
    atol, rtol = OUT_TOL[dtype]
    torch.testing.assert_close(out.double(), want_out.double(), atol=atol, rtol=rtol, msg=lambda m: f"{label} out: {m}")
    for name, want in want_stats.items():
        got = stats[name].double()
        torch.testing.assert_close(got, want.double(), atol=STAT_TOL[0], rtol=STAT_TOL[1],
                                   msg=lambda m, n=name: f"{label} {n}: {m}")


# Cases run by every implementation; Triton runs them in a child process (see test_kernel_triton.py).
# Keep B*H*ceil(Q/64)*ceil(K/64) small: the interpreter costs ~10 ms per program and tile.
CASES = [
    Case("baseline"),
    Case("identity", plan="identity"),
    Case("factor_one", plan="factor_one"),
    Case("head_mask", plan="head_mask", b=1, h=4, hkv=4),
    Case("head_scale_mqa_dv", plan="head_scale", b=1, h=4, hkv=1, d=24, dv=40),
    # Reweighting is ill-conditioned when the target's mass is far below fp32's range (scores > ~87 nats
    # under the row max), so "large" inputs go with plans that do not reweight and "offset" ones with those that do.
    Case("large_scores", plan="head_mask", inputs="large", seed=1),
    Case("reweight_all_offset", plan="reweight", inputs="offset", seed=1),
    Case("reweight_target_gqa", plan="reweight_target", b=1, h=4, hkv=2, seed=2),
    Case("reweight_queries_strided", plan="reweight_queries", inputs="strided", seed=3),
    Case("reweight_gate_rows", plan="reweight_gate", attn_mask="rows", seed=4, q=11, k=20),
    Case("combo_empty_batch", plan="combo", key_mask="empty_batch", attn_mask="random", seed=5),
    Case("causal_q_lt_k", plan="reweight_target", causal=True, q=5, k=13, seed=6),
    Case("causal_q_gt_k", plan="reweight", causal=True, q=13, k=5, seed=7),
    Case("len1", plan="reweight_target", q=1, k=1, key_mask=None, seed=8),
    Case("len1_causal", plan="reweight_gate", q=1, k=9, causal=True, seed=9),
    Case("empty_target", plan="reweight_target", sets="empty_target", seed=10),
    Case("uniform", plan="reweight_gate", inputs="uniform", key_mask=None, seed=11),
    Case("huge_scale", scale=1e3, seed=12),
    Case("fp16", plan="combo", dtype="float16", seed=13),
    Case("bf16", plan="combo", dtype="bfloat16", seed=14),
    Case("bf16_large", plan="head_scale", dtype="bfloat16", inputs="large", seed=15),
    Case("fp16_offset", plan="reweight_target", dtype="float16", inputs="offset", seed=19),
    Case("multi_tile_causal", plan="combo", causal=True, b=1, q=40, k=70, block=16, seed=16),
    Case("multi_tile_gate", plan="reweight_gate", attn_mask="random", b=1, hkv=1, q=33, k=50, block=16,
         causal=True, seed=17),
    Case("multi_tile_q_gt_k", plan="reweight", causal=True, b=1, q=50, k=20, block=16, seed=18),
    Case("received_rows", plan="reweight_target", received_queries=True, seed=20),
    Case("received_rows_multi_tile", plan="combo", causal=True, q=40, k=40, block=16, received_queries=True,
         seed=21),
    # sliding windows, soft-capping, additive biases, per-head key sets and padding that fills whole key tiles
    Case("window", plan="reweight_target", causal=True, window=4, q=11, k=20, seed=22),
    Case("window_multi_tile", plan="combo", causal=True, window=20, b=1, q=70, k=90, block=16,
         received_queries=True, seed=23),
    Case("window_1_q_gt_k", plan="reweight", causal=True, window=1, q=13, k=5, seed=32),
    Case("softcap_large", plan="head_mask", softcap=30.0, inputs="large", seed=24),
    Case("softcap_gate", plan="reweight_gate", softcap=2.0, seed=25),
    Case("alibi_causal", plan="reweight_target", bias="alibi", causal=True, q=13, k=13, seed=26),
    Case("t5_bias_batch", plan="combo", bias="t5", attn_mask="random", seed=27),
    Case("t5_bias_inf", plan="reweight_target", bias="t5_inf", seed=33),
    Case("softcap_alibi_fp16", plan="reweight_target", softcap=20.0, bias="alibi", dtype="float16", seed=28),
    Case("per_head_sets_gqa", plan="combo", sets="per_head", h=4, hkv=2, seed=29),
    Case("per_head_multi_tile", plan="reweight_gate", sets="per_head", b=1, q=40, k=50, block=16, causal=True,
         seed=30),
    Case("left_pad_multi_tile", plan="reweight_target", key_mask="left_pad", q=50, k=70, block=16,
         received_queries=True, seed=31),
]
CASES_BY_NAME = {c.name: c for c in CASES}
