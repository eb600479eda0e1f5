"""fresh_directory: the target appears whole or keeps its old contents."""

import pytest

from attnlab.core.atomic import fresh_directory


def test_replaces_the_old_directory_on_success(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with fresh_directory(out) as tmp:
        assert tmp.parent == out.parent and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_a_failure_keeps_the_old_contents_and_cleans_up(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with fresh_directory(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failure_on_a_new_target_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with fresh_directory(tmp_path / "a" / "b"):
            raise RuntimeError("boom")
    assert not (tmp_path / "a" / "b").exists()


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        with fresh_directory(tmp_path / "f"):
            pass


def test_atomic_file_replaces_whole_or_leaves_the_old_file(tmp_path):
    from attnlab.core.atomic import atomic_file

    target = tmp_path / "table.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.txt"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the block ends
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["table.txt"]
