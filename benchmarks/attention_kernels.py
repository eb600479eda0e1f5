"""Attention with statistics: time and peak memory of the blockwise torch path vs eager vs SDPA (or Triton on CUDA).

Every method runs causal attention on ``B=1, H=--heads, N, d=--dim`` float32 inputs. ``torch`` and
``eager`` (and ``triton``) emit every statistic (lse, entropy, max, mass on two key sets, received);
``sdpa`` is ``torch.nn.functional.scaled_dot_product_attention`` without statistics, the floor.

How it is measured:
* CPU time: a fresh child process per method, a warm-up call on N=256 to load the libraries, then at
  each N the best of 3 (N <= 2048) or 2 calls (wall clock).
* CPU peak memory: another fresh child per method, sizes ascending: ``ru_maxrss`` after one call minus
  the resident size before it (inputs allocated, libraries warmed up). glibc's adaptive mmap threshold keeps
  freed blocks of up to 32 MiB in the heap, so a loop that frees and re-allocates block-sized tensors
  would report pages it holds for reuse as a peak. The memory child therefore starts with
  ``MALLOC_MMAP_THRESHOLD_=1MiB``: every tensor over 1 MiB is its own mapping, returned when freed,
  and the RSS peak is the peak of tensor memory alive at once (plus small allocations). The timing
  child keeps the default allocator, since page faults on fresh mappings are part of real cost.
* CUDA (``--device cuda``, methods triton / eager / sdpa): in-process, ``torch.cuda.max_memory_allocated``
  above the memory held before the call, and wall time around ``torch.cuda.synchronize()``.
* ``--threads`` sets torch's intra-op threads (default 1). On a shared machine, multi-threaded CPU
  timings mostly measure how long OpenMP waits for a descheduled thread, once per op; the blockwise
  path runs ~17 ops per block, so it pays that once per block. Pass ``--threads 2`` on a quiet machine.

Usage: ``python benchmarks/attention_kernels.py [--device cpu|cuda] [--sizes 1024 2048 4096 8192] [--threads 1]``.
The last line is one JSON object with, at each N, the ratios of time and memory between methods.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STATS = ("lse", "entropy", "max", "mass", "received")
CPU_METHODS = ("torch", "eager", "sdpa")
CUDA_METHODS = ("triton", "eager", "sdpa")
WARMUP_N = 256


def _inputs(n: int, heads: int, dim: int, device: str):
    """Seeded ``q, k, v`` ``[1, H, N, d]`` and two key sets: four sink tokens and an "image" span."""
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, generator=gen).to(device) for _ in range(3))
    pos = torch.arange(n, device=device)[None]  # (1, N)
    return q, k, v, {"sink": pos < 4, "image": (pos >= 16) & (pos < 16 + n // 2)}


def _call(method: str, inputs, block_q: int | None):
    import torch

    from attnlab.kernels.api import attention

    q, k, v, sets = inputs
    if method == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    extra = {} if block_q is None else {"block_q": block_q}
    return attention(q, k, v, causal=True, stats=STATS, key_sets=sets, impl=method, **extra)


def _repeats(n: int) -> int:
    return 3 if n <= 2048 else 2


def _rss_kib() -> int:
    """Current resident set size of this process (KiB)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def child(method: str, what: str, args: argparse.Namespace) -> dict[int, float | None]:
    """Measurements of one method at every N (ascending) in this fresh process: ``{N: seconds or MiB}``.

    Memory: ``ru_maxrss`` after the call minus the resident size before it. ru_maxrss is a high-water
    mark, so this holds only when the call sets a new high; sizes ascend so it does, and a call that
    does not (which would hide its peak under an earlier one) is reported as None rather than guessed.
    """
    import resource

    import torch

    torch.set_num_threads(args.threads)
    _call(method, _inputs(WARMUP_N, args.heads, args.dim, "cpu"), args.block_q)
    found: dict[int, float | None] = {}
    for n in sorted(args.sizes):
        inputs = _inputs(n, args.heads, args.dim, "cpu")
        if what == "memory":
            high, before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _rss_kib()  # KiB on Linux
            _call(method, inputs, args.block_q)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            found[n] = (after - before) / 1024 if after > high else None
        else:
            best = float("inf")
            for _ in range(_repeats(n)):
                start = time.perf_counter()
                _call(method, inputs, args.block_q)
                best = min(best, time.perf_counter() - start)
            found[n] = best
        del inputs
    return found


