"""``attnlab capture --dataset``: statistics over a whole dataset, sharded over workers, resumable."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import typer

from attnlab.core.capture import Capture

from .common import check_writable, holds_only
from .workers import with_workers

DATASET_HELP = ("text file (one prompt a line), JSONL of {\"text\", \"image\"}, POPE question file, or image folder; "
                "captures statistics (default --capture stats) over every input into --out, resumably")
#: Capture options a dataset capture can keep: per-item statistics and a sample of queries/keys.
DATASET_OPTIONS = ("stats", "qk")


def dataset_capture_options(what: str, layers, budget_gb: float) -> Capture:
    """The Capture for a dataset: ``stats`` (required) and optionally ``qk``; full maps are refused."""
    cap = Capture.parse(what, layers=layers, budget_bytes=int(budget_gb * 2**30))
    heavy = [n for n in cap.captured if n not in DATASET_OPTIONS]
    if heavy or "stats" not in cap.captured:
        raise ValueError(f"Over a dataset attnlab keeps statistics and a query/key sample (--capture stats or "
                         f"stats,qk), not {', '.join(heavy) or what}; capture full maps of a few inputs with "
                         "--text/--image")
    return cap


#: What a dataset capture writes in its folder before the manifest exists (an unfinished, resumable capture).
JOB_ENTRIES = ("shards", "results", "reductions", "progress")


def dataset_kind(path: Path) -> str | None:
    """The Run kind at ``path``, counting an unfinished dataset capture (no manifest yet) as ``dataset``."""
    from attnlab.core.runs import run_kind

    if not (path / "manifest.json").exists() and path.is_dir() and holds_only(path, JOB_ENTRIES):
        return "dataset"
    return run_kind(path)


def check_dataset_out(model, dataset, image_dir, prompt, what, layers, budget_gb, batch_size, sample_size, seed,
                      bins, out: Path, overwrite: bool) -> None:
    """Before any model is loaded or folder made: the dataset fits the model's modality (read from its
    ``config.json``), and ``--out`` is writable, and is new, a dataset capture to resume, or (with ``--overwrite``) a
    dataset capture that may be replaced; never a user's folder or another kind of Run."""
    from attnlab.core.atomic import check_replaceable
    from attnlab.core.datasets import load_dataset
    from attnlab.jobs.dataset_capture import check_dataset
    from attnlab.zoo import peek

    name, _, _, modality = peek(model)
    check_dataset(name, modality, load_dataset(dataset, image_dir, prompt))
    check_writable(out)
    if overwrite:
        check_replaceable(out, "dataset", dataset_kind)
    elif out.is_dir() and any(out.iterdir()) and dataset_kind(out) != "dataset":
        found = dataset_kind(out)
        what_is = f"holds an attnlab {found} Run" if found else "is not an attnlab dataset capture"
        raise ValueError(f"--out {out} {what_is}; choose another --out (nothing was written)")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create the Run folder; with ``overwrite``, empty the dataset capture there (checked by :func:`check_dataset_out`).

    A dataset capture is built in place so that it can resume; replacing it therefore removes the old capture's
    files (not the folder, whose lock this job holds) before the new one starts.
    """
    from attnlab.core.atomic import check_replaceable
    from attnlab.core.locks import HOLDER_NAME, LOCK_NAME

    if overwrite and out.is_dir():
        check_replaceable(out, "dataset", dataset_kind)
        for entry in out.iterdir():
            if entry.name not in (LOCK_NAME, HOLDER_NAME):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


@with_workers(check=check_dataset_out)
def run_dataset_capture(model: str, dataset: Path, image_dir: Path | None, prompt: str | None, what: str, layers,
                        budget_gb: float, batch_size: int, sample_size: int, seed: int, bins: int, out: Path,
                        overwrite: bool, shard=None) -> None:
    """Capture every input of ``dataset`` (this rank's share under a launcher) and merge on rank 0."""
    from attnlab.core.capture_merge import merge_capture
    from attnlab.core.datasets import load_dataset
    from attnlab.core.runs import RunInfo
    from attnlab.jobs.dataset_capture import DatasetCaptureSettings, capture_shard
    from attnlab.hooks.inputs import default_device
    from attnlab.zoo import load, peek

    if batch_size < 1 or sample_size < 1:
        raise ValueError("--batch-size and --sample must be at least 1")
    cap = dataset_capture_options(what, layers, budget_gb)
    data = load_dataset(dataset, image_dir, prompt)
    name = peek(model)[0]  # the dataset's fit with the model was checked before the lock (check_dataset_out)
    if shard is None or shard.is_main:
        _prepare_out(out, overwrite)
    if shard is not None:
        shard.barrier()  # rank 0 has made the folder; every rank loads its model now
    t0 = time.perf_counter()
    loaded = load(model)
    loaded[0].to(default_device())  # this rank's GPU on a CUDA machine (one per LOCAL_RANK); the CPU otherwise
    t1 = time.perf_counter()
    settings = DatasetCaptureSettings(name, str(dataset), data.kind, len(data.items),
                                      str(image_dir) if image_dir else None, prompt,
                                      {k: v for k, v in asdict(cap).items() if k != "budget_bytes"}, batch_size,
                                      sample_size, seed, bins)
    report = capture_shard(loaded, data, cap, settings, out, shard)
    reports = shard.gather_json(report) if shard is not None else [report]
    if shard is not None and not shard.is_main:
        return
    t2 = time.perf_counter()
    inputs = {"dataset": str(dataset), "kind": data.kind, "n_items": len(data.items), "images": settings.images,
              "prompt": prompt}
    info = RunInfo(model=asdict(loaded[2]), inputs=inputs,
                   capture=asdict(cap), timings={"load": t1 - t0, "capture": t2 - t1},
                   extra={**asdict(settings), "assignment": "batch j -> rank j % world_size"})
    merge_capture(out, data, info, settings.n_batches, bins, sample_size, seed,
                  fields={"shards": {"world_size": len(reports), "this_run": reports}})
    done_now = sum(r["items_done_now"] for r in reports)
    typer.echo(f"wrote {out} ({len(data.items)} inputs; {done_now} captured now, {len(data.items) - done_now} resumed)")


def dataset_budget(run) -> list[dict] | None:
    """Per tower and layer: mean over heads and inputs of each statistic (for ``attnlab info``); the ``tower``
    column only when the Run has more than ``main`` (an LVLM's ``vision``, an encoder-decoder's ``encoder`` and
    ``cross``)."""
    if "layer_stats" not in run.manifest.get("results", []):
        return None
    table = run.result("layer_stats").drop(columns=["head", "n_items"])
    cols = [c for c in table.columns if c.startswith("mass.") or c == "entropy"]
    towers = list(dict.fromkeys(table["tower"]))  # main first, as stored
    grouped = table.groupby(["tower", "layer"], sort=False)[cols].mean().reset_index()
    return [{**({"tower": r["tower"]} if len(towers) > 1 else {}), "layer": int(r["layer"]),
             **{c.replace("mass.", "mass on "): float(r[c]) for c in cols}}
            for _, r in grouped.iterrows()]
