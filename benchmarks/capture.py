"""Capture cost: time and attention-allocated memory of attnlab capture vs a plain forward, HF and TransformerLens.

Two measurements, each one command under ~3 minutes on a loaded 2-core machine:

* ``overhead`` (the targets): MiniLM (pretrained, shipped) and a GPT-2-shaped model (12 layers x 12 heads x 768,
  random weights) at ``--tokens`` (512). Every mode of one model runs in one process, interleaved round by
  round (the order rotates), so load changes hit every mode alike; each ratio is a median over ``--repeats``.
* ``sweep`` (the curves): one GPT-2-small block (1 layer x 12 heads x 768, positions up to the longest length)
  at ``--lengths`` (1k-8k), where attention dominates. Full-pattern modes stop at ``--pattern-max`` (4k): the
  map alone is ``12 x N^2 x 4`` bytes (768 MiB at 4k). Writes the figure ``--figure`` (plotly HTML).

How it is measured:

* Time: CPU time of the thread (``time.thread_time``) with torch on one intra-op thread. On a shared 2-core
  machine wall time mostly measures the scheduler (a descheduled OpenMP worker stalls every op); thread CPU
  time counts the work done, and the wall-clock ratios are printed beside it.
* Memory: tensor bytes counted by the allocator itself, from ``torch.profiler``'s memory events (every
  allocation and free, in order), not process RSS (which also holds the model, the libraries and whatever
  glibc keeps). ``attn_mb`` is the largest, over the attention modules' forward calls, of the peak of live
  tensor bytes during the call above the bytes live when it began: q/k/v projections, scores, blocks,
  statistics and patterns kept by the capture. ``peak_mb`` is the peak of the whole forward above its start
  and ``extra_mb`` that peak minus the plain forward's.

Modes: ``plain`` (SDPA forward), ``stats`` (attnlab stats-only capture), ``pattern`` (attnlab full patterns),
``hf_attn`` (HF eager with ``output_attentions=True``), ``tl_cache`` (TransformerLens ``run_with_cache`` on a
TransformerBridge of the same checkpoint; overhead only; its forward includes GPT-2's unembedding), ``tl_stats`` and
``tl_pattern`` (attnlab capture on that bridge; their ratios to ``tl_cache`` are printed too).

Usage: ``python benchmarks/capture.py overhead [--tokens 512] [--repeats 5]`` or
``python benchmarks/capture.py sweep [--lengths 1024 2048 4096 8192] [--figure docs/figures/capture_scaling.html]``.
The last line is one JSON object: ratios to ``plain`` (overhead), or per-length values and the fitted memory
exponents ``attn_mb ~ N^p`` and ``extra_mb ~ N^p`` (sweep; stats-only must stay below 1.2).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODES = ("plain", "stats", "pattern", "hf_attn", "tl_cache", "tl_stats", "tl_pattern")
SWEEP_MODES = ("plain", "stats", "pattern", "hf_attn")
ATTN_LABEL = "attnlab.bench.attention"
BIG_BUDGET = 2**40  # pattern capture is what is measured here, so the capture budget must not refuse it


# -- models ------------------------------------------------------------------------------------------------
def gpt2_model(n_layer: int = 12, n_head: int = 12, n_embd: int = 768, n_positions: int = 1024):
    """A GPT-2 base model (no LM head) with seeded random weights, SDPA attention, in eval mode."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions)
    cfg._attn_implementation = "sdpa"
    return GPT2Model(cfg).eval()


def eager_twin(model):
    """The same weights running HF's eager attention (the only one that returns attention weights)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation_internal = "eager"
    return twin


def attention_modules(model) -> list:
    """The attention module of every layer, as attnlab's HF backend finds them."""
    from attnlab.hooks.hf_stacks import find_stacks

    stack = next(s for s in find_stacks(model) if s.name == "main")
    return [model.get_submodule(name) for name in stack.attn_names.values()]


