"""High-norm artifact tokens in vision transformers (Darcet, Oquab, Mairal & Bojanowski, "Vision
Transformers Need Registers", ICLR 2024).

Darcet et al. compute the L2 norm of every output patch token and call a token an artifact when
its norm exceeds a cutoff read off a clearly bimodal histogram (150 for DINOv2 ViT-g, where 2.37%
of tokens pass; the cutoff differs per model). Here the cutoff is found per layer from the pooled
patch-token norms by :func:`norm_threshold` (the valley of the bimodal histogram, or ``None`` on
unimodal data), unless a fixed ``threshold`` is given. Per layer the result gives the fraction of
artifact patches, the first layer where they appear and their positions on the patch grid.

Patch tokens are the positions in ``image`` segments; tokens of ``register`` segments (learned
registers) are never patches, and their norms are reported separately. For an LVLM pass the vision
tower's Trace (``trace.vision``).

The two properties of artifacts are tested by :func:`artifact_properties`; see there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.trace import Segment, Trace

from .norm_threshold import norm_threshold
from .results import PatchGrid, ProbeResult, patch_grids
from .tokens import select_layers, to_numpy, token_mask


@dataclass(frozen=True, eq=False)
class RegisterResult(ProbeResult):
    """High-norm (artifact) patch tokens per layer.

    Attributes:
        norms: ``[L, B, N]`` L2 norm of every token's layer output.
        patch_mask: ``[B, N]`` patch tokens (image segments).
        register_mask: ``[B, N]`` register tokens.
        thresholds: ``[L]`` norm cutoff per layer (NaN: no artifacts at that layer).
        is_artifact: ``[L, B, N]`` patch tokens above the cutoff.
        layers: layer of each entry of the first axis.
        tokens: ``tokens[b][n]``.
        segments: ``segments[b]``.
        fixed_threshold: the cutoff given by the caller, or ``None`` when found per layer.
    """

    norms: np.ndarray
    patch_mask: np.ndarray
    register_mask: np.ndarray
    thresholds: np.ndarray
    is_artifact: np.ndarray
    layers: tuple[int, ...]
    tokens: list[list[str]]
    segments: list[list[Segment]]
    fixed_threshold: float | None
    probe = "registers"

    @property
    def fraction(self) -> np.ndarray:
        """``[L]`` share of patch tokens that are artifacts."""
        return self.is_artifact.sum(axis=(1, 2)) / max(int(self.patch_mask.sum()), 1)

    @property
    def first_layer(self) -> int | None:
        """The first layer with artifacts, or ``None``."""
        hit = np.flatnonzero(self.is_artifact.any(axis=(1, 2)))
        return int(self.layers[hit[0]]) if hit.size else None

    @property
    def found(self) -> bool:
        """Whether the last scanned layer (the output) has artifacts."""
        return bool(self.is_artifact[-1].any())

    @property
    def model_threshold(self) -> float | None:
        """The cutoff at the last scanned layer (Darcet's per-model threshold), or ``None``."""
        t = float(self.thresholds[-1])
        return None if np.isnan(t) else t

    def grids(self, batch: int = 0, layer: int = -1, values: str = "artifact") -> list[PatchGrid]:
        """``values`` (``artifact`` flags or ``norm``) of one layer (index into ``layers``) on each patch grid."""
        data = self.is_artifact[layer, batch] if values == "artifact" else self.norms[layer, batch]
        return patch_grids(data, self.segments[batch])

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``threshold, fraction, n_artifacts, mean_patch_norm, mean_register_norm``."""
        patch = self.patch_mask[None]
        reg = self.register_mask[None]
        n_reg = max(int(self.register_mask.sum()), 1)
        return pd.DataFrame({
            "layer": self.layers, "threshold": self.thresholds, "fraction": self.fraction,
            "n_artifacts": self.is_artifact.sum(axis=(1, 2)),
            "mean_patch_norm": (self.norms * patch).sum(axis=(1, 2)) / max(int(self.patch_mask.sum()), 1),
            "mean_register_norm": (self.norms * reg).sum(axis=(1, 2)) / n_reg if self.register_mask.any() else np.nan,
        })

    def artifacts_frame(self) -> pd.DataFrame:
        """One row per artifact: ``layer, batch, position, row, col, norm``."""
        rows = []
        for li, b, n in zip(*np.nonzero(self.is_artifact)):
            seg = next(s for s in self.segments[b] if s.kind == "image" and s.start <= n < s.end)
            r, c = divmod(int(n - seg.start), seg.grid[1]) if seg.grid else (-1, -1)
            rows.append((self.layers[li], b, n, r, c, self.norms[li, b, n]))
        return pd.DataFrame(rows, columns=["layer", "batch", "position", "row", "col", "norm"])


def _segment_mask(trace: Trace, kind: str) -> np.ndarray:
    """``[B, N]`` bool positions of segments of ``kind`` (real tokens only)."""
    return trace.key_set(kind).cpu().numpy().astype(bool) & token_mask(trace)


def high_norm_tokens(
    trace: Trace, *, threshold: float | None = None, layers=None, **threshold_options,
) -> RegisterResult:
    """Find high-norm artifact patch tokens in every captured layer output.

    Args:
        trace: a ViT Trace captured with ``Capture(resid=True)``, with ``image`` segments for the patches.
        threshold: a fixed norm cutoff for every layer (e.g. 150 for DINOv2 ViT-g); ``None`` finds one per
            layer with :func:`norm_threshold`.
        layers: layers to scan; ``None`` = every captured layer.
        **threshold_options: passed to :func:`norm_threshold` (``depth``, ``min_z``, ...).

    Returns:
        :class:`RegisterResult`.

    Example:
        >>> result = high_norm_tokens(trace)            # doctest: +SKIP
        >>> result.found, result.first_layer, result.grids(0)[0].values   # doctest: +SKIP
    """
    trace.require("resid", "high_norm_tokens")
    chosen = select_layers(trace, layers, "resid", "high_norm_tokens", default="captured")
    patch = _segment_mask(trace, "image")
    if not patch.any():
        raise ValueError(
            "high_norm_tokens needs patch tokens marked as 'image' segments; this Trace has none. "
            "For a vision-language model pass its vision tower's Trace (trace.vision)."
        )
    norms = np.stack([np.linalg.norm(to_numpy(trace.layers[i].resid), axis=-1) for i in chosen])  # (L, B, N)
    cutoffs = np.full(len(chosen), np.nan)
    for li in range(len(chosen)):
        found = threshold if threshold is not None else norm_threshold(norms[li][patch], **threshold_options)
        cutoffs[li] = np.nan if found is None else found
    is_artifact = (norms > np.where(np.isnan(cutoffs), np.inf, cutoffs)[:, None, None]) & patch[None]
    return RegisterResult(
        norms=norms, patch_mask=patch, register_mask=_segment_mask(trace, "register"), thresholds=cutoffs,
        is_artifact=is_artifact, layers=chosen, tokens=[list(t) for t in trace.tokens],
        segments=[list(s) for s in trace.segments], fixed_threshold=threshold,
    )
