"""One unit of work's items, spread over the ranks of a job, resumable item by item.

:func:`run_item_batches` (and :func:`run_items`, one item at a time) is the loop behind
:func:`attnlab.jobs.pope_eval.run_pope_unit`, :func:`attnlab.jobs.chair_eval.run_chair_unit` and
:func:`attnlab.jobs.dataset_capture.capture_shard`. An eval in one process keeps ``RUN/progress/<unit>.jsonl``; in a
job of ``W`` ranks, rank ``r`` answers the items ``i`` with ``i % W == r`` and appends them to
``RUN/shards/rank-r-of-W/progress/<unit>.jsonl`` (see :mod:`attnlab.core.shards`). Items finished by any earlier run
(any number of workers) are skipped. After a barrier every rank reads all shards and returns the rows in item order,
so metrics are computed from exactly the rows a one-process run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from attnlab.core.distributed import Shard, assign
from attnlab.core.shards import (OverallBar, ShardFailure, check_settings, clear_failure, done_keys, fault_point,
                                 merged_rows, shard_dir, write_failure)

from .progress import Progress


def unit_name(task: str, *parts: str) -> str:
    """A unit's name for its progress and result files: ``task-part-...`` with a method spec's ``:``, ``,`` and
    ``/`` made file-safe (``pope-random-mask_3.1+4``)."""
    return "-".join([task, *(p.replace(":", "_").replace(",", "+").replace("/", "_") for p in parts)])


def run_items(out: Path, unit: str, settings: dict, key: str, keys: list, work: Callable[[int], dict], *,
              describe: Callable[[int], str] | None = None, **options) -> list[dict]:
    """:func:`run_item_batches` one item at a time: ``work(i) -> row`` for item index ``i``; ``describe(i)`` names
    item ``i`` in a failure; ``options`` as there."""
    return run_item_batches(out, unit, settings, key, keys, lambda batch: [work(i) for i in batch],
                            describe=(lambda batch: describe(batch[0])) if describe else None, **options)


def run_item_batches(out: Path, unit: str, settings: dict, key: str, keys: list,
                     work: Callable[[list[int]], list[dict]], *, batch_size: int = 1, shard: Shard | None = None,
                     progress_bar: bool = True, warm_up: bool = False, rank_folders: bool = False,
                     describe: Callable[[list[int]], str] | None = None,
                     weight: Callable[[dict], int] | None = None, n_items: int | None = None, desc: str | None = None,
                     bar_unit: str = "it") -> list[dict]:
    """Do the items of ``unit`` this process owns and has not done yet, ``batch_size`` at a time; return every
    item's row in order.

    The one resumable loop of attnlab's jobs: the eval units (:mod:`attnlab.jobs.pope_eval`,
    :mod:`attnlab.jobs.chair_eval`) run it over batches of questions and images, dataset capture
    (:mod:`attnlab.jobs.dataset_capture`) over its batches one at a time. Resuming is per item: a batch cut short
    by a failure keeps nothing, the batches before it keep every row, and a resumed run batches the items left.

    Args:
        out: the Run directory.
        unit: unit name (``pope-random-vhr``, ``capture``); names the progress files.
        settings: everything that fixes the items' results; a resume with other settings is refused.
        key: the row field that identifies an item (``question_id``).
        keys: the items' keys, in item order (item ``i`` has key ``keys[i]``).
        work: ``work([i, j, ...]) -> [row_i, row_j, ...]`` for up to ``batch_size`` item indices; each row must
            carry ``key``. Whatever else the items produce (a batch file) must be durable before ``work`` returns:
            the rows mark the items done.
        batch_size: items per ``work`` call.
        shard: this rank's place in a job, or ``None`` for one process.
        progress_bar: show tqdm bars (one per rank; rank 0 also shows all ranks together).
        warm_up: before the loop, do this process's first batch once and discard its rows, so that the rows'
            timings exclude one-off costs (kernel compilation, allocator growth). Nothing to do: no warm-up.
        rank_folders: keep progress under ``shards/rank-r-of-W/`` in one process too (as rank 0 of 1) and record
            a failure there as in a job (dataset captures). ``False``: one process keeps ``RUN/progress/`` and
            its errors propagate unchanged (evals).
        describe: ``describe(batch)`` names a batch's items in a failure; default their keys.
        weight, n_items: the overall bar counts ``weight(row)`` items per row out of ``n_items``; default one per
            row out of ``len(keys)``.
        desc, bar_unit: the bar's label (default: the unit) and its unit.

    Returns:
        ``[row of keys[0], row of keys[1], ...]``.

    Raises:
        ShardFailure: when ``work`` fails in a job (or with ``rank_folders``); names the rank and the items and is
            recorded in the shard's ``failure.json``. Otherwise the original error propagates.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    out = Path(out)
    check_settings(out, unit, settings)
    rank, world = (shard.rank, shard.world_size) if shard else (0, 1)
    recorded = shard is not None or rank_folders
    folder = shard_dir(out, rank, world) if recorded else out
    prog = Progress(folder, unit, settings, key=key)
    done = done_keys(out, unit, key) | prog.done
    owned = assign(len(keys), rank, world)
    todo = [i for i in owned if keys[i] not in done]
    if recorded:
        clear_failure(folder)
    label = desc or unit
    overall = OverallBar(out, unit, len(keys) if n_items is None else n_items,
                         progress_bar and world > 1 and rank == 0, position=world, weight=weight or (lambda row: 1))
    bar = tqdm(desc=label if world == 1 else f"{label} rank {rank}/{world}", unit=bar_unit,
               initial=len(owned) - len(todo), total=len(owned), position=rank, disable=not progress_bar)

    def attempt(batch: list[int]) -> list[dict]:
        try:
            rows = work(batch)
        except Exception as err:
            if not recorded:
                raise
            what = describe(batch) if describe else ", ".join(f"{key}={keys[i]}" for i in batch)
            failure = ShardFailure(rank, world, unit, what, err)
            write_failure(folder, failure)
            raise failure from err
        if len(rows) != len(batch):
            raise RuntimeError(f"{unit}: work returned {len(rows)} rows for {len(batch)} items")
        return rows

    batches = [todo[b:b + batch_size] for b in range(0, len(todo), batch_size)]
    if warm_up and batches:
        attempt(batches[0])  # discarded: only the timed rows below are kept
    n = 0
    for batch in batches:
        for row in attempt(batch):
            prog.add(row)
            bar.update(1)
            overall.poll()
            n += 1
            fault_point(rank, n)
    bar.close()
    if shard is not None:
        shard.barrier()
    overall.close()
    return merged_rows(out, unit, key, keys)
