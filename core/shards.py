"""The shard layout of a Run built by several workers, read back without disturbing the writers.

Each rank writes only inside its own folder::

    RUN/shards/rank-00001-of-00002/progress/<unit>.jsonl           one JSON line per finished item (fsynced)
    RUN/shards/rank-00001-of-00002/progress/<unit>.settings.json   the settings the items were made with
    RUN/shards/rank-00001-of-00002/failure.json                    why the rank stopped, if it failed

A one-process eval keeps its progress in ``RUN/progress/<unit>.jsonl`` (the same format); it counts as one more
shard here, so a job can be resumed with another number of workers and nothing finished is redone.
Readers in this module never repair or rewrite another rank's file: a torn last line (a writer died mid-line,
or is writing right now) is skipped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .atomic import write_text_atomic

SHARDS = "shards"
_SHARD_RE = re.compile(r"^rank-(\d{5})-of-(\d{5})$")
#: Fault injection for tests and drills: ``"RANK:N"`` makes that rank SIGKILL itself after N finished items.
FAULT_ENV = "ATTNLAB_FAULT_KILL_AFTER"
#: Drills of a job stopped from outside: ``"SECONDS"`` makes every rank sleep that long after each finished item, so
#: a test can signal a job that is surely mid-way.
DELAY_ENV = "ATTNLAB_FAULT_ITEM_DELAY"


class ShardFailure(RuntimeError):
    """A rank failed on one item; the message names the rank, the unit and the item.

    Attributes:
        rank, world_size: who failed.
        unit: the unit of work (e.g. ``pope-random-vhr`` or ``capture``).
        item: the item, as ``key=value``.
    """

    def __init__(self, rank: int, world_size: int, unit: str, item: str, cause: BaseException) -> None:
        self.rank, self.world_size, self.unit, self.item = rank, world_size, unit, item
        super().__init__(f"rank {rank} of {world_size} failed on {unit} {item}: {type(cause).__name__}: {cause}")


def shard_name(rank: int, world_size: int) -> str:
    """``rank-00001-of-00002``."""
    return f"rank-{rank:05d}-of-{world_size:05d}"


def shard_dir(run: str | Path, rank: int, world_size: int) -> Path:
    """``RUN/shards/rank-RRRRR-of-WWWWW``."""
    return Path(run) / SHARDS / shard_name(rank, world_size)


def shard_dirs(run: str | Path) -> list[Path]:
    """Every shard folder of a Run, ordered by (world size, rank)."""
    root = Path(run) / SHARDS
    if not root.is_dir():
        return []
    found = [(m, p) for p in root.iterdir() if p.is_dir() and (m := _SHARD_RE.match(p.name))]
    return [p for m, p in sorted(found, key=lambda mp: (int(mp[0][2]), int(mp[0][1])))]


def progress_files(run: str | Path, unit: str) -> list[Path]:
    """The progress files of ``unit``: the one-process file first, then each shard's, in :func:`shard_dirs` order."""
    run = Path(run)
    files = [run / "progress" / f"{unit}.jsonl"] + [d / "progress" / f"{unit}.jsonl" for d in shard_dirs(run)]
    return [f for f in files if f.exists()]


