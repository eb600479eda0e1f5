"""Resumable, append-only progress of an evaluation: finished items survive interruption and are never redone.

An evaluation unit (one method on one split) keeps ``progress/<unit>.jsonl`` with one JSON line per finished
item, flushed and fsynced as it is written, next to ``progress/<unit>.settings.json``. Restarting with the same
settings skips the items already there; restarting with different settings is refused, so earlier results are
never silently mixed with new ones. Settings are bound when the first item is recorded: a run that failed before
finishing any item (bad settings) does not block a rerun with others.

A torn last line (the process died mid-write) is dropped on read. A damaged line elsewhere (not JSON, or not an
item record) is skipped with one warning naming the file and line; its item is redone, and the file is compacted
to its readable rows so it does not grow on every rerun.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from attnlab.core.atomic import write_text_atomic
from attnlab.core.shards import parse_log, refuse_other_settings

LOG = logging.getLogger("attnlab")


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
        self.settings_file = self.dir / f"{unit}.settings.json"
        self.settings = json.loads(json.dumps(settings, default=str))
        self.rows = self._read()
        if self.rows and self.settings_file.exists():
            refuse_other_settings(folder, unit, json.loads(self.settings_file.read_text()), self.settings)

    def _read(self) -> list[dict]:
        if not self.file.exists():
            return []
        parsed, bad, tail = parse_log(self.file.read_text(errors="replace"))
        rows = [r for _, r in parsed if self.key in r]
        damaged = sorted(bad + [n for n, r in parsed if self.key not in r])
        for number in damaged:
            LOG.warning("warning: %s line %d is damaged and was skipped; its item will be redone", self.file, number)
        if damaged or tail:
            # Keep only readable rows, so the next append starts on a fresh line and the file does not grow.
            write_text_atomic(self.file, "".join(json.dumps(r, default=str) + "\n" for r in rows))
        return rows

    @property
    def done(self) -> set:
        """Keys of the finished items."""
        return {row[self.key] for row in self.rows}

    def add(self, row: dict) -> None:
        """Record one finished item durably (binding the settings with the first one)."""
        if not self.rows:
            write_text_atomic(self.settings_file, json.dumps(self.settings, indent=1))
        with open(self.file, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)
