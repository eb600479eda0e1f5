"""Visual attention sinks and image-centric heads (Kang, Kim, Kim & Hwang, "See What You Are Told:
Visual Attention Sink in Large Multimodal Models", ICLR 2025; code MICV-yonsei/VisAttnSink).

Sink tokens at layer ``l`` are the tokens whose hidden state *entering* the layer
(``Trace.resid_in(l)``, the residual stream before decoder layer ``l``) has a large value in one of
the model's sink dimensions ``D``::

    phi(x) = max_{d in D} |x_d| / RMS(x),   RMS(x) = sqrt(mean(x**2) + 1e-6)

(no RMSNorm weight, as the code's ``DimProspector``), sink if ``phi >= tau`` (``tau = 20``).
Visual sinks are the sink tokens inside image segments. ``D`` is model specific (see
:data:`KNOWN_SINK_DIMS`); when not given it is detected with :func:`massive_activations`.

Image-centric heads: for layer ``l``, head ``h`` and query ``i``, with image mass
``s_i = sum_{j in image} a_ij >= 0.2`` and visual non-sink share
``r_i = sum_{j in image \\ visual sinks} a_ij / s_i >= rho`` (``rho = 0.5``). Selection is per
(batch, head, query) as in the code; layers with no visual sink select no heads.

Where paper and code differ: the code tests the sink portion ``<= rho``, i.e. ``r >= 1 - rho``;
this module uses the paper's ``r >= rho`` (identical at the released ``rho = 0.5``). The code skips
layers 0 and 1 (``DimProspector`` runs on ``range(L)[2:]``; ``skip_layers=2``) and does not
redistribute in the last layer (``except_last_layer: 1``), so heads are selected in layers
``2 .. L-2``. In prefill it only acts on query rows after the image (``queries="after_image"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.trace import Trace

from .massive import massive_activations
from .results import ProbeResult
from .tokens import to_numpy, token_mask

#: Sink dimensions reported for base LLMs (VAR code and notes); LVLMs inherit their LLM's dims.
KNOWN_SINK_DIMS: dict[str, tuple[int, ...]] = {
    "llama-2-7b": (1415, 2533),
    "llava-1.5-7b": (1415, 2533),
    "llama-2-13b": (2100, 4743),
    "llava-1.5-13b": (2100, 4743),
    "llava-1.6-vicuna-13b": (2100, 4743),
    "qwen2-vl-7b": (458, 2570),
    "internvl2-8b": (3584,),
}
QUERY_SETS = ("after_image", "text", "all")


@dataclass(frozen=True, eq=False)
class VisualSinkResult(ProbeResult):
    """Sink tokens, visual sinks and image-centric heads.

    Attributes:
        phi: ``[L, B, N]`` sink score of the hidden state entering each layer (0 on padding).
        is_sink: ``[L, B, N]`` ``phi >= tau``.
        is_visual_sink: ``[L, B, N]`` sinks inside image segments.
        layers: layer of each entry of the first axis.
        head_layers: layers where heads were selected (empty when no patterns were used).
        image_mass: ``[Lh, B, H, Q]`` attention mass on image tokens.
        nonsink_share: ``[Lh, B, H, Q]`` share of that mass outside visual sinks (1 where no image mass).
        selected: ``[Lh, B, H, Q]`` bool, image-centric (batch, head, query) coordinates.
        tokens: ``tokens[b][n]``.
        sink_dims: the dimensions ``D``.
        dims_source: ``given`` | ``massive`` (auto-detected).
        tau: sink threshold.
        rho: non-sink share threshold.
        min_image_mass: image mass threshold.
    """

    phi: np.ndarray
    is_sink: np.ndarray
    is_visual_sink: np.ndarray
    layers: tuple[int, ...]
    head_layers: tuple[int, ...]
    image_mass: np.ndarray
    nonsink_share: np.ndarray
    selected: np.ndarray
    tokens: list[list[str]]
    sink_dims: tuple[int, ...]
    dims_source: str
    tau: float
    rho: float
    min_image_mass: float
    probe = "visual-sinks"

    def to_frame(self) -> pd.DataFrame:
        """One row per sink token and layer: ``layer, batch, position, token, phi, visual``."""
        li, b, n = np.nonzero(self.is_sink)
        return pd.DataFrame({
            "layer": np.asarray(self.layers, dtype=int)[li], "batch": b, "position": n,
            "token": [self.tokens[bb][nn] for bb, nn in zip(b, n)], "phi": self.phi[li, b, n],
            "visual": self.is_visual_sink[li, b, n],
        })

    def heads_frame(self) -> pd.DataFrame:
        """One row per (layer, batch, head) with at least one selected query: how many, and their mean share."""
        li, b, h = np.nonzero(self.selected.any(axis=-1))
        count = self.selected.sum(axis=-1)
        share = np.where(self.selected, self.nonsink_share, 0).sum(-1) / np.maximum(count, 1)
        return pd.DataFrame({
            "layer": np.asarray(self.head_layers, dtype=int)[li], "batch": b, "head": h,
            "n_queries": count[li, b, h], "mean_nonsink_share": share[li, b, h],
        })


def sink_score(hidden: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """VAR's ``phi``: ``[..., d] -> [...]``, ``max_{d in dims} |x_d| / sqrt(mean(x**2) + 1e-6)``."""
    if not dims:
        return np.zeros(hidden.shape[:-1])
    rms = np.sqrt((hidden**2).mean(axis=-1) + 1e-6)  # (...)
    return np.abs(hidden[..., list(dims)]).max(axis=-1) / rms


