"""Files and directories that appear whole or not at all: write into a temporary sibling, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(file: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``file`` to write; when the block ends it is renamed over ``file``.

    Readers see the old or the new ``file`` whole, never a part. When the block raises, the temporary file is
    removed and ``file`` is untouched.

    Example:
        >>> with atomic_file(folder / "table.parquet") as tmp:  # doctest: +SKIP
        ...     frame.to_parquet(tmp)
    """
    file = Path(file)
    tmp = file.with_name(f".{file.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(file: str | Path, text: str) -> Path:
    """Write ``text`` to ``file`` whole or not at all (:func:`atomic_file`)."""
    with atomic_file(file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(file)


@contextlib.contextmanager
def fresh_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out_dir`` that replaces ``out_dir`` when the block succeeds.

    A crash (or an exception in the block) leaves the old directory, or nothing, in place: never a
    half-written one. The temporary sibling is on the same filesystem, so the final rename is atomic.

    Args:
        out_dir: the directory to create or replace.

    Raises:
        ValueError: ``out_dir`` is an existing file, the current directory or a parent of it.

    Example:
        >>> with fresh_directory("ckpt") as tmp:      # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a directory path")
    here = Path.cwd().resolve()
    if here == out.resolve() or here.is_relative_to(out.resolve()):
        raise ValueError(f"{out} is the current directory or a parent of it; it is never replaced")
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


class ReplaceRefused(ValueError):
    """attnlab will not replace this directory (not its own output of the same kind, or the working directory)."""


def check_replaceable(out: str | Path, kind: str, kind_of: Callable[[Path], str | None], flag: str = "--out") -> None:
    """Refuse unless ``out`` is absent, empty, or an attnlab directory of ``kind`` that is safe to replace.

    Never replaced: the current directory or any parent of it, a symlink, a file, a non-empty directory whose
    kind ``kind_of`` cannot recognise (a user's folder), or an attnlab directory of another kind.

    Args:
        out: the directory a command would replace.
        kind: what the command writes (``capture``, ``dataset``, ``world``, ...).
        kind_of: ``kind_of(path) -> kind or None``, reading the directory's manifest.
        flag: the CLI flag that named ``out``, for the message.

    Raises:
        ReplaceRefused: one line naming ``out`` and why.
    """
    out = Path(out)
    here = Path.cwd().resolve()
    target = out.resolve()
    if here == target or here.is_relative_to(target):
        raise ReplaceRefused(f"{flag} {out} is the current directory or a parent of it; attnlab never replaces it")
    if out.is_symlink():
        raise ReplaceRefused(f"{flag} {out} is a symbolic link; give the directory itself (nothing was replaced)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ReplaceRefused(f"{flag} {out} is a file; attnlab only replaces its own {kind} directories")
    if not any(out.iterdir()):
        return
    found = kind_of(out)
    if found is None:
        raise ReplaceRefused(f"{flag} {out} is not an attnlab {kind} (no valid manifest); attnlab only replaces its "
                             "own output: choose another path (nothing was replaced)")
    if found != kind:
        raise ReplaceRefused(f"{flag} {out} holds an attnlab {found}, not a {kind}; choose another path "
                             "(nothing was replaced)")


@contextlib.contextmanager
def replace_directory(out: str | Path, kind: str, kind_of: Callable[[Path], str | None],
                      flag: str = "--out") -> Iterator[Path]:
    """:func:`fresh_directory` that first checks ``out`` may be replaced (see :func:`check_replaceable`).

    The new directory is written beside ``out``, swapped in with a rename, and the old one is removed last.

    Example:
        >>> with replace_directory("runs/a", "capture", run_kind) as tmp:   # doctest: +SKIP
        ...     (tmp / "manifest.json").write_text("{}")
    """
    check_replaceable(out, kind, kind_of, flag)
    with fresh_directory(out) as tmp:
        yield tmp
