"""The kernel stages of the GPU check (``benchmarks/gpu_check.py``, which holds the sizes, the meter and the
orchestration): attnlab's Triton kernel against SDPA's FlashAttention backend and compiled FlexAttention at each
length and dtype, the stats-only long case, and the tile sweep. Every result is checked against the float64
oracle (``benchmarks/attention_oracle.py``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

from attention_oracle import oracle64, over_gate, stat_errors  # benchmarks/, beside this file

if TYPE_CHECKING:
    from gpu_check import Meter, Sizes

STATS = ("lse", "entropy", "max", "mass", "received")


def _inputs(b: int, h: int, n: int, d: int, dtype, device, seed: int = 0):
    """Seeded ``q, k, v [B, H, N, d]`` and key sets ``first`` (position 0) and ``half`` (a random half)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen).to(device, dtype) for _ in range(3))
    half = torch.rand(b, n, generator=gen) < 0.5
    first = torch.zeros(b, n, dtype=torch.bool)
    first[:, 0] = True
    return q, k, v, {"first": first.to(device), "half": half.to(device)}


def _methods(device, dry_run: bool, n: int):
    """``{name: fn(q, k, v, sets) -> (out, Stats or lse or None)}`` for one length."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    from attnlab.kernels.api import attention

    flex = _compiled_flex(flex_attention, dry_run)
    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, n, n, device=device)

    def sdpa(q, k, v, sets):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), None

    def flex_call(q, k, v, sets):
        out, aux = flex(q, k, v, block_mask=mask, return_aux=AuxRequest(lse=True))
        return out, aux.lse

    return {"triton_stats": lambda q, k, v, s: attention(q, k, v, causal=True, stats=STATS, key_sets=s, impl="triton"),
            "triton": lambda q, k, v, s: attention(q, k, v, causal=True, impl="triton"),
            "sdpa_flash": sdpa, "flex": flex_call}


_FLEX: dict = {}


def _compiled_flex(flex_attention, dry_run: bool):
    """One compiled FlexAttention per process (inductor on the GPU; dynamo with the eager backend in a dry run)."""
    if "fn" not in _FLEX:
        import torch

        torch._dynamo.config.cache_size_limit = 64  # one graph per (length, dtype): never fall back to eager
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 64
        # fullgraph: a graph break would run FlexAttention unfused (scores materialised) without saying so
        _FLEX["fn"] = torch.compile(flex_attention, backend="eager" if dry_run else "inductor", dynamic=False,
                                    fullgraph=True)
    return _FLEX["fn"]


def bench_kernels(sizes: Sizes, meter: Meter, dry_run: bool, deadline: float) -> dict:
    """Every method at every dtype and length: time, TFLOP/s, peak memory, errors vs float64."""
    import torch

    results: dict = {}
    flex_spent = 0.0
    for dtype_name in sizes.dtypes:
        dtype = getattr(torch, dtype_name)
        for n in sizes.lengths:
            if time.perf_counter() > deadline:
                results[f"{dtype_name}/{n}"] = {"skipped": "deadline"}
                continue
            b = max(1, sizes.tokens_per_batch // n)
            q, k, v, sets = _inputs(b, sizes.heads, n, sizes.dim, dtype, meter.device)
            ref = oracle64(q[0], k[0], v[0], {name: m[0] for name, m in sets.items()}, causal=True)
            flops = 4 * b * sizes.heads * n * n * sizes.dim / 2
            row = {}
            for name, fn in _methods(meter.device, dry_run, n).items():
                if name == "flex" and flex_spent > sizes.flex_budget_s:
                    row[name] = {"skipped": f"FlexAttention compiles took over {sizes.flex_budget_s:.0f} s"}
                    continue
                began = time.perf_counter()
                seconds = meter.median_s(lambda: fn(q, k, v, sets), reps=2 if dry_run else 5)
                out, extra = fn(q, k, v, sets)
                entry = {"ms": float(f"{seconds * 1e3:.4g}"), "tflops": float(f"{flops / seconds / 1e12:.4g}"),
                         "peak_mb": round_or_none(meter.peak_mb(lambda: fn(q, k, v, sets)))}
                if name == "triton_stats":
                    entry["errors"] = {e: float(f"{x:.3g}") for e, x in stat_errors(out, extra, ref).items()}
                    entry["over_gate"] = over_gate(entry["errors"])
                elif name == "flex":
                    entry["errors"] = {"lse": float(f"{float((extra[0].double() - ref['lse']).abs().max()):.3g}"),
                                       "out": float(f"{float((out[0].double() - ref['out']).abs().max()):.3g}")}
                    flex_spent += time.perf_counter() - began
                row[name] = entry
            results[f"{dtype_name}/{n}"] = row
            print(f"{dtype_name} N={n}: " + json.dumps(row), file=sys.stderr, flush=True)
            del q, k, v, sets, ref
    return results


def tile_sweep(sizes: Sizes, meter: Meter, dry_run: bool) -> dict:
    """attnlab's Triton kernel with every statistic, and without, under each ``(block_m, block_n, num_warps,
    num_stages)`` of ``sizes.tile_configs`` at ``tile_n`` tokens: time, and the statistics' errors against float64
    (a config that does not compile or is wrong is reported, never silently used). Informational: it gates
    nothing, and tells the next change to ``kernels/triton_attention._block_sizes`` what each tile costs."""
    import torch

    from attnlab.kernels.api import attention
    from attnlab.kernels.triton_attention import triton_attention

    n, dtype = sizes.tile_n, getattr(torch, sizes.dtypes[0])
    b = max(1, sizes.tokens_per_batch // n)
    q, k, v, sets = _inputs(b, sizes.heads, n, sizes.dim, dtype, meter.device, seed=2)
    ref = oracle64(q[0], k[0], v[0], {name: m[0] for name, m in sets.items()}, causal=True)
    flops = 4 * b * sizes.heads * n * n * sizes.dim / 2
    plain = dict(causal=True, key_mask=None, attn_mask=None, scale=None, layer_plan=None, query_sets={})
    found: dict = {"n": n, "batch": b, "dtype": sizes.dtypes[0], "configs": {}}
    began = time.perf_counter()
    for bm, bn, warps, stages in sizes.tile_configs:
        name = f"{bm}x{bn}/w{warps}/s{stages}"
        if time.perf_counter() - began > sizes.tiles_budget_s:
            found["configs"][name] = {"skipped": "budget"}
            continue
        tiles = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
        try:
            def with_stats():
                return triton_attention(q, k, v, key_sets=sets, stats=STATS, **plain, **tiles)

            def without():
                return triton_attention(q, k, v, key_sets={}, stats=(), **plain, **tiles)

            out, st = with_stats()
            errors = stat_errors(out, st, ref)
            row = {"stats_ms": float(f"{meter.median_s(with_stats, reps=2 if dry_run else 5) * 1e3:.4g}"),
                   "plain_ms": float(f"{meter.median_s(without, reps=2 if dry_run else 5) * 1e3:.4g}"),
                   "over_gate": over_gate({e: float(f"{x:.3g}") for e, x in errors.items()})}
            row["stats_tflops"] = float(f"{flops / row['stats_ms'] / 1e9:.4g}")
            row["plain_tflops"] = float(f"{flops / row['plain_ms'] / 1e9:.4g}")
        except Exception as err:  # out of shared memory, a compile error: recorded with the config
            row = {"error": f"{type(err).__name__}: {err}"[:300]}
        found["configs"][name] = row
        print(f"tiles {name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    timed = {c: r for c, r in found["configs"].items() if "stats_ms" in r and not r["over_gate"]}
    if timed:
        found["best_stats"] = min(timed, key=lambda c: timed[c]["stats_ms"])
        found["best_plain"] = min(timed, key=lambda c: timed[c]["plain_ms"])
    default = attention(q, k, v, causal=True, stats=STATS, key_sets=sets, impl="triton")  # the shipped tiles
    found["over_gate"] = [f"default tiles: {g}" for g in over_gate(stat_errors(*default, ref))]
    return found


def long_case(sizes: Sizes, meter: Meter) -> dict:
    """Stats-only attention at ``long_n`` tokens, batch 1: time, memory, row identities, float64 rows."""
    import torch

    from attnlab.kernels.api import attention

    n, dtype = sizes.long_n, getattr(torch, sizes.dtypes[0])
    q, k, v, sets = _inputs(1, sizes.heads, n, sizes.dim, dtype, meter.device, seed=1)
    sets["all"] = torch.ones_like(sets["first"])

    def stats_only():
        return attention(q, k, v, causal=True, stats=STATS, key_sets=sets, impl="auto")

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    found = {"n": n, "dtype": sizes.dtypes[0], "impl": "triton" if meter.cuda else "torch",
             "stats_ms": round(meter.median_s(stats_only, reps=3) * 1e3, 2),
             "sdpa_ms": round(meter.median_s(sdpa, reps=3) * 1e3, 2),
             "stats_peak_mb": round_or_none(meter.peak_mb(stats_only)), "sdpa_peak_mb": round_or_none(meter.peak_mb(sdpa))}
    out, st = stats_only()
    rows = torch.linspace(0, n - 1, sizes.long_rows, device=meter.device).round().long()
    ref = oracle64(q[0], k[0], v[0], {name: m[0] for name, m in sets.items()}, causal=True, rows=rows)
    found["errors"] = {e: float(f"{x:.3g}") for e, x in stat_errors(out, st, ref, rows=rows).items()}
    received_sum = st.received.sum(-1).double()  # (1, H): every row's weights sum to one
    found["identities"] = {"received_sum_rel": float(f"{float((received_sum / n - 1).abs().max()):.3g}"),
                           "mass_all": float(f"{float((st.mass['all'] - 1).abs().max()):.3g}"),
                           "finite": bool(torch.isfinite(st.lse).all() and torch.isfinite(st.entropy).all())}
    found["over_gate"] = over_gate(found["errors"]) + [
        f"{name}={val}" for name, val in found["identities"].items() if name != "finite" and not val <= 1e-3]
    if not found["identities"]["finite"]:
        found["over_gate"].append("non-finite lse or entropy")
    return found


def round_or_none(x: float | None) -> float | None:
    """``x`` to 2 decimals, ``None`` kept (a memory figure the dry run cannot measure)."""
    return None if x is None else round(x, 2)
