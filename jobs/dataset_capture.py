"""Capture statistics over a whole dataset in batches: sharded over ranks, resumable batch by batch.

The dataset is cut into batches of ``batch_size`` consecutive items (batch ``j`` holds items
``j*B .. j*B + B - 1``) and batch ``j`` belongs to rank ``j % world_size``. Because the batches do not depend on
the number of ranks, every item is computed in the same batch (same padding) by 1 or N workers.

Per batch, a rank writes ``shards/rank-r-of-W/batches/batch-JJJJJJ.safetensors`` (atomically) holding the items'
per-layer, per-head statistics (:func:`attnlab.core.item_stats.item_statistics`), the batch's histogram counts of
received-attention shares and, with ``qk``, the batch's entrants into the rank's running sample of query/key
vectors; then it appends one fsynced progress row for the batch. A batch is done when its row exists; a rerun
skips done batches of every shard and recomputes only the rest. :mod:`attnlab.core.capture_merge` turns the
batch files into the Run's tables.

Each array is stored per tower: ``main`` (the model's own, for an encoder-decoder the decoder's self-attention) and
every nested Trace present (:data:`~attnlab.core.trace.NESTED_TRACES`: a vision tower ``vision``, an
encoder-decoder's ``encoder`` and ``cross``). A cross-attention tower's per-key arrays (received shares, their
histogram, the peak position) run over the encoder's tokens; it has no query/key sample, since its queries and keys
belong to different tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from attnlab.core.capture import Capture
from attnlab.core.capture_merge import UNIT, batch_file, save_arrays, share_edges
from attnlab.core.datasets import Dataset
from attnlab.core.distributed import Shard
from attnlab.core.item_stats import item_statistics, layer_received_shares, qk_tokens
from attnlab.core.reduce import Histogram, Reservoir
from attnlab.core.trace import NESTED_TRACES, Trace
from attnlab.core.shards import read_rows, shard_dir
from attnlab.hooks.inputs import capture_trace, load_images

from .sharded import run_items



@dataclass(frozen=True)
class DatasetCaptureSettings:
    """Everything that fixes a dataset capture's results; a resume with other settings is refused.

    Attributes:
        model: model name or path.
        dataset: the dataset path; kind: its form (``text``, ``jsonl``, ``pope``, ``images``).
        n_items: number of inputs.
        images: folder relative image paths were resolved against (``None``: the dataset's folder).
        prompt: the prompt paired with every image of an image folder.
        capture: the Capture options (``stats`` and optionally ``qk``).
        batch_size: inputs per forward pass (also the unit of durable progress).
        sample_size: tokens kept in the query/key sample per tower.
        seed: the sample's hash seed.
        bins: histogram bins of received-attention shares (log-spaced, see :func:`share_edges`).
    """

    model: str
    dataset: str
    kind: str
    n_items: int
    images: str | None
    prompt: str | None
    capture: dict
    batch_size: int
    sample_size: int
    seed: int
    bins: int

    @property
    def n_batches(self) -> int:
        """Number of batches."""
        return math.ceil(self.n_items / self.batch_size)


def check_dataset(name: str, modality: str, data: Dataset) -> None:
    """Fail before any work (before the model loads or the Run folder is made) when the dataset does not fit the
    model's ``modality`` (:func:`attnlab.zoo.peek` gives it from ``config.json``)."""
    has_text, has_images = data.modalities()
    if modality == "audio":
        raise ValueError(f"{name} is a speech model; dataset capture reads texts and images, not recordings yet: "
                         "capture recordings in batches with `attnlab capture --audio FILE ...`")
    if modality == "text" and has_images:
        raise ValueError(f"{name} is a text-only model but {data.path} has images; "
                         "choose a vision(-language) model")
    if modality == "vision" and has_text:
        raise ValueError(f"{name} is a vision model; drop the prompts (or --text) from the dataset")
    if modality in ("vision-language", "text-image"):  # an LVLM, or a dual encoder such as CLIP
        lacking = [it for it in data.items if not (it.text and it.image)]
        if lacking:
            raise ValueError(f"{name} needs a prompt and an image per input; item {lacking[0].index} of "
                             f"{data.path} lacks one (for an image folder give --text PROMPT)")
    elif modality == "text" and not all(it.text for it in data.items):
        raise ValueError(f"{name} needs a prompt per input; {data.path} has an input without text")


def capture_shard(loaded, data: Dataset, capture: Capture, settings: DatasetCaptureSettings, out: Path,
                  shard: Shard | None = None, progress_bar: bool = True) -> dict:
    """Capture this rank's batches that no shard has finished; returns ``{rank, batches_done_now, items_done_now}``.

    Args:
        loaded: ``(model, processor, spec)``.
        data: the dataset.
        capture: ``stats`` (required) and optionally ``qk``.
        settings: the settings record (checked against every earlier shard).
        out: the Run directory being built.
        shard: this rank, or ``None`` for one process (it is rank 0 of 1).
        progress_bar: per-rank tqdm bars, and the overall one on rank 0.

    Raises:
        ShardFailure: naming the rank, the batch and its items, when a batch fails (finished batches stay).
    """
    rank, world = (shard.rank, shard.world_size) if shard else (0, 1)
    folder = shard_dir(out, rank, world)
    edges = share_edges(settings.bins)
    samples: dict[str, Reservoir] | None = None  # read back on the first batch, after run_items checked the settings
    done_now: list[int] = []

    def batch_items(j: int) -> list:
        return data.items[j * settings.batch_size:(j + 1) * settings.batch_size]

    def work(j: int) -> dict:
        nonlocal samples
        if samples is None:
            samples = _resume_samples(folder, settings)
        items = batch_items(j)
        t0 = time.perf_counter()
        arrays, n_tokens = capture_batch(loaded, items, capture, edges, samples, settings)
        save_arrays(batch_file(folder, j), arrays)
        done_now.append(j)
        return {"batch": j, "items": [it.index for it in items], "ids": [it.id for it in items],
                "n_tokens": n_tokens, "seconds": time.perf_counter() - t0}

    def describe(j: int) -> str:
        items = batch_items(j)
        return f"batch={j} (items {items[0].index}-{items[-1].index}, first id {items[0].id})"

    run_items(out, UNIT, asdict(settings), "batch", list(range(settings.n_batches)), work, shard=shard,
              progress_bar=progress_bar, rank_folders=True, describe=describe, weight=lambda row: len(row["items"]),
              n_items=settings.n_items, desc="capture", bar_unit="batch")
    return {"rank": rank, "batches_done_now": len(done_now),
            "items_done_now": sum(len(batch_items(j)) for j in done_now)}


def capture_batch(loaded, items, capture: Capture, edges: np.ndarray, samples: dict[str, Reservoir],
                  settings: DatasetCaptureSettings) -> tuple[dict[str, np.ndarray], list[int]]:
    """One forward pass over a batch; returns the batch file's arrays and each item's real token count."""
    model, processor, spec = loaded
    texts = [it.text for it in items if it.text]
    images = load_images([it.image for it in items if it.image]) if any(it.image for it in items) else []
    trace = capture_trace(model, processor, spec, capture, texts, images)
    towers = batch_towers(trace)
    arrays: dict[str, np.ndarray] = {"items": np.array([it.index for it in items], dtype=np.int64)}
    for tower, tr in towers.items():
        for name, value in item_statistics(tr, capture.key_sets).items():
            arrays[f"{tower}.{name}"] = value  # (B, L, H)
        arrays[f"{tower}.layers"] = np.array(sorted(tr.layers), dtype=np.int64)
        shares, valid = layer_received_shares(tr)  # (L, H, B, K), (L, 1, B, K)
        hist = Histogram(edges, shares.shape[:2])
        hist.update(shares, valid)
        arrays.update({f"{tower}.hist.{k}": v for k, v in hist.state().items() if k != "edges"})
        if capture.qk and not tr.is_cross:  # a cross-attention token has a query or a key, not both
            ids, payload = qk_tokens(tr, [it.index for it in items])  # (T,), (T, L, 2, H, d)
            sample = samples.setdefault(tower, Reservoir(settings.sample_size, settings.seed, payload.shape[1:]))
            kept = sample.update(ids, payload)
            arrays[f"{tower}.qk.ids"], arrays[f"{tower}.qk.payload"] = ids[kept], payload[kept]
    return arrays, trace.token_mask.sum(-1).tolist()


def batch_towers(trace: Trace) -> dict[str, Trace]:
    """The towers a batch file stores: ``main`` and each nested Trace present (:data:`NESTED_TRACES`: ``vision``,
    ``encoder``, ``cross``), by name."""
    nested = {name: getattr(trace, name) for name in NESTED_TRACES}
    return {"main": trace, **{name: sub for name, sub in nested.items() if sub is not None}}


def _resume_samples(folder: Path, settings: DatasetCaptureSettings) -> dict[str, Reservoir]:
    """This rank's running query/key samples, rebuilt from the entrants stored in its finished batches (in batch
    order, as they were first drawn)."""
    from safetensors.numpy import load_file

    if not settings.capture.get("qk"):
        return {}
    done = sorted({row["batch"] for row in read_rows(folder / "progress" / f"{UNIT}.jsonl") if "batch" in row})
    samples: dict[str, Reservoir] = {}
    for j in done:
        arrays = load_file(str(batch_file(folder, j)))
        for key in arrays:
            if key.endswith(".qk.ids"):
                tower = key[: -len(".qk.ids")]
                payload = arrays[f"{tower}.qk.payload"]
                sample = samples.setdefault(tower, Reservoir(settings.sample_size, settings.seed, payload.shape[1:]))
                sample.update(arrays[key], payload)
    return samples
