"""The two properties of high-norm artifact tokens (Darcet et al., "Vision Transformers Need
Registers", ICLR 2024, Sec. 2.1), tested on a :class:`RegisterResult`.

1. Low information at the input: artifacts appear on patches very similar to their 4 neighbours
   right after the patch embedding (redundant background). Measured as the mean cosine similarity
   of each patch's input embedding to its up/down/left/right grid neighbours. The paper takes the
   patch embedding itself; ``Trace.embeddings`` is the hidden state entering layer 0, which for
   Hugging Face ViTs already includes the position embedding (a smooth term shared by neighbours,
   so similarities are higher for every patch, artifacts and normal tokens alike).
2. Global, not local, information at the output: linear probes on single output tokens predict
   the patch's own position and pixels worse, and an image-level label better, from artifact
   tokens than from normal tokens. Probes here: ridge regression to the patch ``(row, col)``
   (mean Euclidean error in patches and exact-cell accuracy), ridge regression to the patch's
   pixels (mean squared error), logistic regression to the image label (accuracy). Each group
   (artifact, normal) gets its own probe, trained on the same number of tokens (normal tokens are
   subsampled to the artifact count), with images split into train and test sets so no image is
   on both sides. Labels and pixels are inputs: the probe never sees images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attnlab.core.trace import Trace

from .registers import RegisterResult
from .results import ProbeResult
from .tokens import to_numpy

GROUPS = ("artifact", "normal")


@dataclass(frozen=True, eq=False)
class ArtifactProperties(ProbeResult):
    """Darcet et al.'s two properties, for artifact vs normal tokens.

    Attributes:
        layer: the layer whose artifacts and output tokens were used.
        neighbour_similarity: ``{group: mean cosine similarity to grid neighbours at the input}``.
        position_error: ``{group: mean distance in patches of the predicted (row, col)}`` (lower = more local).
        position_accuracy: ``{group: share of tokens whose rounded prediction is their own cell}``.
        pixel_mse: ``{group: mean squared error of the pixel reconstruction}`` (NaN without pixels).
        label_accuracy: ``{group: image-label accuracy}`` (higher = more global; NaN without labels).
        n_train: ``{group: training tokens}``.
        n_test: ``{group: test tokens}``.
    """

    layer: int
    neighbour_similarity: dict[str, float]
    position_error: dict[str, float] = field(default_factory=dict)
    position_accuracy: dict[str, float] = field(default_factory=dict)
    pixel_mse: dict[str, float] = field(default_factory=dict)
    label_accuracy: dict[str, float] = field(default_factory=dict)
    n_train: dict[str, int] = field(default_factory=dict)
    n_test: dict[str, int] = field(default_factory=dict)
    probe = "artifact-properties"

    def to_frame(self) -> pd.DataFrame:
        """One row per (measure, group)."""
        measures = ("neighbour_similarity", "position_error", "position_accuracy", "pixel_mse", "label_accuracy")
        return pd.DataFrame([{"measure": m, "group": g, "value": getattr(self, m).get(g, np.nan)}
                             for m in measures for g in GROUPS])


@dataclass(frozen=True)
class _Patches:
    """Patch tokens of the whole batch, flattened: features ``[P, d]`` and their bookkeeping ``[P]``."""

    features: np.ndarray
    image: np.ndarray
    row: np.ndarray
    col: np.ndarray
    artifact: np.ndarray
    similarity: np.ndarray
    order: np.ndarray  # index of the patch within its batch item (for pixel targets)


def _neighbour_similarity(emb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[rows * cols]`` mean cosine similarity of each patch embedding ``[rows * cols, d]`` to its 4-neighbours."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    g = unit.reshape(grid[0], grid[1], -1)  # (rows, cols, d)
    total, count = np.zeros(grid), np.zeros(grid)
    for axis in (0, 1):
        sim = (np.take(g, range(1, g.shape[axis]), axis=axis) * np.take(g, range(g.shape[axis] - 1), axis=axis)).sum(-1)
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        total[tuple(lo)] += sim
        count[tuple(lo)] += 1
        total[tuple(hi)] += sim
        count[tuple(hi)] += 1
    return (total / np.maximum(count, 1)).ravel()


def _collect(trace: Trace, result: RegisterResult, li: int) -> _Patches:
    """Gather the patch tokens of every image segment with a grid."""
    if trace.embeddings is None:
        raise ValueError("artifact_properties needs the input embeddings; capture again with Capture(resid=True)")
    out = to_numpy(trace.layers[result.layers[li]].resid)  # (B, N, d)
    emb = to_numpy(trace.embeddings)  # (B, N, d)
    parts = {k: [] for k in ("features", "image", "row", "col", "artifact", "similarity", "order")}
    for b, segs in enumerate(trace.segments):
        done = 0
        for seg in (s for s in segs if s.kind == "image" and s.grid is not None):
            idx = np.arange(seg.start, seg.end)
            rows, cols = np.divmod(np.arange(seg.length), seg.grid[1])
            for key, value in (("features", out[b, idx]), ("image", np.full(idx.size, b)), ("row", rows),
                               ("col", cols), ("artifact", result.is_artifact[li, b, idx]),
                               ("similarity", _neighbour_similarity(emb[b, idx], seg.grid)),
                               ("order", done + np.arange(idx.size))):
                parts[key].append(value)
            done += idx.size
    if not parts["features"]:
        raise ValueError("artifact_properties needs image segments with a patch grid (Segment.grid)")
    return _Patches(**{k: np.concatenate(v) for k, v in parts.items()})


def _split(n_images: int, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``[n_images]`` bool, True for test images."""
    if n_images < 2:
        raise ValueError("artifact_properties needs at least 2 images (batch items) to train and test the probes")
    n_test = min(n_images - 1, max(1, int(round(n_images * test_fraction))))
    test = np.zeros(n_images, dtype=bool)
    test[rng.permutation(n_images)[:n_test]] = True
    return test


