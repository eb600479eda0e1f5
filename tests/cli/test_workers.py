"""``--workers N`` re-invokes the same command under torchrun and reports a failed rank by rank and item."""

import os
import subprocess

from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.shards import ShardFailure, shard_dir, write_failure

runner = CliRunner()


def test_spawn_reinvokes_the_command_and_names_the_failed_rank(tmp_path, monkeypatch):
    seen = []

    class FakeLauncher:
        def __init__(self, cmd, preexec_fn=None, stderr=None):
            seen.append(cmd)
            read, write = os.pipe()  # the relay reads the launcher's stderr: an empty, closed one here
            os.close(write)
            self.stderr = os.fdopen(read, "rb")
            write_failure(shard_dir(tmp_path / "e", 1, 3),
                          ShardFailure(1, 3, "pope-random-vhr", "question_id=17", OSError("truncated image")))

        def wait(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", FakeLauncher)
    res = runner.invoke(app, ["eval", "pope", "--model", "toy-llava", "--method", "baseline,mask:1.0,2", "--limit", "6",
                              "--out", str(tmp_path / "e"), "--workers", "3", "--json"])
    assert res.exit_code == 1
    assert res.stderr.strip() == (f"error: rank 1 of 3 failed on pope-random-vhr question_id=17: OSError: truncated image; "
                                  f"finished items are kept in {tmp_path / 'e' / 'shards'}: rerun the same command to resume")
    cmd = seen[0]
    assert cmd[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m", "attnlab.cli.main"]
    args = cmd[8:]
    assert args[:2] == ["eval", "pope"] and "--workers" not in args and "--json" in args
    assert args[args.index("--method") + 1] == "baseline,mask:1.0,2" and args[args.index("--limit") + 1] == "6"
    assert "--questions" not in args  # unset options are left to their defaults


def test_workers_must_be_positive(tmp_path):
    res = runner.invoke(app, ["eval", "pope", "--model", "toy-llava", "--out", str(tmp_path / "e"), "--workers", "0"])
    assert res.exit_code == 2 and "--workers must be at least 1" in res.stderr
