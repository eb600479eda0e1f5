"""The GPU check behind ``benchmarks/gpu_check.sh``: kernel tests, kernel benchmarks, a long case, a model capture.

On one CUDA GPU (H100-class, under 8 minutes) it

1. checks it really runs compiled Triton on CUDA (a CPU-only torch, no GPU, ``TRITON_INTERPRET`` set or the
   kernels decorated for the interpreter all fail at once: non-zero exit, one JSON line, no CPU fallback);
2. runs the kernel tests (``tests/kernels/test_kernel_triton.py``, ``test_kernel_api.py``) on CUDA;
3. times attnlab's Triton kernel (with every statistic, and without any) against SDPA's FlashAttention backend
   and compiled FlexAttention, causal, ``H=16, d=128``, ``batch = 16k / N`` (the FlashAttention-2 paper's
   setting, Dao 2023, section 4.1) at N = 1k..32k in bf16 and fp16: median time, TFLOP/s
   (``4 N^2 d`` per head, halved for causal), peak ``torch.cuda.max_memory_allocated`` above the inputs, and
   the error of every statistic and the output against a float64 oracle computed here;
4. runs stats-only attention at 128k tokens (bf16, batch 1): time, memory, identities every row obeys
   (weights sum to one, so ``received`` sums to N per head and ``mass.all`` is 1) and float64 rows;
5. captures statistics from a GPT-2-sized random model (12 x 12 x 768, batch 8 x 1024, bf16): times of a plain
   SDPA forward, stats capture and full patterns (each to the CPU, and kept on the GPU), HF ``output_attentions``, the
   Trace's shape, and each output's error against a float32 run of the same model (capture may add at most half
   again the error SDPA and HF eager have themselves in that dtype);
6. sweeps the kernel's tiles and launch options (``Sizes.tile_configs``: block_m, block_n, num_warps, num_stages) at
   8k tokens in bf16, with and without statistics: time, TFLOP/s and float64 errors per config, the fastest
   correct config of each (informational, for ``kernels/triton_attention._block_sizes`` on this chip; the shipped
   tiles must stay within the error gate);
7. prints one JSON line (``ok`` true only when every stage ran and every gate held) and exits 0 or 1.

``--dry-run`` runs the same stages on the CPU at tiny sizes: Triton under its interpreter, FlexAttention
through ``torch.compile(backend="eager")``, pytest ``--collect-only`` for the kernel tests, perf_counter for
CUDA events and no memory figures (``null``); every other line of code is the one the GPU run executes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from attention_oracle import over_gate  # benchmarks/, beside this file
from gpu_kernel_stages import bench_kernels, long_case, round_or_none, tile_sweep  # beside this file

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TESTS = ("tests/kernels/test_kernel_triton.py", "tests/kernels/test_kernel_api.py")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of a run (the GPU run, or the dry run's tiny ones)."""

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)
    dtypes: tuple[str, ...] = ("bfloat16", "float16")
    heads: int = 16
    dim: int = 128
    tokens_per_batch: int = 16384
    long_n: int = 131072
    long_rows: int = 64  # float64 rows checked at long_n
    model: dict = field(default_factory=dict)  # GPT2Config overrides; {} is GPT-2 small
    capture_batch: tuple[int, int] = (8, 1024)
    kernels_deadline_s: float = 330.0  # after this many seconds the kernel benchmark skips what is left
    tile_n: int = 8192  # the tile sweep's length (batch 16k / N, causal, first dtype)
    tile_configs: tuple[tuple[int, int, int, int], ...] = (  # (block_m, block_n, num_warps, num_stages)
        (64, 32, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 128, 4, 2))
    tiles_budget_s: float = 90.0  # past this the sweep stops and marks the configs left
    flex_budget_s: float = 120.0  # FlexAttention compiles once per (length, dtype); past this it is left out


DRY = Sizes(lengths=(80,), heads=2, dim=32, tokens_per_batch=256, long_n=256, long_rows=8,
            model=dict(n_layer=2, n_head=2, n_embd=64, n_positions=64), capture_batch=(2, 32), tile_n=64,
            tile_configs=((16, 16, 4, 2), (32, 16, 8, 3)))


class CheckFailed(RuntimeError):
    """A condition that makes the whole check meaningless (no GPU, interpreter mode): stop at once."""


