"""The Run lock: one job per folder, the second refused naming the first, nothing left behind."""

from __future__ import annotations

import pytest

from attnlab.core.locks import HOLDER_NAME, LOCK_NAME, RunLocked, run_lock


def test_a_second_job_is_refused_naming_the_holder(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLocked, match=r"--out .*run is in use by another attnlab job \(pid \d+"):
            with run_lock(tmp_path / "run"):
                pass


def test_a_finished_job_leaves_nothing_in_the_run_and_the_folder_can_be_locked_again(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        assert (run / LOCK_NAME).exists() and (run / HOLDER_NAME).exists()
    assert list(run.iterdir()) == []
    with run_lock(run):
        pass
    assert list(run.iterdir()) == []


def test_the_lock_goes_on_failure_too(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_lock(run):
            raise RuntimeError("the job failed")
    assert list(run.iterdir()) == []
