"""Data-parallel scaling of the POPE eval: items per second with 1 and 2 workers, measured side by side.

Each configuration runs the real command (``attnlab eval pope --workers W``) in a fresh process on the same
questions of toy-llava's held-out toy world (random split, 3 new tokens, the baseline method). Its rate is read
from the Run's progress files, per rank:

    items/s = sum over ranks of  (rank's answers) / (its last answer written - its progress file opened),

so interpreter and torch start-up, the model load and torchrun's rendezvous do not count (the wall time of the
whole command is reported beside it): it is the rate a long eval approaches.

Threads matter on a small machine: torchrun gives each of W workers one intra-op thread (``OMP_NUM_THREADS=1``),
while a plain process uses every core for its matrix products. The scaling ratio therefore compares 2 workers
with 1 worker on one thread (the same per-process setting); a 1-worker run with torch's default threads is
measured too, as the number a user gets without ``--workers``. On a machine shared with other jobs, busy
OpenMP threads can make that default run much slower than the 1-thread one. Each configuration runs
``--repeats`` times, interleaved, and the fastest counts (other load only ever slows a run down).

Usage: ``python benchmarks/scale.py [--items 600] [--repeats 2] [--model toy-llava]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _world(model: str, folder: Path) -> tuple[Path, Path]:
    from attnlab.zoo.toy_llava import toy_dataset
    from attnlab.zoo import load

    data = toy_dataset(load(model)[2], folder)
    return Path(data.pope["random"]), Path(data.images)


def _run(model: str, questions: Path, images: Path, n_items: int, workers: int, out: Path,
         threads: int | None = None) -> dict:
    import pandas as pd

    cmd = [sys.executable, "-m", "attnlab.cli.main", "eval", "pope", "--model", model, "--questions", str(questions),
           "--images", str(images), "--limit", str(n_items), "--max-new-tokens", "3", "--out", str(out),
           "--workers", str(workers), "--json"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    rate, span = 0.0, 0.0
    for progress in out.rglob("*.jsonl"):  # one per rank
        opened = progress.with_name(progress.name.replace(".jsonl", ".settings.json")).stat().st_mtime
        busy = progress.stat().st_mtime - opened
        rate += len(progress.read_text().splitlines()) / busy
        span = max(span, busy)
    frame = pd.read_parquet(next((out / "results").glob("predictions-*.parquet")))
    return {"items_per_s": rate, "slowest_rank_s": span, "wall_s": wall,
            "item_compute_s": float(frame["seconds"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600, help="POPE questions per run")
    parser.add_argument("--model", default="toy-llava")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (the fastest counts)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attnlab-scale-"))
    try:
        _measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(args, root: Path) -> None:
    questions, images = _world(args.model, root)
    result: dict = {"model": args.model, "items": args.items, "cores": os.cpu_count(), "repeats": args.repeats}
    configs = {"workers_1": (1, 1), "workers_2": (2, None), "workers_1_default_threads": (1, None)}
    for repeat in range(args.repeats):
        for name, (workers, threads) in configs.items():
            r = _run(args.model, questions, images, args.items, workers, root / f"{name}-{repeat}", threads)
            if name not in result or r["items_per_s"] > result[name]["items_per_s"]:
                result[name] = r
    for name in configs:
        r = result[name]
        print(f"{name:26s} {r['items_per_s']:6.2f} items/s   slowest rank busy {r['slowest_rank_s']:5.1f} s "
              f"(wall {r['wall_s']:5.1f} s)   mean compute per item {r['item_compute_s'] * 1e3:6.1f} ms")
    result["ratio_2_vs_1"] = result["workers_2"]["items_per_s"] / result["workers_1"]["items_per_s"]
    result["ratio_2_vs_1_default_threads"] = (result["workers_2"]["items_per_s"]
                                              / result["workers_1_default_threads"]["items_per_s"])
    print(f"2 workers / 1 worker (1 thread each): {result['ratio_2_vs_1']:.2f}x on {os.cpu_count()} cores "
          f"(vs 1 worker on default threads: {result['ratio_2_vs_1_default_threads']:.2f}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