# -- device ------------------------------------------------------------------------------------------------
class Meter:
    """Times and peak memory on the check's device (CUDA events; perf_counter and no memory on the CPU)."""

    def __init__(self, device):
        import torch

        self.torch, self.device, self.cuda = torch, device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def median_s(self, call, reps: int) -> float:
        """Median seconds of ``call``: ``triton.testing.do_bench`` on CUDA (L2 flushed between calls)."""
        call()  # warm-up (compiles)
        self.sync()
        if self.cuda:
            from triton.testing import do_bench

            return do_bench(call, warmup=10, rep=100, return_mode="median") / 1e3
        got = []
        for _ in range(reps):
            start = time.perf_counter()
            call()
            self.sync()
            got.append(time.perf_counter() - start)
        return statistics.median(got)

    def peak_mb(self, call) -> float | None:
        """Peak bytes allocated during ``call`` above those allocated before it (MiB), CUDA only."""
        if not self.cuda:
            call()
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = call()
        torch.cuda.synchronize()
        del result
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def preflight(dry_run: bool) -> dict:
    """The device and software the check runs on; raises CheckFailed where it would not test the GPU path."""
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if dry_run:
        info["device"] = "cpu (dry run)"
        return info
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise CheckFailed("TRITON_INTERPRET is set: the check must run compiled Triton; unset it")
    if torch.version.cuda is None:
        raise CheckFailed(f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise CheckFailed("no CUDA device is visible (torch.cuda.is_available() is False); refusing to fall back "
                          "to the CPU")
    from attnlab.kernels.triton_kernels import INTERPRET

    if INTERPRET:
        raise CheckFailed("attnlab's Triton kernels were decorated for the CPU interpreter on a CUDA machine")
    import triton

    info.update(device=torch.cuda.get_device_name(0), triton=triton.__version__,
                capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    return info


def kernel_tests(dry_run: bool, timeout_s: float) -> dict:
    """pytest over the kernel tests in a child process (``--collect-only`` in a dry run)."""
    env = {n: v for n, v in os.environ.items() if n != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", *KERNEL_TESTS, "-q", "-p", "no:warnings", "-p", "no:cacheprovider"]
    if dry_run:
        cmd.append("--collect-only")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    found = {"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-300:],
             "seconds": round(time.perf_counter() - start, 1), "ok": proc.returncode == 0}
    if proc.returncode != 0:  # the failures themselves: a summary line alone cannot be debugged after the lease
        found["output_tail"] = (proc.stdout + proc.stderr)[-6000:]
    return found


# -- stages ------------------------------------------------------------------------------------------------
def capture_check(sizes: Sizes, meter: Meter) -> dict:
    """Capture from a GPT-2-sized random model: times per mode, Trace shape, outputs vs the plain forward."""
    import torch
    from capture import eager_twin  # benchmarks/capture.py, beside this file
    from transformers import GPT2Config, GPT2Model

    from attnlab.core.capture import Capture
    from attnlab.hooks import attach

    torch.manual_seed(0)
    cfg = GPT2Config(**sizes.model)
    cfg._attn_implementation = "sdpa"
    model = GPT2Model(cfg).eval().to(meter.device, getattr(torch, sizes.dtypes[0]))
    eager = eager_twin(model)
    b, n = sizes.capture_batch
    ids = torch.randint(5, 1000, (b, n), generator=torch.Generator().manual_seed(0)).to(meter.device)
    traces = {}

    def captured(name, cap):
        def call():
            with torch.no_grad(), attach(model, cap) as rec:
                out = model(input_ids=ids).last_hidden_state
            traces[name] = rec.trace()
            return out
        return call

    calls = {"plain": lambda: model(input_ids=ids).last_hidden_state,
             "stats": captured("stats", Capture(stats=True)),
             "stats_on_device": captured("stats_on_device", Capture(stats=True, keep_on_device=True)),
             "pattern": captured("pattern", Capture(pattern=True, budget_bytes=2**40)),
             "pattern_on_device": captured("pattern_on_device",
                                           Capture(pattern=True, budget_bytes=2**40, keep_on_device=True)),
             "hf_attn": lambda: eager(input_ids=ids, output_attentions=True).last_hidden_state}
    with torch.no_grad():
        times = {m: meter.median_s(c, reps=3) for m, c in calls.items()}
        peaks = {m: meter.peak_mb(c) for m, c in calls.items()}
        outputs = {m: calls[m]().float() for m in ("plain", "stats", "hf_attn")}
        truth = copy.deepcopy(model).float()(input_ids=ids).last_hidden_state  # float32: the reference all are held to
    errors = {m: float((out - truth).abs().max() / truth.abs().max()) for m, out in outputs.items()}
    stats, pattern = traces["stats"], traces["pattern"]
    want_received = pattern.layer(0).pattern.sum(-2).float()  # (B, H, K) from the eager path
    got_received = stats.layer(0).stats["received"].float()
    found = {"model": {"layers": cfg.n_layer, "heads": cfg.n_head, "d_model": cfg.n_embd, "batch": b, "tokens": n,
                       "dtype": sizes.dtypes[0]},
             "ms": {m: round(t * 1e3, 2) for m, t in times.items()},
             "time_x": {m: round(t / times["plain"], 2) for m, t in times.items()},
             "peak_mb": {m: round_or_none(p) for m, p in peaks.items()},
             "layers_recorded": len(stats.layers), "lse_shape": list(stats.layer(0).stats["lse"].shape),
             "output_vs_float32": {m: float(f"{e:.3g}") for m, e in errors.items()},
             "received_vs_pattern_rel": float(f"{float((got_received - want_received).abs().max() / want_received.abs().max()):.3g}")}
    # Outputs in a low dtype differ from float32 by rounding that 12 layers amplify; capture must add none of its
    # own: its error may be at most 1.5x the larger of the two model paths' own (SDPA and HF eager, same dtype).
    own = max(errors["plain"], errors["hf_attn"])
    found["over_gate"] = ([] if errors["stats"] <= 1.5 * own + 1e-6 else
                          [f"output_vs_float32: stats {errors['stats']:.3g} > 1.5 x {own:.3g} (SDPA / HF eager)"])
    if not found["received_vs_pattern_rel"] <= 2e-2:
        found["over_gate"].append(f"received_vs_pattern_rel={found['received_vs_pattern_rel']}")
    if found["layers_recorded"] != cfg.n_layer or found["lse_shape"] != [b, cfg.n_head, n]:
        found["over_gate"].append(f"trace has {found['layers_recorded']} layers, lse {found['lse_shape']}")
    return found


# -- main --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    """Every stage; a stage that raises is recorded as failed and the rest still run."""
    import torch

    # attnlab's kernels pick Triton's mode when they import it first (the interpreter without CUDA);
    # torch.compile and FlexAttention import triton too, so this import must come before theirs.
    import attnlab.kernels.triton_attention  # noqa: F401

    start = time.perf_counter()
    sizes = DRY if args.dry_run else Sizes()
    report: dict = {"ok": False, "dry_run": args.dry_run, **preflight(args.dry_run)}
    deadline = start + sizes.kernels_deadline_s
    meter = Meter(torch.device("cpu" if args.dry_run else "cuda"))
    stages = {"tests": lambda: kernel_tests(args.dry_run, timeout_s=240),
              "kernels": lambda: bench_kernels(sizes, meter, args.dry_run, deadline),
              "long": lambda: long_case(sizes, meter), "capture": lambda: capture_check(sizes, meter),
              "tiles": lambda: tile_sweep(sizes, meter, args.dry_run)}
    failures = []
    for name, stage in stages.items():
        if name in args.skip:
            report[name] = {"skipped": "--skip"}
            failures.append(f"{name}: skipped")
            continue
        try:
            report[name] = stage()
        except Exception as err:  # recorded, so one broken stage does not hide the others' figures
            report[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            failures.append(f"{name}: {type(err).__name__}")
            continue
        failures += _stage_failures(name, report[name])
    report["failures"] = failures
    report["ok"] = not failures
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _stage_failures(name: str, result: dict) -> list[str]:
    if name == "tests":
        return [] if result["ok"] else [f"tests: {result['summary']}"]
    if name == "kernels":
        bad = []
        for key, row in result.items():
            if "skipped" in row:
                bad.append(f"kernels {key}: skipped ({row['skipped']})")
            else:
                bad += [f"kernels {key}: {g}" for g in row["triton_stats"]["over_gate"]]
        return bad
    return [f"{name}: {g}" for g in result.get("over_gate", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="all stages on the CPU at tiny sizes")
    parser.add_argument("--skip", nargs="+", default=[], choices=("tests", "kernels", "long", "capture", "tiles"),
                        help="stages to leave out (the check then reports ok=false)")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except CheckFailed as err:
        print(json.dumps({"ok": False, "dry_run": args.dry_run, "error": str(err)}))
        return 2
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
