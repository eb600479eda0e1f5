"""Resumable, append-only progress of an evaluation: finished items survive interruption and are never redone.

An evaluation unit (one method on one split) keeps ``progress/<unit>.jsonl`` with one JSON line per finished
item, flushed and fsynced as it is written, next to ``progress/<unit>.settings.json``. Restarting with the same
settings skips the items already there; restarting with different settings is refused, so earlier results are
never silently mixed with new ones. A torn last line (the process died mid-write) is dropped on read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Progress:
    """Append-only record of finished items of one evaluation unit.

    Args:
        folder: the eval Run directory.
        unit: unit name, e.g. ``"pope-random-vhr"``.
        settings: everything that determines the items' results; must match on resume.
        key: the item field that identifies an item (e.g. ``"question_id"``).
    """

    def __init__(self, folder: Path, unit: str, settings: dict, key: str) -> None:
        self.dir = Path(folder) / "progress"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / f"{unit}.jsonl"
        self.key = key
        settings_file = self.dir / f"{unit}.settings.json"
        wanted = json.loads(json.dumps(settings, default=str))
        if settings_file.exists():
            stored = json.loads(settings_file.read_text())
            if stored != wanted:
                changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
                raise ValueError(f"{folder} holds an earlier evaluation of {unit} with other settings ({', '.join(changed)}); "
                                 "use another --out (earlier results are never overwritten)")
        else:
            tmp = settings_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(wanted, indent=1))
            os.replace(tmp, settings_file)
        self.rows = self._read()

    def _read(self) -> list[dict]:
        if not self.file.exists():
            return []
        rows, text = [], self.file.read_text()
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn final line from an interrupted write
        if not text.endswith("\n") and text:
            # Drop the torn tail so the next append starts on a fresh line.
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
            os.replace(tmp, self.file)
        return rows

    @property
    def done(self) -> set:
        """Keys of the finished items."""
        return {row[self.key] for row in self.rows}

    def add(self, row: dict) -> None:
        """Record one finished item durably."""
        with open(self.file, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)
