"""``--workers N``: re-run the current command under torchrun, or join the job a launcher started.

A command body decorated with :func:`with_workers` gains a ``workers=`` keyword and receives ``shard=`` (a
:class:`~attnlab.core.distributed.Shard`, or ``None`` in one process):

- not launched, ``workers == 1``: the body runs here, ``shard=None``;
- not launched, ``workers > 1``: the same command line (without ``--workers``) is started under
  ``python -m torch.distributed.run --standalone --nproc-per-node N``; this process waits and reports;
- launched by ``torchrun``/``accelerate launch`` (``RANK``/``WORLD_SIZE`` set): the body runs inside the
  process group. A body that writes shared inputs (the toy world) lets rank 0 go first: followers call
  ``shard.wait_for_leader()`` before reading them and rank 0 calls ``shard.release_followers()`` once they are
  written, so only one process ever writes a shared file.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import typer

from attnlab.core.distributed import PeerFailure, launched, process_group, torchrun_command
from attnlab.core.locks import run_lock
from attnlab.core.shards import SHARDS, ShardFailure, read_failures

EXIT_FAILED = 1
WORKERS_HELP = ("processes on this machine (spawns torchrun); under torchrun/accelerate launch leave it out. "
                "Rerunning the same command resumes")


def current_context():
    """The running command's click context (typer >= 0.20 vendors click as ``typer._click``)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # older typer on the public click
        from click import get_current_context
    return get_current_context()


def command_args(ctx, drop: tuple[str, ...] = ("workers",)) -> list[str]:
    """The command line that reproduces ``ctx``'s command and parameters (minus ``drop``), for re-invocation."""
    path = []
    node = ctx
    while node.parent is not None:
        path.append(node.info_name)
        node = node.parent
    args = list(reversed(path))
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None:
            continue
        if param.param_type_name == "argument":
            args.extend(str(v) for v in (value if param.multiple else [value]))
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            if value or param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for v in value if param.multiple else [value]:
                args.extend([param.opts[0], str(v)])
    return args


def spawn_workers(n_workers: int) -> None:
    """Run the current command as ``n_workers`` ranks under torchrun; raise ``typer.Exit`` if the job fails."""
    ctx = current_context()
    out = ctx.params.get("out")
    started = time.time()
    launcher = subprocess.Popen(torchrun_command(n_workers, "attnlab.cli.main", command_args(ctx)),
                                preexec_fn=die_with_parent, stderr=subprocess.PIPE)
    stopped: list[int] = []
    relay = threading.Thread(target=_relay_stderr, args=(launcher.stderr, stopped), daemon=True)
    relay.start()

    def forward(signum, _frame):  # torchrun passes it on to the workers; what they finished stays on disk
        stopped.append(signum)
        launcher.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        relay.join(timeout=5)
    if stopped:
        where = f" in {Path(out) / SHARDS}" if out else ""
        typer.echo(f"error: stopped by {signal.Signals(stopped[0]).name}; finished items are kept{where}: rerun the "
                   "same command to resume", err=True)
        raise typer.Exit(EXIT_FAILED)
    if code == 0:
        return
    failures = read_failures(out, since=started) if out else []
    cause = (failures[0]["message"] if failures
             else f"the workers failed (torchrun exit code {code}); see their messages above")
    kept = f"; finished items are kept in {Path(out) / SHARDS}: rerun the same command to resume" if out else ""
    typer.echo(f"error: {cause}{kept}", err=True)
    raise typer.Exit(EXIT_FAILED)


def _relay_stderr(stream, stopped: list[int]) -> None:
    """Copy the launcher's and workers' stderr (progress bars included) to ours, until the job is stopped.

    After a SIGINT/SIGTERM the job's own reports (torchrun's ``SignalException`` traceback, the workers' interrupted
    stacks) are dropped: the user asked for the stop, and :func:`spawn_workers` says in one line what was kept.
    """
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    while chunk := os.read(stream.fileno(), 65536):
        if stopped:
            continue
        if out is not None:
            out.write(chunk)
            out.flush()
        else:  # a captured stderr (tests) takes text
            sys.stderr.write(chunk.decode(errors="replace"))


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have Linux send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Set in the torchrun launcher (as it starts) and in every launched worker, so ``kill -9`` of ``attnlab`` or of
    its launcher stops the whole job instead of leaving orphans running to completion. SIGTERM, not SIGKILL: a
    worker stops between durable item records, so the job stays resumable. Elsewhere than Linux it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def with_workers(body: Callable | None = None, *, check: Callable | None = None) -> Callable:
    """Give ``body(*args, shard=..., **kwargs)`` a ``workers=`` keyword (see the module docstring).

    Before any work, ``check(*args, **kwargs)`` (if given) validates the request, and a body with an ``out``
    parameter takes that folder's lock (:func:`attnlab.core.locks.run_lock`) for the whole job, so a second job
    into the same ``--out`` stops at once naming the first. Launched workers die with their launcher
    (:func:`die_with_parent`).

    A :class:`~attnlab.core.shards.ShardFailure` (this rank failed on an item) or a
    :class:`~attnlab.core.distributed.PeerFailure` (another rank died) becomes one ``error:`` line and exit code 1.
    """
    if body is None:
        return functools.partial(with_workers, check=check)

    @functools.wraps(body)
    def wrapper(*args, workers: int = 1, **kwargs):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if check is not None:
            check(*args, **kwargs)
        if not launched():
            out = inspect.signature(body).bind_partial(*args, **kwargs).arguments.get("out")
            with run_lock(out) if out is not None else contextlib.nullcontext():
                if workers > 1:
                    return spawn_workers(workers)
                return _reporting(lambda: body(*args, shard=None, **kwargs))
        die_with_parent()
        with process_group() as shard:
            if workers not in (1, shard.world_size):
                raise ValueError(f"--workers {workers} under a launcher that started {shard.world_size} processes; "
                                 "leave --workers out when starting with torchrun or accelerate launch")
            _reporting(lambda: body(*args, shard=shard, **kwargs))
        # The rank's work is durable and its process group destroyed. Leave without the interpreter's teardown:
        # torch's C++ destructors at exit sometimes abort a finished rank ("terminate called without an active
        # exception", SIGABRT; seen in about 1 run in 4 of tests/cli/test_distributed.py), and torchrun then
        # reports the whole job failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    return wrapper


def _reporting(run: Callable):
    try:
        return run()
    except (ShardFailure, PeerFailure) as err:
        typer.echo(f"error: {err}; finished items are kept: rerun the same command to resume", err=True)
        raise typer.Exit(EXIT_FAILED) from err
