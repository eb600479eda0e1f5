"""Data-parallel workers on torch.distributed: detect the launcher, hold the process group, meet at barriers.

attnlab's parallelism is the plain kind: every rank loads the whole model, takes a fixed share of the work
(:func:`assign`: unit ``k`` belongs to rank ``k % world_size``), writes its own files, and ranks meet only at
barriers and to swap small status messages. Processes are started by torch's launcher — ``torchrun`` (``python
-m torch.distributed.run``) or ``accelerate launch``, which starts its workers the same way — never by attnlab
itself: a launched process finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in its environment and joins the group through them.

Backends: ``nccl`` when CUDA is available, else ``gloo``; ``ATTNLAB_DIST_BACKEND`` overrides. The group's timeout
(how long a rank waits for the others at a barrier) is ``ATTNLAB_DIST_TIMEOUT_S`` seconds, 24 hours by
default, because a rank that finishes its share early waits for the slowest one.

Example:
    >>> assign(5, rank=1, world_size=2)
    [1, 3]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEFAULT_TIMEOUT_S = 24 * 3600


def assign(n_units: int, rank: int, world_size: int) -> list[int]:
    """The units of work (of ``n_units``, numbered from 0) that belong to ``rank``: ``k % world_size == rank``.

    Interleaving rather than contiguous blocks keeps ranks balanced when the cost of a unit drifts along the
    data (e.g. POPE files ordered by image) and lets every rank start on the first units.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}; ranks run from 0 to world_size - 1")
    return list(range(rank, n_units, world_size))


def launched(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by a launcher (``RANK`` and ``WORLD_SIZE`` are set)."""
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def launch_info(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from a launcher's environment; a clear ValueError if it is malformed."""
    env = os.environ if env is None else env
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ValueError("RANK/WORLD_SIZE/LOCAL_RANK must be integers set by torchrun or accelerate launch; "
                         "start attnlab with `--workers N` or under `torchrun --nproc-per-node N`") from None
    assign(0, rank, world)  # validates the pair
    return rank, world, local


def choose_backend(env: Mapping[str, str] | None = None) -> str:
    """``nccl`` on CUDA machines, else ``gloo`` (``ATTNLAB_DIST_BACKEND`` overrides)."""
    env = os.environ if env is None else env
    backend = env.get("ATTNLAB_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"ATTNLAB_DIST_BACKEND={backend!r}; use 'gloo' (CPU) or 'nccl' (CUDA)")
    return backend


class PeerFailure(RuntimeError):
    """Another rank of the job died or failed while this one waited for it."""


@dataclass
class Shard:
    """This process's place in a data-parallel job, and the collectives it needs.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes in the job.
        local_rank: rank on this machine (selects the GPU under ``nccl``).
        backend: ``gloo`` or ``nccl``.
        device: where collectives' tensors live (the model's device is :func:`attnlab.hooks.inputs.default_device`).
    """

    rank: int
    world_size: int
    local_rank: int = 0
    backend: str = "gloo"
    device: str = "cpu"
    _released: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prepares shared inputs first and merges at the end."""
        return self.rank == 0

    @property
    def name(self) -> str:
        """The shard's folder name, e.g. ``rank-00001-of-00002``."""
        return f"rank-{self.rank:05d}-of-{self.world_size:05d}"

    def owns(self, unit: int) -> bool:
        """Whether unit ``unit`` (numbered from 0) belongs to this rank (see :func:`assign`)."""
        return unit % self.world_size == self.rank

    def barrier(self) -> None:
        """Wait until every rank reaches this point.

        Raises:
            PeerFailure: when another rank died or failed while this one waited.
        """
        import torch.distributed as dist

        if self.world_size == 1:
            return
        try:
            dist.barrier(device_ids=[self.local_rank]) if self.backend == "nccl" else dist.barrier()
        except RuntimeError as err:  # DistBackendError and the gloo/nccl connection errors
            raise PeerFailure(f"rank {self.rank} of {self.world_size} stopped waiting at a barrier: another rank "
                              f"failed or was killed ({type(err).__name__})") from err

    def gather_json(self, obj) -> list:
        """Every rank's JSON-serialisable ``obj``, in rank order (no pickle: JSON bytes in a uint8 tensor)."""
        import torch.distributed as dist

        if self.world_size == 1:
            return [json.loads(json.dumps(obj, default=str))]
        data = torch.tensor(list(json.dumps(obj, default=str).encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        try:
            dist.all_gather(sizes, size)
            padded = torch.zeros(int(max(s.item() for s in sizes)), dtype=torch.uint8, device=self.device)
            padded[: data.numel()] = data
            chunks = [torch.zeros_like(padded) for _ in range(self.world_size)]
            dist.all_gather(chunks, padded)
        except RuntimeError as err:
            raise PeerFailure(f"rank {self.rank} of {self.world_size} could not gather the ranks' reports: another "
                              f"rank failed or was killed ({type(err).__name__})") from err
        return [json.loads(bytes(c[: int(s.item())].tolist()).decode()) for c, s in zip(chunks, sizes)]

    def wait_for_leader(self) -> None:
        """Followers (rank > 0): block until rank 0 has prepared shared inputs (see :meth:`release_followers`)."""
        if not self.is_main:
            self.barrier()

    def release_followers(self) -> None:
        """Rank 0: let the followers waiting in :meth:`wait_for_leader` go on (once; later calls do nothing)."""
        if self.is_main and not self._released:
            self._released = True
            self.barrier()


@contextmanager
def process_group() -> Iterator[Shard | None]:
    """Join the launcher's process group for the duration of the block; ``None`` when not launched.

    The group is always destroyed on exit, also on exceptions, so a failing rank releases its sockets.
    A group that already exists (a caller's own) is used and left alone.

    Example:
        >>> with process_group() as shard:  # doctest: +SKIP
        ...     shard.rank, shard.world_size
        (1, 2)
    """
    env = os.environ
    if not launched(env):
        yield None
        return
    import torch.distributed as dist

    rank, world, local = launch_info(env)
    backend = choose_backend(env)
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = timedelta(seconds=float(env.get("ATTNLAB_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend, timeout=timeout)
    try:
        yield Shard(rank, world, local, backend, device)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def torchrun_command(n_workers: int, module: str, args: list[str], python: str | None = None) -> list[str]:
    """The command that starts ``python -m module *args`` ``n_workers`` times on this machine under torchrun.

    ``--standalone`` gives a local rendezvous on a free port, so several jobs can run side by side.
    """
    if n_workers < 1:
        raise ValueError(f"--workers must be at least 1, got {n_workers}")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(n_workers), "-m", module, *args]
