"""Mergeable streaming reductions: sums and means, fixed-edge histograms, and a deterministic sample.

Statistics over many inputs (the attention each key receives, per layer and head, over 10,000 prompts;
query/key vectors for a joint embedding) are too large to keep whole. Each worker reduces what it sees into a
small state, the states are written to disk, and a merge folds them together one at a time, so memory is
bounded by one state whatever the number of shards.

Every reducer has the same small interface: ``update(...)`` with new data, ``merge(other)`` with another
reducer of the same kind, ``state()`` / ``from_state()`` as a flat ``{name: numpy array}`` (safetensors-ready,
no pickle), and a result property. Merging is exact for counts and for the sample; float sums are accumulated
in float64, so merged sums agree with a single pass up to float64 rounding.

The sample is a *bottom-k* sample: every element carries an integer id, its priority is a fixed hash of
``(seed, id)``, and the sample is the ``size`` elements of lowest priority. That is a uniform sample without
replacement that does not depend on the order of the data or on how it was split between workers, so a sharded
run draws exactly the sample a one-process run draws.

Example:
    >>> import numpy as np
    >>> a, b = RunningSum((2,)), RunningSum((2,))
    >>> a.update(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> b.update(np.array([[5.0, 6.0]]))
    >>> a.merge(b).mean.tolist()
    [3.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a fixed bijective hash of uint64 values (vectorised, wraps mod 2**64)."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return z ^ (z >> np.uint64(31))


def sample_priority(ids: np.ndarray, seed: int) -> np.ndarray:
    """Priority ``[n]`` uint64 of element ids ``[n]`` under ``seed`` (lower is kept first)."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0):
        raise ValueError("Sample ids must be non-negative integers; number the elements from 0")
    salt = splitmix64(np.array([seed], dtype=np.uint64))[0]
    return splitmix64(ids.astype(np.uint64) ^ salt)


