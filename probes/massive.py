"""Massive activations (Sun, Chen, Kolter & Liu, "Massive Activations in Large Language Models", COLM 2024).

An activation ``h[t, d]`` of a layer's output hidden state is massive when ``|h| > 100`` and
``|h| >= 1000 * median(|h|)``, the median taken over that hidden state (all real tokens and
dimensions of the sequence). Paper defaults: floor 100, ratio 1000; the reference code hooks every
decoder layer's output (``Trace.layers[i].resid`` here) and plots the top-1/2/3 ``|h|`` against the
median per layer. The paper's "at least or around 1,000 times" is read as ``>=``; the floor as ``>``.

Small models rarely pass the absolute floor of 100 (it was chosen for 7B-scale LLMs); pass
``abs_floor=None`` to use the relative test alone, or a smaller floor.

The link to attention sinks (:func:`sink_overlap`): Sun et al. find that attention concentrates on
the tokens that carry massive activations; the overlap reports which share of sink tokens carry one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.trace import Trace

from .results import ProbeResult
from .sinks import SinkResult
from .tokens import select_layers, to_numpy, token_mask


@dataclass(frozen=True, eq=False)
class MassiveResult(ProbeResult):
    """Massive activations found in the layer outputs.

    Attributes:
        entries: ``[M, 4]`` int rows ``(layer, batch, position, dim)`` of every massive activation.
        values: ``[M]`` their signed values.
        top: ``[L, B, k]`` the ``k`` largest ``|h|`` of each layer's output (real tokens), descending.
        median: ``[L, B]`` median ``|h|`` of each layer's output.
        layers: layer of each entry of the first axis of ``top``/``median``.
        tokens: ``tokens[b][n]``.
        abs_floor: the absolute floor (``None``: relative test only).
        ratio: the multiple of the median.
    """

    entries: np.ndarray
    values: np.ndarray
    top: np.ndarray
    median: np.ndarray
    layers: tuple[int, ...]
    tokens: list[list[str]]
    abs_floor: float | None
    ratio: float
    probe = "massive"

    @property
    def dims(self) -> tuple[int, ...]:
        """Hidden dimensions that carry a massive activation anywhere."""
        return tuple(int(d) for d in np.unique(self.entries[:, 3]))

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        """``(batch, position)`` pairs that carry a massive activation in some layer."""
        return tuple(sorted({(int(b), int(n)) for b, n in self.entries[:, 1:3]}))

    @property
    def massive_layers(self) -> tuple[int, ...]:
        """Layers whose output has a massive activation."""
        return tuple(int(i) for i in np.unique(self.entries[:, 0]))

    def to_frame(self) -> pd.DataFrame:
        """One row per massive activation: ``layer, batch, position, token, dim, value, ratio_to_median``."""
        layer, b, n, d = (self.entries[:, i] for i in range(4))
        row = np.searchsorted(np.asarray(self.layers), layer)
        return pd.DataFrame({
            "layer": layer, "batch": b, "position": n, "token": [self.tokens[bb][nn] for bb, nn in zip(b, n)],
            "dim": d, "value": self.values, "ratio_to_median": np.abs(self.values) / self.median[row, b],
        })

    def layer_frame(self) -> pd.DataFrame:
        """One row per (layer, batch): ``top1..topk`` and ``median`` (the reference's layer-wise plot)."""
        rows = []
        for li, layer in enumerate(self.layers):
            for b in range(self.top.shape[1]):
                rows.append({"layer": layer, "batch": b, "median": self.median[li, b],
                             **{f"top{k + 1}": self.top[li, b, k] for k in range(self.top.shape[2])}})
        return pd.DataFrame(rows)


def massive_activations(
    trace: Trace, *, abs_floor: float | None = 100.0, ratio: float = 1000.0, top_k: int = 3, layers=None,
) -> MassiveResult:
    """Find massive activations in every captured layer output.

    Args:
        trace: a Trace captured with ``Capture(resid=True)``.
        abs_floor: ``|h|`` must exceed this (100); ``None`` drops the absolute test.
        ratio: ``|h|`` must be at least this multiple of the layer's median ``|h|`` (1000).
        top_k: how many of the largest magnitudes to keep per layer (3, as the reference plot).
        layers: layers to scan; ``None`` = every captured layer.

    Returns:
        :class:`MassiveResult`.

    Example:
        >>> massive_activations(trace, abs_floor=None).dims   # doctest: +SKIP
    """
    trace.require("resid", "massive_activations")
    chosen = select_layers(trace, layers, "resid", "massive_activations", default="captured")
    mask = token_mask(trace)
    bsz = mask.shape[0]
    entries, values = [], []
    top = np.zeros((len(chosen), bsz, top_k))  # (L, B, k)
    median = np.zeros((len(chosen), bsz))  # (L, B)
    for li, layer in enumerate(chosen):
        hidden = to_numpy(trace.layers[layer].resid)  # (B, N, d)
        for b in range(bsz):
            mag = np.abs(hidden[b][mask[b]])  # (n, d)
            median[li, b] = np.median(mag)
            flat = mag.ravel()
            k = min(top_k, flat.size)
            top[li, b, :k] = np.sort(np.partition(flat, flat.size - k)[flat.size - k :])[::-1]
            hit = mag >= ratio * median[li, b]
            if abs_floor is not None:
                hit &= mag > abs_floor
            rows, dims = np.nonzero(hit)
            pos = trace.real_positions(b).numpy()[rows]
            entries.append(np.stack([np.full(pos.size, layer), np.full(pos.size, b), pos, dims], axis=1))
            values.append(hidden[b][pos, dims])
    return MassiveResult(
        entries=np.concatenate(entries).astype(int) if entries else np.zeros((0, 4), int),
        values=np.concatenate(values) if values else np.zeros(0), top=top, median=median, layers=chosen,
        tokens=[list(t) for t in trace.tokens], abs_floor=abs_floor, ratio=float(ratio),
    )


@dataclass(frozen=True, eq=False)
class SinkOverlap(ProbeResult):
    """How many attention-sink tokens carry massive activations.

    Attributes:
        fraction: share of sink tokens (``(batch, position)`` pairs, any layer and head) with a massive
            activation in some layer; NaN when there are no sinks.
        sink_positions: the sink tokens.
        massive_positions: the tokens with massive activations.
        shared: sink tokens that carry one.
    """

    fraction: float
    sink_positions: tuple[tuple[int, int], ...]
    massive_positions: tuple[tuple[int, int], ...]
    shared: tuple[tuple[int, int], ...]
    probe = "sink-overlap"

    def to_frame(self) -> pd.DataFrame:
        """One row per sink token with a ``massive`` flag."""
        shared = set(self.shared)
        return pd.DataFrame([{"batch": b, "position": n, "massive": (b, n) in shared} for b, n in self.sink_positions],
                            columns=["batch", "position", "massive"])


def sink_overlap(massive: MassiveResult, sinks: SinkResult) -> SinkOverlap:
    """Fraction of sink tokens that carry massive activations (both results from the same Trace).

    Raises:
        ValueError: the results come from different inputs (their tokens differ).
    """
    if massive.tokens != sinks.tokens:
        raise ValueError("sink_overlap needs a MassiveResult and a SinkResult of the same Trace; their tokens differ")
    _, b, _, n = np.nonzero(sinks.is_sink)
    sink_pos = tuple(sorted({(int(x), int(y)) for x, y in zip(b, n)}))
    mass_pos = massive.positions
    shared = tuple(p for p in sink_pos if p in set(mass_pos))
    fraction = len(shared) / len(sink_pos) if sink_pos else float("nan")
    return SinkOverlap(fraction=fraction, sink_positions=sink_pos, massive_positions=mass_pos, shared=shared)
