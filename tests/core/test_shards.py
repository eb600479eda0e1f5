"""Shard assignment, the shard layout read back without touching writers, item-level resume and failures."""

import json
import socket

import pytest

from attnlab.core.distributed import Shard, assign, launch_info, process_group, torchrun_command
from attnlab.core.shards import (ShardFailure, check_settings, done_keys, merged_rows, read_failures, read_rows,
                                 shard_dir, shard_dirs)
from attnlab.jobs.progress import Progress
from attnlab.jobs.sharded import run_items


@pytest.mark.parametrize("n,world", [(0, 1), (1, 3), (10, 2), (11, 4), (7, 7), (5, 8)])
def test_assignment_partitions_the_items_evenly(n, world):
    shares = [assign(n, r, world) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(i % world == r for r, s in enumerate(shares) for i in s)
    assert all(Shard(r, world).owns(i) for r, s in enumerate(shares) for i in s)


def test_bad_ranks_and_launch_env_are_refused():
    with pytest.raises(ValueError, match="not in a world of size 2"):
        assign(4, 2, 2)
    with pytest.raises(ValueError, match="torchrun"):
        launch_info({"RANK": "x", "WORLD_SIZE": "2"})
    assert launch_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    cmd = torchrun_command(3, "attnlab.cli.main", ["eval", "pope"], python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m",
                   "attnlab.cli.main", "eval", "pope"]


def test_process_group_of_one_gathers_and_is_torn_down(monkeypatch):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "ATTNLAB_DIST_BACKEND": "gloo"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with process_group() as shard:
        assert dist.is_initialized() and shard.name == "rank-00000-of-00001"
        assert shard.gather_json({"done": [1, 2]}) == [{"done": [1, 2]}]
        shard.barrier()
    assert not dist.is_initialized()


def test_reader_skips_a_torn_line_without_rewriting(tmp_path):
    file = tmp_path / "p.jsonl"
    text = '{"question_id": 0}\n{"question_id": 1}\n{"question_id": 2, "ans'
    file.write_text(text)
    assert read_rows(file) == [{"question_id": 0}, {"question_id": 1}]
    assert file.read_text() == text  # another rank may be appending: never repaired by a reader


def test_settings_guard_spans_every_shard(tmp_path):
    prog = Progress(shard_dir(tmp_path, 1, 2), "pope-x", {"limit": 8, "method": "vhr"}, key="question_id")
    check_settings(tmp_path, "pope-x", {"limit": 9, "method": "vhr"})  # nothing finished yet: nothing is bound
    prog.add({"question_id": 1})
    check_settings(tmp_path, "pope-x", {"limit": 8, "method": "vhr"})
    with pytest.raises(ValueError, match=r"other settings \(limit\); use another --out"):
        check_settings(tmp_path, "pope-x", {"limit": 9, "method": "vhr"})


def test_merged_rows_are_in_item_order_and_missing_items_are_named(tmp_path):
    for rank, keys in ((0, [10, 30]), (1, [20])):
        prog = Progress(shard_dir(tmp_path, rank, 2), "u", {}, key="k")
        for k in keys:
            prog.add({"k": k, "v": k * 2})
    assert [r["k"] for r in merged_rows(tmp_path, "u", "k", [30, 10, 20])] == [30, 10, 20]
    assert [p.name for p in shard_dirs(tmp_path)] == ["rank-00000-of-00002", "rank-00001-of-00002"]
    with pytest.raises(RuntimeError, match="1 item.* k=40; rerun"):
        merged_rows(tmp_path, "u", "k", [10, 20, 30, 40])


def test_failing_rank_names_itself_and_a_rerun_with_other_workers_redoes_nothing(tmp_path):
    keys = [100, 101, 102, 103, 104, 105]
    calls = []

    def work(i, fail_on=None):
        calls.append(i)
        if keys[i] == fail_on:
            raise OSError("image file is truncated")
        return {"question_id": keys[i], "answer": f"a{i}"}

    # Rank 1 of 2 owns items 1, 3, 5; it finishes item 1 and fails on item 3 (before any barrier).
    with pytest.raises(ShardFailure, match=r"rank 1 of 2 failed on u question_id=103: OSError: image file is truncated"):
        run_items(tmp_path, "u", {"s": 1}, "question_id", keys, lambda i: work(i, fail_on=103),
                  shard=Shard(1, 2), progress_bar=False)
    assert calls == [1, 3] and done_keys(tmp_path, "u", "question_id") == {101}
    assert read_failures(tmp_path)[0]["item"] == "question_id=103"
    # One process resumes: the item rank 1 finished is not redone; the rows come back in item order.
    calls.clear()
    rows = run_items(tmp_path, "u", {"s": 1}, "question_id", keys, work, progress_bar=False)
    assert calls == [0, 2, 3, 4, 5]
    assert [r["answer"] for r in rows] == [f"a{i}" for i in range(6)]
    with pytest.raises(ValueError, match=r"other settings \(s\)"):
        run_items(tmp_path, "u", {"s": 2}, "question_id", keys, work, progress_bar=False)
    assert json.loads((tmp_path / "progress" / "u.settings.json").read_text()) == {"s": 1}
