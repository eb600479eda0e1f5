"""Merge a dataset capture's shard files into the Run's tables, streaming one batch file at a time.

The batch files of every shard (any number of ranks, any earlier run) are read in batch order, so the merged
tables list items in dataset order and the float sums behind the layer means are accumulated in the same order
whatever the number of workers. Memory holds one batch file plus the reductions' states.

Outputs (see ``docs/run-format.md``):

- ``results/items.parquet``: one row per input (index, id, text, image, tokens, batch);
- ``results/item_stats.parquet``: one row per input, tower, layer and head (written incrementally);
- ``results/layer_stats.parquet``: per tower, layer and head, the mean of each statistic over inputs;
- ``results/received_histogram.parquet``: per tower, layer and head, counts of received-attention shares;
- ``reductions/qk_sample.safetensors``: with ``qk``, the deterministic sample of query/key vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_file
from .datasets import Dataset
from .reduce import Histogram, Reservoir, RunningSum
from .runs import Run, RunInfo, write_results
from .shards import SHARDS, progress_files, read_rows

UNIT = "capture"
_NOT_STATS = ("hist.", "qk.", "layers", "received_peak_position")


def batch_file(folder: Path, batch: int) -> Path:
    """``folder/batches/batch-000012.safetensors``."""
    return folder / "batches" / f"batch-{batch:06d}.safetensors"


def save_arrays(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write numpy arrays as one safetensors file, whole or not at all (a batch file, the query/key sample)."""
    from safetensors.numpy import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(file) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def share_edges(bins: int) -> np.ndarray:
    """Histogram edges for attention shares in [0, 1]: 0, then ``bins`` log-spaced edges from 1e-6 to 1.

    Most keys receive tiny shares and a few (sinks) receive a lot, so log spacing resolves both ends.
    """
    if bins < 2:
        raise ValueError(f"--bins must be at least 2, got {bins}")
    return np.concatenate([[0.0], np.logspace(-6, 0, bins)])


def finished_batches(out: Path, n_batches: int) -> dict[int, tuple[Path, dict]]:
    """``{batch: (shard folder, progress row)}`` over every shard (the first record of a batch wins).

    Raises:
        RuntimeError: when a batch has no record (a rank has not finished it), naming the first.
    """
    found: dict[int, tuple[Path, dict]] = {}
    for file in progress_files(out, UNIT):
        for row in read_rows(file):
            if "batch" not in row:
                continue
            found.setdefault(row["batch"], (file.parent.parent, row))
    missing = [j for j in range(n_batches) if j not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} batch(es) of the capture have no result in {out / SHARDS}, e.g. batch "
                           f"{missing[0]}; rerun the same command to finish them")
    return found


def _batches(out: Path, n_batches: int) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    from safetensors.numpy import load_file

    for j, (folder, row) in sorted(finished_batches(out, n_batches).items()):
        yield row, load_file(str(batch_file(folder, j)))


class _Merged:
    """The running reductions of a merge (one batch at a time)."""

    def __init__(self, edges: np.ndarray, sample_size: int, seed: int) -> None:
        self.edges, self.sample_size, self.seed = edges, sample_size, seed
        self.items: list[dict] = []
        self.layers: dict[str, np.ndarray] = {}
        self.sums: dict[tuple[str, str], RunningSum] = {}
        self.hists: dict[str, Histogram] = {}
        self.samples: dict[str, Reservoir] = {}

    def add(self, row: dict, arrays: dict[str, np.ndarray]) -> list[pd.DataFrame]:
        """Fold one batch in; returns its per-item rows (one frame per tower) for the streamed table."""
        self.items += [{"index": i, "id": ident, "n_tokens": n, "batch": row["batch"]}
                       for i, ident, n in zip(row["items"], row["ids"], row["n_tokens"])]
        frames = []
        for tower in sorted({k.split(".", 1)[0] for k in arrays if k.endswith(".layers")}):
            self.layers[tower] = arrays[f"{tower}.layers"]
            names = sorted(k[len(tower) + 1:] for k in arrays
                           if k.startswith(f"{tower}.") and not k[len(tower) + 1:].startswith(_NOT_STATS))
            frames.append(_long_rows(tower, arrays, names))
            for name in names:
                value = arrays[f"{tower}.{name}"]  # (B, L, H)
                self.sums.setdefault((tower, name), RunningSum(value.shape[1:])).update(value)
            hist = Histogram.from_state({"edges": self.edges, **{k: arrays[f"{tower}.hist.{k}"]
                                                                 for k in ("counts", "below", "above")}})
            self.hists[tower] = self.hists[tower].merge(hist) if tower in self.hists else hist
            if f"{tower}.qk.ids" in arrays:
                payload = arrays[f"{tower}.qk.payload"]  # (T, L, 2, H, d)
                sample = self.samples.setdefault(tower, Reservoir(self.sample_size, self.seed, payload.shape[1:]))
                sample.update(arrays[f"{tower}.qk.ids"], payload)
        return frames


