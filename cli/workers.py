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

import functools
import subprocess
import time
from pathlib import Path
from typing import Callable

import typer

from attnlab.core.distributed import PeerFailure, launched, process_group, torchrun_command
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
    code = subprocess.call(torchrun_command(n_workers, "attnlab.cli.main", command_args(ctx)))
    if code == 0:
        return
    failures = read_failures(out, since=started) if out else []
    cause = (failures[0]["message"] if failures
             else f"the workers failed (torchrun exit code {code}); see their messages above")
    kept = f"; finished items are kept in {Path(out) / SHARDS}: rerun the same command to resume" if out else ""
    typer.echo(f"error: {cause}{kept}", err=True)
    raise typer.Exit(EXIT_FAILED)


def with_workers(body: Callable) -> Callable:
    """Give ``body(*args, shard=..., **kwargs)`` a ``workers=`` keyword (see the module docstring).

    A :class:`~attnlab.core.shards.ShardFailure` (this rank failed on an item) or a
    :class:`~attnlab.core.distributed.PeerFailure` (another rank died) becomes one ``error:`` line and exit code 1.
    """

    @functools.wraps(body)
    def wrapper(*args, workers: int = 1, **kwargs):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if not launched():
            if workers > 1:
                return spawn_workers(workers)
            return _reporting(lambda: body(*args, shard=None, **kwargs))
        with process_group() as shard:
            if workers not in (1, shard.world_size):
                raise ValueError(f"--workers {workers} under a launcher that started {shard.world_size} processes; "
                                 "leave --workers out when starting with torchrun or accelerate launch")
            return _reporting(lambda: body(*args, shard=shard, **kwargs))

    return wrapper


def _reporting(run: Callable):
    try:
        return run()
    except (ShardFailure, PeerFailure) as err:
        typer.echo(f"error: {err}; finished items are kept: rerun the same command to resume", err=True)
        raise typer.Exit(EXIT_FAILED) from err