def _query_rows(trace: Trace, image: np.ndarray, queries: str) -> np.ndarray:
    """``[B, Q]`` bool query rows eligible for head selection."""
    mask = token_mask(trace)
    if queries == "all":
        return mask
    if queries == "text":
        return mask & ~image
    if queries == "after_image":
        n = mask.shape[1]
        last = np.where(image.any(axis=1), n - 1 - np.argmax(image[:, ::-1], axis=1), n)  # (B,)
        return mask & (np.arange(n)[None, :] > last[:, None])
    raise ValueError(f"Unknown query set {queries!r}; choose from {QUERY_SETS}")


def _head_selection(pattern, image, visual_sink, rows, min_image_mass, rho):
    """Image mass, non-sink share and selection ``[B, H, Q]`` for one layer's pattern ``[B, H, Q, K]``."""
    mass = (pattern * image[:, None, None, :]).sum(-1)  # (B, H, Q)
    sink_mass = (pattern * visual_sink[:, None, None, :]).sum(-1)  # (B, H, Q)
    share = np.where(mass > 0, (mass - sink_mass) / np.where(mass > 0, mass, 1.0), 1.0)
    chosen = (mass >= min_image_mass) & (share >= rho) & rows[:, None, :]
    chosen &= visual_sink.any(axis=1)[:, None, None]  # layers without a visual sink get no heads
    return mass, share, chosen


def visual_sinks(
    trace: Trace, *, sink_dims: tuple[int, ...] | None = None, tau: float = 20.0, rho: float = 0.5,
    min_image_mass: float = 0.2, skip_layers: int = 2, except_last_layer: int = 1, queries: str = "after_image",
    select_heads: bool | None = None, massive_options: dict | None = None,
) -> VisualSinkResult:
    """Find (visual) sink tokens per layer and the image-centric heads.

    Args:
        trace: a Trace captured with ``Capture(resid=True)`` (and ``pattern=True`` for heads).
        sink_dims: the model's sink dimensions; ``None`` detects them with :func:`massive_activations`.
        tau: sink threshold on ``phi`` (20).
        rho: minimum visual non-sink share of a selected head (0.5).
        min_image_mass: minimum image attention mass of a selected head (0.2).
        skip_layers: the first layers to skip (2, as the code).
        except_last_layer: how many final layers get no heads (1, as the code).
        queries: query rows for head selection: ``after_image`` (code) | ``text`` | ``all``.
        select_heads: ``None`` selects heads when patterns were captured; ``True`` requires them.
        massive_options: keyword options for the auto-detection (e.g. ``{"abs_floor": None}`` on small models).

    Returns:
        :class:`VisualSinkResult`.

    Example:
        >>> visual_sinks(trace, sink_dims=KNOWN_SINK_DIMS["llava-1.5-7b"]).to_frame()  # doctest: +SKIP
    """
    trace.require("resid", "visual_sinks")
    if select_heads:
        trace.require("pattern", "visual_sinks(select_heads=True)")
    dims_source = "given" if sink_dims is not None else "massive"
    if sink_dims is None:
        sink_dims = massive_activations(trace, **(massive_options or {})).dims
    mask = token_mask(trace)
    image = trace.key_set("image").cpu().numpy().astype(bool) & mask  # (B, N)
    layers = tuple(range(skip_layers, trace.meta.n_layers))
    phi = np.stack([sink_score(to_numpy(trace.resid_in(i)), tuple(sink_dims)) * mask for i in layers])  # (L, B, N)
    is_sink = phi >= tau
    is_visual = is_sink & image[None]
    use_heads = select_heads if select_heads is not None else "pattern" in trace.meta.captured
    head_layers = tuple(
        i for i in layers[: len(layers) - except_last_layer]
        if use_heads and i in trace.layers and trace.layers[i].pattern is not None
    )
    rows = _query_rows(trace, image, queries)
    parts = [_head_selection(to_numpy(trace.layers[i].pattern), image, is_visual[layers.index(i)], rows,
                             min_image_mass, rho) for i in head_layers]
    n_heads, n = trace.meta.n_heads, mask.shape[1]
    empty = np.zeros((0, mask.shape[0], n_heads, n))
    return VisualSinkResult(
        phi=phi, is_sink=is_sink, is_visual_sink=is_visual, layers=layers, head_layers=head_layers,
        image_mass=np.stack([p[0] for p in parts]) if parts else empty,
        nonsink_share=np.stack([p[1] for p in parts]) if parts else empty,
        selected=np.stack([p[2] for p in parts]) if parts else empty.astype(bool),
        tokens=[list(t) for t in trace.tokens], sink_dims=tuple(int(d) for d in sink_dims), dims_source=dims_source,
        tau=float(tau), rho=float(rho), min_image_mass=float(min_image_mass),
    )