def parse_log(text: str) -> tuple[list[tuple[int, dict]], list[int], str]:
    """Split a progress log's text into ``(rows, damaged line numbers, unfinished tail)``.

    The one parser of attnlab's append-only JSON-line logs (progress files, shards). Rows are ``(line number, object)``
    for the complete lines holding a JSON object; a complete line that is not one is damaged (numbers count from 1);
    the part after the last newline is unfinished (a writer is on it, or died mid-line).
    """
    *complete, tail = text.split("\n")
    rows, damaged = [], []
    for number, line in enumerate(complete, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append((number, row))
        else:
            damaged.append(number)
    return rows, damaged, tail


def read_rows(file: str | Path) -> list[dict]:
    """The complete JSON object lines of a progress file, read-only (:func:`parse_log`).

    Unfinished and damaged lines are skipped: their items count as not done, and the file's owner drops them when
    it resumes.
    """
    try:
        text = Path(file).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [row for _, row in parse_log(text)[0]]


def check_settings(run: str | Path, unit: str, settings: dict) -> None:
    """Refuse when any earlier shard (or one-process run) made ``unit`` with other settings.

    Raises:
        ValueError: naming the changed settings and the fix (another ``--out``). A settings file whose unit has
            no finished item yet binds nothing.
    """
    run = Path(run)
    wanted = json.loads(json.dumps(settings, default=str))
    name = f"{unit}.settings.json"
    files = [run / "progress" / name] + [d / "progress" / name for d in shard_dirs(run)]
    for file in files:
        if not file.exists() or not read_rows(file.with_name(f"{unit}.jsonl")):
            continue  # settings bind only once a result exists
        refuse_other_settings(run, unit, json.loads(file.read_text()), wanted)


def refuse_other_settings(where: str | Path, unit: str, stored: dict, wanted: dict) -> None:
    """Raise a ValueError naming the settings that differ when ``stored`` (bound by earlier results of ``unit`` in
    ``where``) is not ``wanted``; the fix it names is another ``--out`` (earlier results are never overwritten)."""
    if stored != wanted:
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise ValueError(f"{where} holds earlier results of {unit} with other settings ({', '.join(changed)}); "
                         "use another --out (earlier results are never overwritten)")


def done_keys(run: str | Path, unit: str, key: str) -> set:
    """Keys of the items of ``unit`` finished by any shard."""
    return {row[key] for file in progress_files(run, unit) for row in read_rows(file) if key in row}


def merged_rows(run: str | Path, unit: str, key: str, keys: list) -> list[dict]:
    """One row per key, in the order of ``keys``, gathered from every shard of ``unit``.

    A key recorded twice (it cannot be, unless files were copied by hand) keeps its first record in
    :func:`progress_files` order.

    Raises:
        RuntimeError: when some keys have no row (a rank has not finished); names how many and the first.
    """
    by_key: dict = {}
    for file in progress_files(run, unit):
        for row in read_rows(file):
            if key in row:
                by_key.setdefault(row[key], row)
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise RuntimeError(f"{len(missing)} item(s) of {unit} have no result in {Path(run) / SHARDS}, "
                           f"e.g. {key}={missing[0]}; rerun the same command to finish them")
    return [by_key[k] for k in keys]


def count_done(run: str | Path, unit: str, weight: Callable[[dict], int] = lambda row: 1) -> int:
    """Finished items of ``unit`` over all shards (``weight``: items per row, e.g. a batch's size)."""
    return sum(weight(row) for file in progress_files(run, unit) for row in read_rows(file))


def write_failure(folder: Path, failure: ShardFailure) -> None:
    """Record why a rank stopped in ``folder/failure.json`` (written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"rank": failure.rank, "world_size": failure.world_size, "unit": failure.unit, "item": failure.item,
            "message": str(failure), "time": time.time()}
    write_text_atomic(folder / "failure.json", json.dumps(data, indent=1))


def clear_failure(folder: Path) -> None:
    """Forget an earlier failure of this shard (it is being retried)."""
    (folder / "failure.json").unlink(missing_ok=True)


def read_failures(run: str | Path, since: float = 0.0) -> list[dict]:
    """Failures recorded by any shard at or after ``since`` (UNIX time), in rank order."""
    out = []
    for folder in shard_dirs(run):
        file = folder / "failure.json"
        if file.exists():
            data = json.loads(file.read_text())
            if data.get("time", 0.0) >= since:
                out.append(data)
    return out


def fault_point(rank: int, n_done: int, env: dict | None = None) -> None:
    """SIGKILL this process if ``ATTNLAB_FAULT_KILL_AFTER`` asks rank ``rank`` to die after ``n_done`` items.

    A drill for the resume path ("a rank was killed"): the item just recorded is durable, the next is not
    started, and the launcher sees a rank die by a signal. ``ATTNLAB_FAULT_ITEM_DELAY`` slows every item instead.
    """
    env = os.environ if env is None else env
    if env.get(DELAY_ENV):
        time.sleep(float(env[DELAY_ENV]))
    spec = env.get(FAULT_ENV)
    if not spec:
        return
    try:
        want_rank, after = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}; use RANK:N, e.g. 1:3") from None
    if rank == want_rank and n_done >= after:
        os.kill(os.getpid(), signal.SIGKILL)


class OverallBar:
    """Rank 0's tqdm bar over every rank's finished items, read from the shards' progress files.

    Polled at most once per ``every`` seconds, so a long unit does not re-read the files after every item.

    Args:
        run, unit: what to count.
        total: items in the unit.
        enabled: show the bar (rank 0 of a job of several ranks, with progress bars on).
        position: tqdm line (below the per-rank bars).
        weight: items per progress row (a capture batch's size).
    """

    def __init__(self, run: Path, unit: str, total: int, enabled: bool, position: int = 0,
                 weight: Callable[[dict], int] = lambda row: 1, every: float = 1.0) -> None:
        from tqdm.auto import tqdm

        self.run, self.unit, self.weight, self.every = run, unit, weight, every
        self.bar = tqdm(total=total, desc=f"{unit} all ranks", position=position, disable=not enabled)
        self.last = float("-inf")

    def poll(self, force: bool = False) -> None:
        """Re-count the finished items if ``every`` seconds have passed (or ``force``)."""
        if self.bar.disable or (not force and time.monotonic() - self.last < self.every):
            return
        self.last = time.monotonic()
        self.bar.n = count_done(self.run, self.unit, self.weight)
        self.bar.refresh()

    def close(self) -> None:
        """A final count, then close the bar."""
        self.poll(force=True)
        self.bar.close()
