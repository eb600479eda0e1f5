"""Progress files: a damaged line costs one item, not the eval; settings bind with the first result."""

import json
import logging

import pytest

from attnlab.core.shards import merged_rows
from attnlab.jobs.progress import Progress
from attnlab.jobs.sharded import run_items


def rows_text(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_damaged_line_is_skipped_named_redone_and_compacted(tmp_path, caplog):
    file = tmp_path / "progress" / "u.jsonl"
    file.parent.mkdir()
    file.write_text(rows_text({"k": 0}) + "{broken\n" + rows_text({"k": 2}) + '"not a row"\n' + rows_text({"k": 3}))
    calls = []

    def work(i):
        calls.append(i)
        return {"k": i}

    with caplog.at_level(logging.WARNING, logger="attnlab"):
        rows = run_items(tmp_path, "u", {}, "k", [0, 1, 2, 3], work, progress_bar=False)
    assert calls == [1]  # only the item whose line was damaged is redone
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"warning: {file} line 2 is damaged and was skipped; its item will be redone",
                      f"warning: {file} line 4 is damaged and was skipped; its item will be redone"]
    assert file.read_text() == rows_text({"k": 0}, {"k": 2}, {"k": 3}, {"k": 1})  # compacted, then appended
    again = run_items(tmp_path, "u", {}, "k", [0, 1, 2, 3], work, progress_bar=False)
    assert calls == [1] and [r["k"] for r in again] == [0, 1, 2, 3]
    assert len(file.read_text().splitlines()) == 4  # a rerun does not grow the file


def test_settings_bind_only_once_a_result_exists(tmp_path):
    Progress(tmp_path, "u", {"max_new_tokens": 0}, key="k")  # failed before any item: binds nothing
    prog = Progress(tmp_path, "u", {"max_new_tokens": 8}, key="k")
    prog.add({"k": 1})
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens\); use another --out"):
        Progress(tmp_path, "u", {"max_new_tokens": 4}, key="k")
    assert [r["k"] for r in merged_rows(tmp_path, "u", "k", [1])] == [1]