class RunningSum:
    """Sum and count of arrays of a fixed shape; ``mean`` is their ratio.

    Args:
        shape: the shape of one element, e.g. ``(L, H)`` for per-layer, per-head values.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.sum = np.zeros(self.shape, dtype=np.float64)
        self.count = 0

    def update(self, values: np.ndarray) -> None:
        """Add elements ``[n, *shape]``."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[1:] != self.shape:
            raise ValueError(f"RunningSum of shape {self.shape} was given elements of shape {values.shape[1:]}; "
                             "pass values [n, *shape]")
        self.sum += values.sum(axis=0)
        self.count += values.shape[0]

    def merge(self, other: "RunningSum") -> "RunningSum":
        """Fold ``other`` into this sum; returns ``self``."""
        if other.shape != self.shape:
            raise ValueError(f"Cannot merge RunningSum of shape {other.shape} into one of shape {self.shape}")
        self.sum += other.sum
        self.count += other.count
        return self

    @property
    def mean(self) -> np.ndarray:
        """``sum / count`` (NaN before any update)."""
        return self.sum / self.count if self.count else np.full(self.shape, np.nan)

    def state(self) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file."""
        return {"sum": self.sum, "count": np.array([self.count], dtype=np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "RunningSum":
        """Inverse of :meth:`state`."""
        out = cls(state["sum"].shape)
        out.sum = state["sum"].astype(np.float64)
        out.count = int(state["count"][0])
        return out


class Histogram:
    """Counts of values in fixed bins, kept separately for each cell of a leading shape.

    Values below the first edge or above the last are counted in ``below``/``above`` rather than dropped;
    NaN values are not counted. Bins are half-open ``[e_i, e_{i+1})`` except the last, which includes its right
    edge (as ``np.histogram``).

    Args:
        edges: ``[bins + 1]`` increasing bin edges, fixed up front so that states from different workers add.
        shape: the leading shape, e.g. ``(L, H)`` for one histogram per layer and head.
    """

    def __init__(self, edges: np.ndarray, shape: tuple[int, ...] = ()) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("Histogram edges must be a 1-d increasing array with at least two values")
        self.shape = tuple(shape)
        self.counts = np.zeros((*self.shape, self.edges.size - 1), dtype=np.int64)
        self.below = np.zeros(self.shape, dtype=np.int64)
        self.above = np.zeros(self.shape, dtype=np.int64)

    def update(self, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Count values ``[*shape, n]`` (``valid`` ``[*shape, n]`` or broadcastable: which of them to count)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape[: len(self.shape)] != self.shape:
            raise ValueError(f"Histogram of shape {self.shape} was given values of shape {values.shape}")
        flat = values.reshape(*self.shape, -1) if self.shape else values.reshape(-1)
        keep = (np.ones(flat.shape, dtype=bool) if valid is None
                else np.broadcast_to(valid, values.shape).reshape(flat.shape))
        n_bins = self.edges.size - 1
        idx = np.searchsorted(self.edges, flat, side="right") - 1  # (*shape, n) bin of each value
        idx[flat == self.edges[-1]] = n_bins - 1
        keep = keep & ~np.isnan(flat)
        low, high = flat < self.edges[0], flat > self.edges[-1]
        self.below += (low & keep).sum(axis=-1)
        self.above += (high & keep).sum(axis=-1)
        inside = keep & ~low & ~high
        cells = np.arange(int(np.prod(self.shape, dtype=np.int64))).reshape(*self.shape, 1) if self.shape else 0
        flat_idx = (cells * n_bins + idx)[inside]
        self.counts += np.bincount(flat_idx, minlength=self.counts.size).reshape(self.counts.shape)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s counts; returns ``self``."""
        if other.shape != self.shape or not np.array_equal(other.edges, self.edges):
            raise ValueError("Cannot merge histograms with different edges or shapes; "
                             "use the same edges on every worker")
        self.counts += other.counts
        self.below += other.below
        self.above += other.above
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file."""
        return {"edges": self.edges, "counts": self.counts, "below": self.below, "above": self.above}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Histogram":
        """Inverse of :meth:`state`."""
        out = cls(state["edges"], state["below"].shape)
        out.counts = state["counts"].astype(np.int64)
        out.below = state["below"].astype(np.int64).reshape(out.shape)
        out.above = state["above"].astype(np.int64).reshape(out.shape)
        return out


class Reservoir:
    """A deterministic uniform sample of at most ``size`` elements: the ones of lowest hashed priority.

    Args:
        size: the most elements kept.
        seed: the hash seed; the same seed draws the same sample from the same ids.
        payload_shape: the shape of one element's data, e.g. ``(L, 2, H, d_head)`` for queries and keys.
    """

    def __init__(self, size: int, seed: int, payload_shape: tuple[int, ...] = (), dtype=np.float32) -> None:
        if size <= 0:
            raise ValueError(f"Reservoir size must be positive, got {size}")
        self.size, self.seed, self.payload_shape = int(size), int(seed), tuple(payload_shape)
        self.ids = np.zeros(0, dtype=np.int64)
        self.priority = np.zeros(0, dtype=np.uint64)
        self.payload = np.zeros((0, *self.payload_shape), dtype=dtype)

    def update(self, ids: np.ndarray, payload: np.ndarray) -> np.ndarray:
        """Offer elements (ids ``[n]``, payload ``[n, *payload_shape]``); returns the bool ``[n]`` of those kept now.

        An element that is in the final sample is always kept when offered, so writing only the kept
        elements of each batch loses nothing that a later merge could want.
        """
        ids = np.asarray(ids, dtype=np.int64)
        payload = np.asarray(payload)
        if payload.shape != (ids.size, *self.payload_shape):
            raise ValueError(f"Reservoir payload must be [n, *{self.payload_shape}]; "
                             f"got {payload.shape} for {ids.size} ids")
        fresh = ~np.isin(ids, self.ids)
        fresh[np.setdiff1d(np.arange(ids.size), np.unique(ids, return_index=True)[1])] = False  # repeated ids
        priority = sample_priority(ids, self.seed)
        all_ids = np.concatenate([self.ids, ids[fresh]])
        all_pri = np.concatenate([self.priority, priority[fresh]])
        all_pay = np.concatenate([self.payload, payload[fresh].astype(self.payload.dtype)])
        order = np.lexsort((all_ids, all_pri))[: self.size]  # by priority, ties by id
        self.ids, self.priority, self.payload = all_ids[order], all_pri[order], all_pay[order]
        return np.isin(ids, self.ids) & fresh

    def merge(self, other: "Reservoir") -> "Reservoir":
        """Keep the lowest-priority ``size`` of both samples; returns ``self``."""
        if (other.seed, other.payload_shape) != (self.seed, self.payload_shape):
            raise ValueError("Cannot merge samples drawn with different seeds or payload shapes")
        self.update(other.ids, other.payload)
        return self

    def sorted_by_id(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [n], payload [n, ...])`` ordered by id (a stable order for storage and comparison)."""
        order = np.argsort(self.ids, kind="stable")
        return self.ids[order], self.payload[order]

    def state(self) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file."""
        return {"ids": self.ids, "payload": self.payload,
                "config": np.array([self.size, self.seed], dtype=np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Reservoir":
        """Inverse of :meth:`state`."""
        size, seed = (int(v) for v in state["config"])
        out = cls(size, seed, state["payload"].shape[1:], state["payload"].dtype)
        out.update(state["ids"], state["payload"])
        return out


R = TypeVar("R", RunningSum, Histogram, Reservoir)


def merge_all(reducers: Iterable[R]) -> R | None:
    """Fold reducers one at a time (an iterator of states read lazily keeps one in memory at a time)."""
    total = None
    for reducer in reducers:
        total = reducer if total is None else total.merge(reducer)
    return total