def _long_rows(tower: str, arrays: dict[str, np.ndarray], names: list[str]) -> pd.DataFrame:
    """Per item, layer and head rows of one tower of one batch."""
    items, layers = arrays["items"], arrays[f"{tower}.layers"]
    b, n_layers, n_heads = arrays[f"{tower}.{names[0]}"].shape
    grid = np.meshgrid(np.arange(b), np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = pd.DataFrame({"item": items[grid[0]].ravel(), "tower": tower, "layer": layers[grid[1]].ravel(),
                          "head": grid[2].ravel()})
    for name in names + (["received_peak_position"] if f"{tower}.received_peak_position" in arrays else []):
        frame[name] = arrays[f"{tower}.{name}"].ravel()
    return frame


def merge_capture(out: Path, data: Dataset, info: RunInfo, n_batches: int, bins: int, sample_size: int, seed: int,
                  fields: dict | None = None) -> Run:
    """Fold every batch file into the Run's tables and write the manifest last.

    Args:
        out: the Run directory (holding ``shards/``).
        data: the dataset (for the items table).
        info: manifest fields.
        n_batches: how many batches the capture has.
        bins: histogram bins (:func:`share_edges`).
        sample_size, seed: the query/key sample's size and seed.
        fields: further manifest entries.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    merged, writer = _Merged(share_edges(bins), sample_size, seed), None
    with atomic_file(results / "item_stats.parquet") as tmp:
        for row, arrays in _batches(out, n_batches):
            for frame in merged.add(row, arrays):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        writer.close()
    tables = {"items": _items_table(data, merged.items), "layer_stats": _layer_table(merged.sums, merged.layers),
              "received_histogram": _histogram_table(merged.hists, merged.layers)}
    reductions = _write_sample(out, merged.samples, merged.layers) if merged.samples else []
    return write_results(out, info, tables, kind="dataset", streamed=("item_stats",),
                         fields={"reductions": reductions, **(fields or {})})


def _items_table(data: Dataset, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["text"] = [data.items[i].text for i in frame["index"]]
    frame["image"] = [data.items[i].image for i in frame["index"]]
    return frame[["index", "id", "text", "image", "n_tokens", "batch"]]


def _layer_table(sums: dict[tuple[str, str], RunningSum], layers: dict[str, np.ndarray]) -> pd.DataFrame:
    frames = []
    for tower in sorted(layers):
        names = sorted(n for t, n in sums if t == tower)
        n_layers, n_heads = sums[(tower, names[0])].shape
        grid = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        frame = pd.DataFrame({"tower": tower, "layer": layers[tower][grid[0]].ravel(), "head": grid[1].ravel(),
                              "n_items": sums[(tower, names[0])].count})
        for name in names:
            frame[name] = sums[(tower, name)].mean.ravel()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _histogram_table(hists: dict[str, Histogram], layers: dict[str, np.ndarray]) -> pd.DataFrame:
    frames = []
    for tower, hist in sorted(hists.items()):
        n_layers, n_heads, n_bins = hist.counts.shape
        grid = np.meshgrid(np.arange(n_layers), np.arange(n_heads), np.arange(n_bins), indexing="ij")
        frames.append(pd.DataFrame({
            "tower": tower, "layer": layers[tower][grid[0]].ravel(), "head": grid[1].ravel(), "bin": grid[2].ravel(),
            "lo": hist.edges[:-1][grid[2]].ravel(), "hi": hist.edges[1:][grid[2]].ravel(),
            "count": hist.counts.ravel(), "below": hist.below[grid[0], grid[1]].ravel(),
            "above": hist.above[grid[0], grid[1]].ravel()}))
    return pd.concat(frames, ignore_index=True)


def _write_sample(out: Path, samples: dict[str, Reservoir], layers: dict[str, np.ndarray]) -> list[str]:
    """``reductions/qk_sample.safetensors``: per tower ``ids``, ``item``, ``position``, ``layers``, ``q``, ``k``."""
    from .item_stats import TOKEN_ID_STRIDE

    tensors = {}
    for tower, sample in samples.items():
        ids, payload = sample.sorted_by_id()  # (S,), (S, L, 2, H, d)
        tensors.update({f"{tower}.ids": ids, f"{tower}.item": ids // TOKEN_ID_STRIDE,
                        f"{tower}.position": ids % TOKEN_ID_STRIDE, f"{tower}.layers": layers[tower],
                        f"{tower}.q": payload[:, :, 0], f"{tower}.k": payload[:, :, 1]})
    save_arrays(out / "reductions" / "qk_sample.safetensors", tensors)
    return ["qk_sample"]