def _fit_score(kind: str, x_tr, y_tr, x_te, y_te, alpha: float) -> tuple[float, float]:
    """Train one probe and score it: ``(main metric, secondary metric or NaN)``."""
    if kind == "label":
        if np.unique(y_tr).size < 2:
            return np.nan, np.nan
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return float((model.fit(x_tr, y_tr).predict(x_te) == y_te).mean()), np.nan
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_tr, y_tr)
    pred = model.predict(x_te)
    if kind == "position":
        err = float(np.linalg.norm(pred - y_te, axis=-1).mean())
        return err, float((np.round(pred) == y_te).all(axis=-1).mean())
    return float(((pred - y_te) ** 2).mean()), np.nan


def artifact_properties(
    trace: Trace, result: RegisterResult, *, layer: int = -1, image_labels=None, patch_targets=None,
    test_fraction: float = 0.5, ridge_alpha: float = 1.0, random_state: int = 0,
) -> ArtifactProperties:
    """Test the low-information and global-information properties of the artifacts in ``result``.

    Args:
        trace: the Trace ``result`` came from (``resid`` captured; ``embeddings`` present).
        result: :func:`high_norm_tokens` output.
        layer: index into ``result.layers`` whose artifacts and output tokens to use (-1: the output).
        image_labels: ``[B]`` image-level class of every batch item, or ``None`` to skip that probe.
        patch_targets: ``patch_targets[b]`` ``[n_patches_b, P]`` pixels of each patch of item ``b`` (image
            segments in sequence order), or ``None`` to skip that probe.
        test_fraction: share of images held out.
        ridge_alpha: ridge penalty of the position and pixel probes.
        random_state: seed for the image split and the subsampling.

    Returns:
        :class:`ArtifactProperties` (probe metrics NaN where a group has no tokens on either side).
    """
    patches = _collect(trace, result, layer)
    groups = {"artifact": patches.artifact, "normal": ~patches.artifact}
    similarity = {g: float(patches.similarity[m].mean()) if m.any() else np.nan for g, m in groups.items()}
    rng = np.random.default_rng(random_state)
    test = _split(trace.batch_size, test_fraction, rng)[patches.image]  # (P,)
    targets = {"position": np.stack([patches.row, patches.col], axis=1).astype(float)}
    if image_labels is not None:
        targets["label"] = np.asarray(image_labels)[patches.image]
    if patch_targets is not None:
        targets["pixels"] = np.stack([np.asarray(patch_targets[b])[o].ravel()
                                      for b, o in zip(patches.image, patches.order)])
    n_art = int((groups["artifact"] & ~test).sum())
    scores = {k: {} for k in ("position", "accuracy", "pixels", "label")}
    n_train, n_test = {}, {}
    for g, m in groups.items():
        train_idx = np.flatnonzero(m & ~test)
        if g == "normal":  # as many training tokens as the artifacts have
            train_idx = rng.choice(train_idx, size=min(n_art, train_idx.size), replace=False)
        test_idx = np.flatnonzero(m & test)
        n_train[g], n_test[g] = int(train_idx.size), int(test_idx.size)
        for kind, y in targets.items():
            if train_idx.size < 2 or test_idx.size == 0:
                main, extra = np.nan, np.nan
            else:
                main, extra = _fit_score(kind, patches.features[train_idx], y[train_idx],
                                         patches.features[test_idx], y[test_idx], ridge_alpha)
            scores[kind][g] = main
            if kind == "position":
                scores["accuracy"][g] = extra
    return ArtifactProperties(
        layer=int(result.layers[layer]), neighbour_similarity=similarity, position_error=scores["position"],
        position_accuracy=scores["accuracy"], pixel_mse=scores["pixels"], label_accuracy=scores["label"],
        n_train=n_train, n_test=n_test,
    )