def mode_calls(model, ids: torch.Tensor, modes, tl_bridge=None) -> dict[str, tuple]:
    """``{mode: (call, attention modules)}``: a forward call (capture modes build the Trace as users would) and
    the attention modules whose calls ``attn_mb`` watches (none for the TransformerLens bridge)."""
    from attnlab.core.capture import Capture
    from attnlab.hooks import attach

    eager = eager_twin(model) if "hf_attn" in modes else None
    mods = attention_modules(model)

    def captured(cap):
        def call():
            with attach(model, cap) as rec:
                model(input_ids=ids)
            rec.trace()
        return call

    def bridge_captured(cap):
        def call():
            with attach(tl_bridge, cap) as rec:
                tl_bridge(ids)
            rec.trace()
        return call

    def bridge_stats() -> Capture:
        """Every statistic, or all but lse on a bridge whose hook_attn_scores carries the weights (BERT, OPT)."""
        try:
            bridge_captured(Capture(stats=True))()
            return Capture(stats=True)
        except ValueError as err:
            if "not its scores" not in str(err):
                raise
            print("bridge: no scores at hook_attn_scores, tl_stats without lse", flush=True)
            return Capture(stats=("entropy", "max", "received"))

    table = {"plain": (lambda: model(input_ids=ids), mods), "stats": (captured(Capture(stats=True)), mods),
             "pattern": (captured(Capture(pattern=True, budget_bytes=BIG_BUDGET)), mods),
             "hf_attn": (lambda: eager(input_ids=ids, output_attentions=True),
                         attention_modules(eager) if eager is not None else []),
             "tl_cache": (lambda: tl_bridge.run_with_cache(ids), []),
             "tl_stats": (bridge_captured(bridge_stats()) if "tl_stats" in modes else None, []),
             "tl_pattern": (bridge_captured(Capture(pattern=True, budget_bytes=BIG_BUDGET)), [])}
    return {m: table[m] for m in modes}


# -- memory ------------------------------------------------------------------------------------------------
def allocator_peaks(call, modules) -> dict[str, float]:
    """Run ``call`` once under torch.profiler's memory profile: ``{"peak_mb", "attn_mb"}`` from allocator events.

    ``attn_mb`` is the largest rise of live tensor bytes inside one forward call of ``modules`` (0 without them).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    handles, open_ranges = [], []
    for module in modules:
        handles.append(module.register_forward_pre_hook(
            lambda *_: open_ranges.append(record_function(ATTN_LABEL).__enter__())))
        handles.append(module.register_forward_hook(lambda *_: open_ranges.pop().__exit__(None, None, None)))
    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
    finally:
        for h in handles:
            h.remove()
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    ranges = [(e.start_ns(), e.start_ns() + e.duration_ns()) for e in events if e.name() == ATTN_LABEL]
    times, live, level = [], [], 0
    for t, nbytes in mem:
        level += nbytes
        times.append(t)
        live.append(level)
    attn = 0
    for start, end in ranges:
        before = [lv for t, lv in zip(times, live) if t < start]
        inside = [lv for t, lv in zip(times, live) if start <= t <= end]
        entry = before[-1] if before else 0
        attn = max(attn, max(inside, default=entry) - entry)
    return {"peak_mb": max(live, default=0) / 2**20, "attn_mb": attn / 2**20}


def fit_exponent(lengths: list[int], values: list[float]) -> float | None:
    """Least-squares slope of ``log value`` on ``log N``: the ``p`` of ``value ~ N^p`` (None: < 2 points)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values) if v and v > 0]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


# -- timing ------------------------------------------------------------------------------------------------
def timed(call) -> tuple[float, float]:
    """``(thread CPU seconds, wall seconds)`` of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    with torch.no_grad():
        call()
    return time.thread_time() - cpu, time.perf_counter() - wall


def interleaved_times(calls: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per mode; modes alternate within each round, the order rotating."""
    names = list(calls)
    for name in names:  # warm-up
        timed(calls[name])
    got: dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            got[name].append(timed(calls[name]))
    return {n: {"cpu_s": statistics.median(c for c, _ in v), "wall_s": statistics.median(w for _, w in v)}
            for n, v in got.items()}