def _run_child(method: str, what: str, args: argparse.Namespace) -> dict[int, float | None]:
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    cmd = [sys.executable, __file__, "--child", method, what, "--sizes", *map(str, args.sizes), "--heads",
           str(args.heads), "--dim", str(args.dim), "--threads", str(args.threads)]
    if args.block_q is not None:
        cmd += ["--block-q", str(args.block_q)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} {what} failed:\n{proc.stderr[-2000:]}")
    return {int(n): x for n, x in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def measure_cpu(args: argparse.Namespace) -> dict[int, dict[str, dict]]:
    """``{N: {method: {"time_s", "peak_mb"}}}``, one timing and one memory child per method."""
    results: dict[int, dict[str, dict]] = {n: {} for n in sorted(args.sizes)}
    for method in CPU_METHODS:
        times, peaks = _run_child(method, "time", args), _run_child(method, "memory", args)
        for n in results:
            results[n][method] = {"time_s": times[n], "peak_mb": peaks[n]}
            print(f"N={n:5d} {method:6s} {times[n]:8.3f} s {peaks[n] or float('nan'):9.1f} MB", flush=True)
    return results


def measure_cuda(args: argparse.Namespace) -> dict[int, dict[str, dict]]:
    """In-process CUDA measurements: ``{N: {method: {"time_s", "peak_mb"}}}`` (None where out of memory)."""
    import torch

    results: dict[int, dict[str, dict]] = {}
    _call("triton", _inputs(WARMUP_N, args.heads, args.dim, "cuda"), None)  # compiles the kernels
    for n in args.sizes:
        results[n] = {}
        inputs = _inputs(n, args.heads, args.dim, "cuda")
        for method in CUDA_METHODS:
            try:
                _call(method, inputs, None)  # warm-up at this size
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                best = float("inf")
                for _ in range(_repeats(n) + 2):
                    start = time.perf_counter()
                    _call(method, inputs, None)
                    torch.cuda.synchronize()
                    best = min(best, time.perf_counter() - start)
                results[n][method] = {"time_s": best, "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
            except torch.cuda.OutOfMemoryError:
                results[n][method] = {"time_s": None, "peak_mb": None}
            torch.cuda.empty_cache()
            print(f"N={n:5d} {method:6s} {results[n][method]}", flush=True)
    return results


def ratios(results: dict[int, dict[str, dict]], main: str) -> dict[str, dict[str, float | None]]:
    """Time and memory of ``main`` divided by every other method's, at each N."""
    out: dict[str, dict[str, float | None]] = {}
    for n, by_method in results.items():
        row: dict[str, float | None] = {}
        for other in by_method:
            if other == main:
                continue
            for key, label in (("time_s", "time"), ("peak_mb", "memory")):
                a, b = by_method[main][key], by_method[other][key]
                row[f"{main}/{other} {label}"] = None if a is None or not b else round(a / b, 4)
        out[str(n)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--block-q", type=int, default=None, help="torch path rows per block (default: api's)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    start = time.perf_counter()
    results = measure_cuda(args) if args.device == "cuda" else measure_cpu(args)
    main_method = "triton" if args.device == "cuda" else "torch"
    summary = {"device": args.device, "threads": args.threads, "heads": args.heads, "dim": args.dim,
               "seconds": round(time.perf_counter() - start, 1), "results": results,
               "ratios": ratios(results, main_method)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
