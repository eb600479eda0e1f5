"""Every head of some layers as its own joint query-key embedding: AttentionViz's matrix view (Yeh et al. 2023,
§4), one :class:`~attnlab.probes.qk_embedding.QKEmbedding` fitted per head on the same tokens."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from .qk_embedding import QKEmbedding, faithfulness_record, frame_records
from .qk_vectors import META_COLUMNS, as_traces, gather_layer, resolve_head
from .results import ProbeResult, jsonable


@dataclass(frozen=True, eq=False)
class QKHeadsEmbedding(ProbeResult):
    """Joint query-key embeddings of many heads on the same points (AttentionViz's matrix view).

    Attributes:
        layers: layer of each entry of the first axis; heads: head of each entry of the second.
        coords: ``[L, H, 2M, n_components]``.
        norms: ``[L, H, 2M]`` norms in each head's joint space.
        scales: ``[L, H]`` the ``c`` of each head; correlations: ``[L, H]`` distance/logit Spearman in the joint space.
        layout_correlations: ``[L, H]`` the same Spearman for distances in each head's picture (negative = faithful).
        nearest_key: ``[L, H]`` share of queries whose nearest key in the picture is their most attended key;
        nearest_key_joint: ``[L, H]`` the same share in the joint space;
        nearest_key_chance: that share for a random visible key (the same for every head).
        points: ``2M`` rows of metadata shared by every head (``kind`` and :data:`META_COLUMNS`).
        method, backend: the projection used.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    coords: np.ndarray
    norms: np.ndarray
    scales: np.ndarray
    correlations: np.ndarray
    points: pd.DataFrame
    method: str
    backend: str
    layout_correlations: np.ndarray
    nearest_key: np.ndarray
    nearest_key_joint: np.ndarray
    nearest_key_chance: float
    probe = "qk-embedding-heads"

    def head_frame(self, layer: int, head: int) -> pd.DataFrame:
        """One head's points with ``norm`` and coordinates (the layout of :attr:`QKEmbedding.points_`)."""
        li, hi = self.layers.index(layer), self.heads.index(head)
        frame = self.points.copy()
        frame["norm"] = self.norms[li, hi]
        for axis, name in zip(range(self.coords.shape[-1]), "xyz"):
            frame[name] = self.coords[li, hi, :, axis]
        faith = faithfulness_record(self.layout_correlations[li, hi], self.correlations[li, hi],
                                    self.nearest_key[li, hi], self.nearest_key_joint[li, hi], self.nearest_key_chance)
        frame.attrs.update(method=self.method, layer=layer, head=head, backend=self.backend, faithfulness=faith)
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (layer, head, point)."""
        frames = [self.head_frame(l, h).assign(layer=l, head=h) for l in self.layers for h in self.heads]
        return pd.concat(frames, ignore_index=True)

    def to_dict(self) -> dict:
        """JSON-ready: per head ``c``, correlations and nearest-key agreement, the shared points and every head's
        coordinates."""
        return jsonable({"probe": self.probe, "method": self.method, "backend": self.backend, "layers": self.layers,
                         "heads": self.heads, "scales": self.scales, "correlations": self.correlations,
                         "layout_correlations": self.layout_correlations, "nearest_key": self.nearest_key,
                         "nearest_key_joint": self.nearest_key_joint, "nearest_key_chance": self.nearest_key_chance,
                         "points": frame_records(self.points), "coords": self.coords})


def embed_all_heads(traces, estimator: QKEmbedding | None = None, layers: Iterable[int] | None = None,
                    heads: Iterable[int] | None = None) -> QKHeadsEmbedding:
    """Fit a copy of ``estimator`` (default ``QKEmbedding()``) on every chosen (layer, head).

    Args:
        traces: Traces (or Runs) captured with ``Capture(qk=True)``.
        estimator: the settings to use; cloned per head (scikit-learn ``clone``), never fitted itself.
        layers: layer indices; ``None`` = every layer captured with queries and keys in the first Trace.
        heads: head indices; ``None`` = every head.

    Returns:
        :class:`QKHeadsEmbedding`.
    """
    estimator = QKEmbedding() if estimator is None else estimator
    estimator._check_params()
    loaded = as_traces(traces, None if layers is None else list(layers))
    n_layers = loaded[0].meta.n_layers
    chosen = sorted(i for i, r in loaded[0].layers.items() if r.q is not None) if layers is None else \
        [int(i) % n_layers for i in layers]
    if not chosen:
        loaded[0].require("qk", "embed_all_heads")
        raise ValueError("No layer of the Trace holds queries and keys; capture with Capture(qk=True)")
    n_heads = loaded[0].meta.n_heads
    head_ids = list(range(n_heads)) if heads is None else [resolve_head(n_heads, h) for h in heads]
    coords, norms, scales, corrs, layout_corrs, nearest, nearest_joint = [], [], [], [], [], [], []
    chance, backend, points = 0.0, "", None
    for layer in chosen:
        gathered = gather_layer(loaded, layer)
        row = [clone(estimator).fit_vectors(gathered.head(h), layer=layer, head=h) for h in head_ids]
        coords.append([e.embedding_ for e in row])
        norms.append([e.points_["norm"].to_numpy() for e in row])
        scales.append([e.scale_ for e in row])
        corrs.append([e.correlation_ for e in row])
        layout_corrs.append([e.layout_correlation_ for e in row])
        nearest.append([e.nearest_key_ for e in row])
        nearest_joint.append([e.nearest_key_joint_ for e in row])
        chance, backend, points = row[0].nearest_key_chance_, row[0].backend_, row[0].points_[["kind", *META_COLUMNS]]
    return QKHeadsEmbedding(tuple(chosen), tuple(head_ids), np.asarray(coords), np.asarray(norms),
                            np.asarray(scales), np.asarray(corrs), points, estimator.method, backend,
                            np.asarray(layout_corrs), np.asarray(nearest), np.asarray(nearest_joint), chance)