def overhead(args: argparse.Namespace) -> dict:
    """Ratios to ``plain`` of every mode at ``args.tokens`` on MiniLM and the GPT-2-shaped model."""
    from transformers import AutoModel

    from attnlab.zoo.minilm import minilm_dir

    out: dict = {"tokens": args.tokens, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as root:
        for name in ("minilm", "gpt2-shaped"):
            if name == "minilm":
                path = str(minilm_dir())
                model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
            else:
                model = gpt2_model()
                path = str(Path(root) / "gpt2")
                model.save_pretrained(path)
            bridge = _bridge(path) if any(m.startswith("tl_") for m in args.modes) else None
            ids = torch.randint(5, 1000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
            calls = mode_calls(model, ids, args.modes, bridge)
            times = interleaved_times({m: c for m, (c, _) in calls.items()}, args.repeats)
            rows = {}
            for mode, (call, mods) in calls.items():
                rows[mode] = {**times[mode], **allocator_peaks(call, mods)}
                print(name, mode, {k: round(v, 4) for k, v in rows[mode].items()}, flush=True)
            plain = rows["plain"]
            for mode, row in rows.items():
                out[f"{name}/{mode}"] = {
                    "time_x": round(row["cpu_s"] / plain["cpu_s"], 2), "wall_x": round(row["wall_s"] / plain["wall_s"], 2),
                    "attn_mb": round(row["attn_mb"], 1), "extra_mb": round(row["peak_mb"] - plain["peak_mb"], 1)}
            out[f"{name}/plain"].update(cpu_s=round(plain["cpu_s"], 4), wall_s=round(plain["wall_s"], 4))
            for mode in ("tl_stats", "tl_pattern"):  # the bar: capture on a bridge vs its own run_with_cache
                if mode in rows and "tl_cache" in rows:
                    out[f"{name}/{mode}_vs_tl_cache"] = round(rows[mode]["cpu_s"] / rows["tl_cache"]["cpu_s"], 2)
    return out


def _bridge(path: str):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(path, device="cpu")


def sweep(args: argparse.Namespace) -> dict:
    """Time and memory per mode and length on one GPT-2-small block; fitted memory exponents."""
    model = gpt2_model(n_layer=1, n_positions=max(args.lengths))
    rows: dict[str, dict[int, dict]] = {m: {} for m in args.modes}
    for n in sorted(args.lengths):
        ids = torch.randint(5, 1000, (1, n), generator=torch.Generator().manual_seed(0))
        modes = [m for m in args.modes if n <= args.pattern_max or m not in ("pattern", "hf_attn")]
        calls = mode_calls(model, ids, modes)
        for mode, (call, mods) in calls.items():
            mem = allocator_peaks(call, mods)  # also the warm-up of the timed call below
            cpu, wall = timed(call)
            rows[mode][n] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "attn_mb": round(mem["attn_mb"], 2),
                             "peak_mb": round(mem["peak_mb"], 2)}
            print(f"N={n:5d} {mode:8s} {rows[mode][n]}", flush=True)
        del calls
    out: dict = {"model": "GPT-2 block, 1 layer x 12 heads x 768", "lengths": sorted(args.lengths), "rows": rows}
    for mode, by_n in rows.items():
        ns = sorted(by_n)
        out[f"{mode}/attn_mb_exponent"] = _round(fit_exponent(ns, [by_n[n]["attn_mb"] for n in ns]))
        out[f"{mode}/cpu_s_exponent"] = _round(fit_exponent(ns, [by_n[n]["cpu_s"] for n in ns]))
        if mode != "plain":
            extra = [by_n[n]["peak_mb"] - rows["plain"][n]["peak_mb"] for n in ns if n in rows["plain"]]
            out[f"{mode}/extra_mb"] = [round(x, 1) for x in extra]
            out[f"{mode}/extra_mb_exponent"] = _round(fit_exponent(ns[:len(extra)], extra))
            out[f"{mode}/time_x"] = [round(by_n[n]["cpu_s"] / rows["plain"][n]["cpu_s"], 2) for n in ns]
    if args.figure:
        write_figure(rows, Path(args.figure))
        out["figure"] = args.figure
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def write_figure(rows: dict[str, dict[int, dict]], path: Path) -> None:
    """Time and attention-allocated memory vs length, log-log, one line per mode (plotly HTML)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("CPU time of a forward (s)", "attention-allocated MiB"))
    for mode, by_n in rows.items():
        ns = sorted(by_n)
        for col, key in ((1, "cpu_s"), (2, "attn_mb")):
            fig.add_trace(go.Scatter(x=ns, y=[by_n[n][key] for n in ns], mode="lines+markers", name=mode,
                                     legendgroup=mode, showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(type="log", title_text="tokens N")
    fig.update_yaxes(type="log")
    fig.update_layout(title="Capture cost vs length: one GPT-2-small block (12 heads x 64), CPU, 1 thread",
                      template="plotly_white", width=1000, height=420)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    over = sub.add_parser("overhead", help="ratios to a plain forward at one length, MiniLM and GPT-2-shaped")
    over.add_argument("--tokens", type=int, default=512)
    over.add_argument("--repeats", type=int, default=5)
    over.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    swp = sub.add_parser("sweep", help="time and memory vs length, fitted exponents, figure")
    swp.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    swp.add_argument("--pattern-max", type=int, default=4096, help="longest length for full-pattern modes")
    swp.add_argument("--modes", nargs="+", choices=SWEEP_MODES, default=list(SWEEP_MODES))
    swp.add_argument("--figure", default="docs/figures/capture_scaling.html", help="plotly HTML ('' for none)")
    args = parser.parse_args(argv)
    if "plain" not in args.modes:
        parser.error("--modes must include plain: every ratio is to the plain forward")
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = overhead(args) if args.what == "overhead" else sweep(args)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
