"""One job at a time per output folder: an advisory lock (``filelock``) that names its holder.

Commands that build a Run in place over many steps (``capture --dataset``, ``eval``) take the lock on their
``--out`` for their whole run. A second job into the same folder does not wait: it stops at once with one line
naming the holder (process id, host, command, start time), because two writers would each redo the other's items
and race on the merged files. The lock is released when the holder exits, however it exits (the operating system
drops the lock of a killed process), so a stale lock file never blocks a rerun. A job that ends normally leaves no
lock file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .atomic import write_text_atomic

LOCK_NAME = ".attnlab.lock"
HOLDER_NAME = ".attnlab.lock.json"


class RunLocked(ValueError):
    """Another attnlab job holds the folder's lock."""


def _holder(folder: Path) -> str:
    try:
        info = json.loads((folder / HOLDER_NAME).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is"


@contextlib.contextmanager
def run_lock(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (the folder is created if missing).

    Args:
        folder: the Run directory a job builds in place.
        flag: the CLI flag that named it, for the message.

    Raises:
        RunLocked: another job holds it; the message names that job.

    Example:
        >>> with run_lock("runs/eval"):     # doctest: +SKIP
        ...     ...
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(f"{flag} {folder} is in use by another attnlab job ({_holder(folder)}); wait for it to "
                        "finish or choose another --out") from None
    try:
        write_text_atomic(folder / HOLDER_NAME, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                            "since": time.time(),
                                                            "command": " ".join(["attnlab", *sys.argv[1:]])}))
        yield folder
    finally:
        # The lock file goes before the lock: nothing of the job is left in the Run, and a job starting in between
        # locks a new file while this one only closes its descriptor (its work is done).
        (folder / HOLDER_NAME).unlink(missing_ok=True)
        (folder / LOCK_NAME).unlink(missing_ok=True)
        lock.release()
