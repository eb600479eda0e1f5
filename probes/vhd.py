"""Vision-aware head divergence (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", ACL 2025).

VHD (Eq. 4): for layer ``l`` and head ``i``, the Euclidean distance between the head's output
``softmax(QK^T / sqrt(d)) V`` (its slice before ``W_O``, ``LayerRecord.head_out``) at the current
position with the image and without it (same prompt and history, image tokens removed)::

    VHD_{l,i} = || A_{l,i}(y_t | y_<t, x_V, x_T) - A_{l,i}(y_t | y_<t, x_T) ||_2

The two passes are two Traces; the text-only one lacks the image span, so positions are aligned
from the end (default: the last token of each). T-VHD (Eq. 5) sums the top-k VHD of each layer over
layers. The paper's k was not located in the text read: ``top_k`` is configurable, and its default
``n_heads // 2`` is this module's choice (VHR's "top half"), so state it when reporting T-VHD.

VHR (Algorithm 1) selects heads per layer: zero ``VHD_{l,i}`` when both ``VHD_{l,i}`` and
``TA_{l,i} = ||A_{l,i}(y_t | y_<t, x_T)||^2`` exceed their layer's mean + std, then keep the heads
whose VHD is above the layer median. Paper defaults: alpha = 2, layers ``L_r`` = the second layer
plus the last 14 (LLaVA-1.5 / LLaVA-NeXT) or the last 18 (InstructBLIP); see :func:`vhr_layers`.
The VHR code was not read: the std convention is unknown (``ddof=1``, torch's default, here). VHR
recomputes VHD layer by layer inside one reinforced forward pass, so earlier reinforcement shifts
later VHDs; this probe works on two plain Traces, which matches VHR's first reinforced layer only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.trace import Trace

from .results import ProbeResult
from .tokens import select_layers, to_numpy


@dataclass(frozen=True, eq=False)
class VHDResult(ProbeResult):
    """Per-head divergence between a pass with the image and one without.

    Attributes:
        vhd: ``[L, B, H]`` Euclidean distance of the head outputs at the aligned position.
        text_norm_sq: ``[L, B, H]`` squared norm of the text-only head output (VHR's ``TA``).
        layers: layer of each entry of the first axis.
        positions: aligned position per batch item in the image Trace.
        text_positions: the same positions in the text-only Trace.
        tokens: the token at the aligned position, per batch item.
        top_k: heads per layer summed into T-VHD.
    """

    vhd: np.ndarray
    text_norm_sq: np.ndarray
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    text_positions: tuple[int, ...]
    tokens: list[str]
    top_k: int
    probe = "vhd"

    @property
    def t_vhd(self) -> np.ndarray:
        """``[B]`` T-VHD: the sum over layers of the ``top_k`` largest VHD of each layer."""
        return np.sort(self.vhd, axis=-1)[..., ::-1][..., : self.top_k].sum(axis=(0, 2))

    def ranking(self, batch: int = 0) -> dict[int, tuple[int, ...]]:
        """``{layer: heads ordered from most to least vision-aware}`` for one batch item."""
        order = np.argsort(-self.vhd[:, batch], axis=-1, kind="stable")  # (L, H)
        return {layer: tuple(int(h) for h in order[li]) for li, layer in enumerate(self.layers)}

    def head_grid(self, item: int = 0) -> tuple[np.ndarray, list[int]]:
        """``([L, H] VHD of batch item ``item``, layers)``, the per-head view the dashboard draws."""
        return self.vhd[:, item], list(self.layers)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, batch, head): ``vhd``, ``text_norm_sq`` and ``rank`` within the layer (0 = top)."""
        rank = np.argsort(np.argsort(-self.vhd, axis=-1, kind="stable"), axis=-1)
        li, b, h = np.indices(self.vhd.shape).reshape(3, -1)
        return pd.DataFrame({"layer": np.asarray(self.layers)[li], "batch": b, "head": h,
                             "vhd": self.vhd[li, b, h], "text_norm_sq": self.text_norm_sq[li, b, h],
                             "rank": rank[li, b, h]})


def _check_pair(trace: Trace, other: Trace) -> None:
    """Raise ValueError unless ``trace`` (with image) and ``other`` (text only) can be compared head by head."""
    for t, name in ((trace, "trace"), (other, "other")):
        t.require("head_out", f"head_divergence ({name})")
    a, b = trace.meta, other.meta
    if (a.n_layers, a.n_heads, a.d_head) != (b.n_layers, b.n_heads, b.d_head):
        raise ValueError(
            f"head_divergence compares one model with and without the image, but the Traces come from models with "
            f"(layers, heads, d_head) {(a.n_layers, a.n_heads, a.d_head)} and {(b.n_layers, b.n_heads, b.d_head)}"
        )
    if trace.batch_size != other.batch_size:
        raise ValueError(
            f"head_divergence needs Traces of the same batch size; got {trace.batch_size} and {other.batch_size}"
        )
    if not trace.key_set("image").any():
        raise ValueError("head_divergence: `trace` has no image segment; pass the pass WITH the image first")
    if other.key_set("image").any():
        raise ValueError(
            "head_divergence: `other` has an image segment; pass the same prompt with the image tokens removed"
        )


def head_divergence(
    trace: Trace, other: Trace, *, position: int = -1, top_k: int | None = None, layers=None,
) -> VHDResult:
    """VHD of every head between a pass with the image (``trace``) and without it (``other``).

    Args:
        trace: the pass with the image, captured with ``Capture(head_out=True)``.
        other: the same prompt without the image tokens, captured the same way.
        position: position counted from the end of each item's real tokens (-1: the last token).
        top_k: heads per layer in T-VHD; ``None`` = ``n_heads // 2`` (the paper's k was not located).
        layers: layers to compare; ``None`` = every layer of the model.

    Returns:
        :class:`VHDResult`.

    Raises:
        ValueError: a missing ``head_out``, Traces of different models or batch sizes, roles swapped,
            a non-negative ``position``, or different tokens at the aligned positions.

    Example:
        >>> result = head_divergence(with_image, text_only)     # doctest: +SKIP
        >>> vhr_heads(result, layers=vhr_layers(32)).heads[0]    # doctest: +SKIP
    """
    _check_pair(trace, other)
    if position >= 0:
        raise ValueError(
            f"head_divergence aligns the two passes from the end; pass a negative position, not {position}"
        )
    chosen = select_layers(trace, layers, "head_out", "head_divergence")
    select_layers(other, chosen, "head_out", "head_divergence (other)")
    pos, pos_txt, toks = [], [], []
    for b in range(trace.batch_size):
        p, q = trace.real_positions(b).numpy()[position], other.real_positions(b).numpy()[position]
        if trace.tokens[b][p] != other.tokens[b][q]:
            raise ValueError(
                f"head_divergence: batch item {b} has token {trace.tokens[b][p]!r} at the aligned position with the "
                f"image and {other.tokens[b][q]!r} without it; the two passes must share the prompt after the image"
            )
        pos.append(int(p))
        pos_txt.append(int(q))
        toks.append(trace.tokens[b][p])
    bi = np.arange(trace.batch_size)
    with_img = np.stack([to_numpy(trace.layers[i].head_out)[bi, :, pos] for i in chosen])  # (L, B, H, d_head)
    text = np.stack([to_numpy(other.layers[i].head_out)[bi, :, pos_txt] for i in chosen])  # (L, B, H, d_head)
    n_heads = trace.meta.n_heads
    return VHDResult(
        vhd=np.linalg.norm(with_img - text, axis=-1), text_norm_sq=(text**2).sum(-1), layers=chosen,
        positions=tuple(pos), text_positions=tuple(pos_txt), tokens=toks,
        top_k=int(top_k if top_k is not None else max(1, n_heads // 2)),
    )


#: Decoder depth of the models VHR's layer sets were chosen for (LLaVA-1.5-7B, LLaVA-NeXT-7B, InstructBLIP-7B).
VHR_PAPER_DEPTH = 32
#: Last layers reinforced at the paper's depth (He et al. 2025, implementation details): 14 for LLaVA, 18 for
#: InstructBLIP.
VHR_PAPER_LAST = {"llava": 14, "instructblip": 18}


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (Python's ``round`` rounds halves to even)."""
    return int(np.floor(x + 0.5))


def vhr_layers(n_layers: int, model: str = "llava") -> tuple[int, ...]:
    """VHR's reinforced layers ``L_r``, scaled with depth; the paper's sets at 32 layers.

    The paper (He et al. 2025, implementation details; Table 5 ablates the two parts) reinforces, in 32-layer models, the second layer (index 1)
    plus the last 14 layers (``llava``: LLaVA-1.5 / NeXT), or the last 18 (``instructblip``). Taken literally on
    a shallower model, "the last 14" is every layer and VHR reinforces the whole network; attnlab keeps the
    paper's *fractions* of depth instead:

    - last ``max(1, round(14/32 * L))`` layers (``18/32`` for ``instructblip``);
    - ``llava`` also layer ``round(L/32)``, at least 1 (the second layer, never the embedding-adjacent first).

    Rounding is half up. The mapping::

        L = 32 (paper):  llava {1, 18..31}     instructblip {14..31}
        L = 40:          llava {1, 22..39}     instructblip {17..39}
        L = 8:           llava {1, 4..7}       instructblip {3..7}
        L = 3:           llava {1, 2}          instructblip {1, 2}

    Args:
        n_layers: decoder layers ``L``.
        model: ``"llava"`` or ``"instructblip"``.

    Returns:
        Sorted layer indices.
    """
    if model not in VHR_PAPER_LAST:
        raise ValueError(f"Unknown VHR model {model!r}; choose 'llava' or 'instructblip', or pass layers yourself")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}")
    n_last = max(1, round_half_up(VHR_PAPER_LAST[model] * n_layers / VHR_PAPER_DEPTH))
    layers = set(range(max(0, n_layers - n_last), n_layers))
    if model == "llava":
        layers.add(min(max(1, round_half_up(n_layers / VHR_PAPER_DEPTH)), n_layers - 1))
    return tuple(sorted(layers))


@dataclass(frozen=True, eq=False)
class VHRSelection(ProbeResult):
    """Heads VHR would reinforce.

    Attributes:
        heads: ``heads[b] = {layer: selected heads}``.
        outliers: ``outliers[b] = {layer: heads zeroed as outliers}``.
        layers: layers considered.
    """

    heads: list[dict[int, tuple[int, ...]]]
    outliers: list[dict[int, tuple[int, ...]]]
    layers: tuple[int, ...]
    probe = "vhr-heads"

    def to_frame(self) -> pd.DataFrame:
        """One row per (batch, layer, head) considered: ``selected``, ``outlier``."""
        rows = []
        for b, per_layer in enumerate(self.heads):
            for layer in self.layers:
                for h in sorted(set(per_layer[layer]) | set(self.outliers[b][layer])):
                    rows.append((b, layer, h, h in per_layer[layer], h in self.outliers[b][layer]))
        return pd.DataFrame(rows, columns=["batch", "layer", "head", "selected", "outlier"])


def vhr_layer_heads(vhd: np.ndarray, text_norm_sq: np.ndarray, *, ddof: int = 1) -> tuple[tuple[int, ...],
                                                                                          tuple[int, ...]]:
    """VHR's rule for one layer (He et al. 2025, Algorithm 1): ``(reinforced heads, outliers)``.

    A head is an outlier when both its VHD and its text-only output norm² (``TA``) exceed their layer's mean + std;
    its VHD is set to 0, and the heads with VHD above the layer median are reinforced.

    Args:
        vhd: ``[H]`` the layer's VHD; text_norm_sq: ``[H]`` its ``TA``.
        ddof: degrees of freedom of the std (1 = torch's default).
    """
    v, ta = np.asarray(vhd, dtype=np.float64), np.asarray(text_norm_sq, dtype=np.float64)
    bad = (v > v.mean() + v.std(ddof=ddof)) & (ta > ta.mean() + ta.std(ddof=ddof))
    v = np.where(bad, 0.0, v)
    return tuple(int(h) for h in np.flatnonzero(v > np.median(v))), tuple(int(h) for h in np.flatnonzero(bad))


def vhr_heads(result: VHDResult, *, layers=None, ddof: int = 1) -> VHRSelection:
    """VHR's head selection (Algorithm 1): outlier removal, then VHD above the layer median.

    Args:
        result: :func:`head_divergence` output.
        layers: layers to select in (e.g. :func:`vhr_layers`); ``None`` = every layer of ``result``.
        ddof: degrees of freedom of the std in the outlier test (1 = torch's default).

    Returns:
        :class:`VHRSelection` (the intervention code turns it into a Plan).
    """
    chosen = tuple(result.layers) if layers is None else tuple(layers)
    missing = [i for i in chosen if i not in result.layers]
    if missing:
        raise ValueError(f"vhr_heads: layers {missing} are not in the VHD result (layers {list(result.layers)})")
    heads, outliers = [], []
    for b in range(result.vhd.shape[1]):
        sel, out = {}, {}
        for layer in chosen:
            li = result.layers.index(layer)
            sel[layer], out[layer] = vhr_layer_heads(result.vhd[li, b], result.text_norm_sq[li, b], ddof=ddof)
        heads.append(sel)
        outliers.append(out)
    return VHRSelection(heads=heads, outliers=outliers, layers=chosen)
