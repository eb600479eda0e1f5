"""Directories that appear whole or not at all: write into a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fresh_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir`` that replaces ``out_dir`` when the block succeeds.

    A crash (or an exception in the block) leaves the old directory, or nothing, in place: never a
    half-written one. The temporary sibling is on the same filesystem, so the final rename is atomic.

    Args:
        out_dir: the directory to create or replace.

    Raises:
        ValueError: ``out_dir`` is an existing file.

    Example:
        >>> with fresh_directory("ckpt") as tmp:      # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a directory path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result should read like any directory
        if out.exists():
            old = tmp.with_name(tmp.name + ".old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
