"""The Trace: what one forward pass of a batch revealed about attention.

A Trace is plain data (tensors, strings, dataclasses) and never holds a model reference,
so it can be saved, sent to another process or kept after the model is freed.

Dimension vocabulary: B batch, H heads, Q queries, K keys, N tokens, d_head, d_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

SEGMENT_KINDS = ("text", "image", "special", "system", "register", "pad", "audio")

#: Per-query statistics, each ``[B, H, Q]``; ``mass.<set>`` keys follow the same shape.
ROW_STATS = ("lse", "entropy", "max")
#: Per-key statistics, each ``[B, H, K]``.
KEY_STATS = ("received",)
#: Every statistic a capture can record (``mass.<set>`` come with any of them).
STAT_NAMES = ROW_STATS + KEY_STATS
#: ``LayerRecord`` tensor fields besides ``stats``, with the axes that run over tokens (N).
LAYER_FIELDS = {"pattern": (2, 3), "q": (2,), "k": (2,), "head_out": (2,), "resid": (1,)}
#: The axes of ``LAYER_FIELDS`` (and of the per-key statistics) that run over keys: in a cross-attention Trace they
#: run over the key side's tokens (``key_tokens``), the others over the queries' (``tokens``).
KEY_AXES = {"pattern": (3,), "k": (2,), "stats.received": (-1,)}
#: Traces nested in a main Trace, each stored as ``<name>.<nested>`` in a Run: an image tower (``vision``), an
#: encoder-decoder model's encoder self-attention (``encoder``) and its decoder's cross-attention (``cross``).
NESTED_TRACES = ("vision", "encoder", "cross")


def real_positions_of(token_mask: torch.Tensor, batch: int) -> torch.Tensor:
    """Positions of batch item ``batch``'s real (non-padding) tokens, ascending ``[n]`` int64 on the CPU.

    Args:
        token_mask: ``[B, N]`` bool, real tokens (a Trace's ``token_mask``, or one read lazily from a Run).
        batch: the item.
    """
    return torch.nonzero(token_mask[batch].cpu(), as_tuple=False).flatten()


def first_real_positions(token_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64 position of each item's first real token in ``token_mask`` ``[B, N]`` (-1 for none), CPU.

    With left padding (LLaMA/LLaVA processors) that is after the padding, not position 0.
    """
    mask = token_mask.bool().cpu()  # (B, N)
    return torch.where(mask.any(-1), mask.int().argmax(-1), torch.full((mask.shape[0],), -1))


def key_set_mask(token_mask: torch.Tensor, segments: list[list[Segment]], kind: str) -> torch.Tensor:
    """``[B, N]`` bool mask of the positions inside segments of ``kind``.

    The one definition of a key set, for captures, probes and the dashboard. ``"first"`` is each item's first
    real token (position 0 without left padding; see :func:`first_real_positions`).

    Args:
        token_mask: ``[B, N]`` real (1) and padding (0) positions.
        segments: per batch item, its segments.
        kind: a segment kind, or ``"first"``.
    """
    mask = torch.zeros_like(token_mask, dtype=torch.bool)
    if kind == "first":
        first = first_real_positions(token_mask).to(mask.device)  # (B,)
        rows = torch.nonzero(first >= 0, as_tuple=False).flatten()
        mask[rows, first[rows]] = True
        return mask
    n = mask.shape[-1]
    spans = [(b, min(seg.start, n), min(seg.end, n)) for b, segs in enumerate(segments) for seg in segs
             if seg.kind == kind]
    if not spans:
        return mask
    # +1 where a span starts, -1 where it ends, running sums > 0 inside: four ops for any number of spans (one slice
    # assignment per span cost 3 us each, 0.3 ms for the text spans of 32 prompts)
    items, starts, ends = torch.tensor(spans, device=mask.device).unbind(-1)  # (n_spans,) each
    edges = torch.zeros(mask.shape[0], n + 1, dtype=torch.int32, device=mask.device)
    ones = torch.ones_like(items, dtype=torch.int32)
    edges.index_put_((items, starts), ones, accumulate=True)
    edges.index_put_((items, ends), -ones, accumulate=True)
    return edges.cumsum(-1)[:, :n] > 0


@dataclass(frozen=True)
class Segment:
    """A labelled span ``[start, end)`` of token positions in one batch item.

    Attributes:
        kind: one of ``SEGMENT_KINDS`` (``text``, ``image``, ``special``, ``system``, ``register``, ``pad``,
            ``audio``: a speech encoder's frames).
        start: first position (inclusive).
        end: last position (exclusive).
        grid: ``(rows, cols)`` of the image patch grid, for image spans; ``rows * cols == end - start``.
        label: free text, e.g. ``"[CLS]"`` or ``"image 0"``.
    """

    kind: str
    start: int
    end: int
    grid: tuple[int, int] | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"Segment kind {self.kind!r} is not one of {SEGMENT_KINDS}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"Segment span [{self.start}, {self.end}) is not a valid range")
        if self.grid is not None and self.grid[0] * self.grid[1] != self.end - self.start:
            raise ValueError(
                f"Segment grid {self.grid} holds {self.grid[0] * self.grid[1]} patches "
                f"but the span has {self.end - self.start} tokens"
            )

    @property
    def length(self) -> int:
        """Number of tokens in the span."""
        return self.end - self.start


@dataclass
class LayerRecord:
    """Everything captured for one attention layer. Every field is optional.

    Attributes:
        pattern: post-softmax attention ``[B, H, Q, K]``.
        stats: per-row stats (``lse``, ``entropy``, ``max``, ``mass.<set>``) ``[B, H, Q]`` and
            per-key ``received`` ``[B, H, K]`` (attention summed over queries).
        q: queries ``[B, H, N, d_head]`` (after any rotary embedding, before scaling).
        k: keys ``[B, H, N, d_head]`` (grouped-query keys are repeated to ``H`` heads).
        head_out: per-head attention output before the output projection ``[B, H, N, d_head]``.
        resid: the block's output hidden state ``[B, N, d_model]``.
    """

    pattern: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    head_out: torch.Tensor | None = None
    resid: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` view using the Run-format names (``pattern``, ``stats.lse``, ...)."""
        out = {name: getattr(self, name) for name in LAYER_FIELDS}
        out = {k: v for k, v in out.items() if v is not None}
        out.update({f"stats.{k}": v for k, v in self.stats.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "LayerRecord":
        """Inverse of :meth:`tensors`."""
        rec = cls()
        for name, value in tensors.items():
            if name.startswith("stats."):
                rec.stats[name[len("stats.") :]] = value
            elif name in LAYER_FIELDS:
                setattr(rec, name, value)
            else:
                raise ValueError(f"Unknown layer tensor name {name!r}")
        return rec


@dataclass
class TraceMeta:
    """Facts about the model and the capture that produced a Trace.

    Attributes:
        model: the model's name or path.
        family: architecture family (``bert``, ``gpt2``, ``llama``, ``vit``, ``dinov2``, ``clip``, ``llava``, ``torch``).
        n_layers: attention layers in the stack.
        n_heads: query heads per layer.
        d_head: head dimension.
        d_model: residual width.
        causal: whether the stack uses causal attention.
        captured: names of what was recorded (``pattern``, ``stats``, ``qk``, ``head_out``, ``resid``).
        dtype: dtype the model ran in.
        backend: ``hf``, ``transformer_lens`` or ``torch``.
        pooling: how the model pools token states into its sentence output (``mean``, ``cls``, ``last``, ...),
            read from a sentence-transformers config beside the checkpoint; ``""`` when unknown.
        score_scale: the factor the model applied to ``q . k`` (``None``: ``1 / sqrt(d_head)``, or not recorded).
        score_terms: what the model's scores held besides ``score_scale * q . k`` and the causal and padding
            masks (``bias``: ALiBi or a relative position bias; ``softcap``; ``mask``: another mask, such as a
            sliding window), so a map rebuilt from stored queries and keys would differ from the one applied.
    """

    model: str
    family: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    causal: bool
    captured: tuple[str, ...] = ()
    dtype: str = "float32"
    backend: str = "hf"
    pooling: str = ""
    score_scale: float | None = None
    score_terms: tuple[str, ...] = ()


@dataclass
class Trace:
    """One batch's captured attention.

    Attributes:
        tokens: ``tokens[b][n]`` token strings.
        segments: ``segments[b]`` labelled spans over the tokens.
        layers: ``{layer_index: LayerRecord}``, only for the captured layers.
        meta: :class:`TraceMeta`.
        token_mask: ``[B, N]`` bool, ``True`` for real (non-padding) tokens.
        embeddings: ``[B, N, d_model]`` hidden state entering layer 0, when ``resid`` was captured.
        vision: for vision-language models, the vision tower's own Trace (its tokens are patches).
        encoder: for encoder-decoder models (T5, BART, Whisper), the encoder's self-attention Trace; the main
            Trace is then the decoder's self-attention.
        cross: for encoder-decoder models, the decoder's cross-attention Trace: queries are the decoder's tokens
            (``tokens``, ``token_mask``), keys the encoder's (``key_tokens``, ``key_mask``); patterns
            ``[B, H, Q, K]``.
        key_tokens: ``key_tokens[b][k]`` the key side's token strings, for a cross-attention Trace; ``None`` when
            keys are the queries (self-attention).
        key_segments: the key side's segments (``None``: as ``segments``).
        key_mask: ``[B, K]`` bool, the key side's real tokens (``None``: as ``token_mask``).
    """

    tokens: list[list[str]]
    segments: list[list[Segment]]
    layers: dict[int, LayerRecord]
    meta: TraceMeta
    token_mask: torch.Tensor
    embeddings: torch.Tensor | None = None
    vision: "Trace | None" = None
    encoder: "Trace | None" = None
    cross: "Trace | None" = None
    key_tokens: list[list[str]] | None = None
    key_segments: list[list[Segment]] | None = None
    key_mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        """B."""
        return len(self.tokens)

    @property
    def n_tokens(self) -> int:
        """N, the padded sequence length."""
        return int(self.token_mask.shape[1])

    @property
    def is_cross(self) -> bool:
        """Whether keys come from another token sequence than queries (cross-attention)."""
        return self.key_mask is not None

    def key_side(self) -> "Trace":
        """The keys' tokens, segments and mask as a Trace without layers (this Trace itself for self-attention).

        Probes that describe keys (sinks, token categories) read them from here, so one code path serves self-
        and cross-attention.
        """
        if not self.is_cross:
            return self
        segments = self.key_segments if self.key_segments is not None else [[] for _ in self.key_tokens or []]
        return Trace(list(self.key_tokens or []), segments, {}, self.meta, self.key_mask)

    def require_self_attention(self, probe: str) -> None:
        """Raise a ValueError for probes that chain square ``[Q = K]`` maps over layers (rollout, flow)."""
        if self.is_cross:
            raise ValueError(f"{probe} needs self-attention (queries and keys the same tokens), but this is a "
                             f"cross-attention Trace ({self.meta.family} decoder queries over encoder keys, patterns "
                             f"[B, H, {self.n_tokens}, {int(self.key_mask.shape[1])}]); run {probe} on the "
                             "encoder's Trace (trace.encoder) or the decoder's (the main Trace) instead")

    def layer(self, index: int) -> LayerRecord:
        """The record of a captured layer; raises a ValueError naming the captured layers otherwise."""
        if index < 0:
            index += self.meta.n_layers
        if index not in self.layers:
            raise ValueError(
                f"Layer {index} was not captured; captured layers are {sorted(self.layers)}. "
                "Capture it with Capture(layers=...)."
            )
        return self.layers[index]

    def require(self, what: str, probe: str) -> None:
        """Raise a ValueError naming the capture option ``what`` if it is missing for ``probe``."""
        if what not in self.meta.captured:
            raise ValueError(
                f"{probe} needs '{what}' in the Trace, which captured only {list(self.meta.captured) or 'nothing'}. "
                f"Capture again with Capture({what}=True)."
            )

    def resid_in(self, index: int) -> torch.Tensor:
        """Hidden state entering layer ``index`` ``[B, N, d_model]`` (the embeddings for layer 0)."""
        self.require("resid", "resid_in")
        if index == 0:
            if self.embeddings is None:
                raise ValueError("The embeddings entering layer 0 were not captured")
            return self.embeddings
        prev = self.layer(index - 1).resid
        if prev is None:
            raise ValueError(f"resid of layer {index - 1} was not captured; capture all layers up to {index}")
        return prev

    def _check_item(self, batch: int) -> int:
        if not -self.batch_size <= batch < self.batch_size:
            raise ValueError(f"Batch item {batch} is not in this Trace, which holds {self.batch_size} item(s); "
                             f"pass an index in [0, {self.batch_size})")
        return batch % self.batch_size

    def real_positions(self, batch: int) -> torch.Tensor:
        """Positions of one item's real (non-padding) tokens, ascending ``[n]`` int64 on the CPU.

        Right padding (BERT, GPT-2) puts them first, left padding (LLaMA/LLaVA processors) last.
        """
        return real_positions_of(self.token_mask, self._check_item(batch))

    def first_positions(self) -> torch.Tensor:
        """``[B]`` int64 position of each item's first real token (after any left padding; -1 for none)."""
        return first_real_positions(self.token_mask)

    def key_set(self, kind: str) -> torch.Tensor:
        """``[B, N]`` bool mask of the positions inside segments of ``kind``; see :func:`key_set_mask`."""
        return key_set_mask(self.token_mask, self.segments, kind)

    def item(self, index: int, *, keep_padding: bool = False) -> "Trace":
        """Batch item ``index`` as a Trace of batch size 1.

        Args:
            index: the batch item (negative counts from the end).
            keep_padding: keep the padded length and positions (a view sharing storage). By default every
                token axis (``N``, ``Q``, ``K``) keeps the item's real tokens only, positions shift by the
                padding before them, and ``pad`` segments are dropped: for a padded batch this is what
                capturing the input alone records (within float tolerance). A cross-attention Trace cuts its
                key axes by ``key_mask``.

        Returns:
            A :class:`Trace`; its nested Traces (``vision``, ``encoder``, ``cross``) are the same item of theirs
            when they hold one per batch item.

        Raises:
            ValueError: an index outside the batch; real tokens that are not one contiguous span; a vision
                tower whose batch differs from this Trace's.
        """
        b = self._check_item(index)
        start, stop = self._real_span(self.token_mask, b, keep_padding)
        kstart, kstop = self._real_span(self.key_mask, b, keep_padding) if self.is_cross else (start, stop)
        nested = {}
        for name in NESTED_TRACES:
            sub = getattr(self, name)
            if sub is not None and sub.batch_size != self.batch_size:
                raise ValueError(f"The {name} Trace holds {sub.batch_size} items for {self.batch_size}, so its item "
                                 f"cannot be matched; read trace.{name} directly")
            nested[name] = None if sub is None else sub.item(b, keep_padding=keep_padding)
        n, nk = self.n_tokens, (int(self.key_mask.shape[1]) if self.is_cross else self.n_tokens)

        def take(t: torch.Tensor | None, name: str, axes) -> torch.Tensor | None:
            if t is None:
                return None
            t = t[b : b + 1]
            keys = KEY_AXES.get(name, ()) if self.is_cross else ()
            for ax in axes:
                first, last, size = (kstart, kstop, nk) if ax in keys else (start, stop, n)
                if t.shape[ax] == size:
                    t = t.narrow(ax, first, last - first)
            return t

        layers = {}
        for i, rec in self.layers.items():
            new = LayerRecord(**{name: take(getattr(rec, name), name, axes) for name, axes in LAYER_FIELDS.items()})
            new.stats = {name: take(value, f"stats.{name}", (-1,)) for name, value in rec.stats.items()}
            layers[i] = new
        keys = {}
        if self.is_cross:
            key_segs = self.key_side().segments[b]
            keys = dict(key_tokens=[list(self.key_tokens[b][kstart:kstop])],
                        key_segments=[self._shift(key_segs, kstart, kstop, keep_padding)],
                        key_mask=self.key_mask[b : b + 1, kstart:kstop])
        return Trace(tokens=[list(self.tokens[b][start:stop])],
                     segments=[self._shift(self.segments[b], start, stop, keep_padding)], layers=layers,
                     meta=self.meta, token_mask=self.token_mask[b : b + 1, start:stop],
                     embeddings=take(self.embeddings, "embeddings", (1,)), **nested, **keys)

    def _real_span(self, mask: torch.Tensor, b: int, keep_padding: bool) -> tuple[int, int]:
        """``[start, stop)`` of item ``b``'s real tokens in ``mask`` ``[B, N]`` (everything with ``keep_padding``)."""
        if keep_padding:
            return 0, int(mask.shape[1])
        real = real_positions_of(mask, b)  # (n,)
        start, stop = (int(real[0]), int(real[-1]) + 1) if real.numel() else (0, 0)
        if stop - start != real.numel():
            raise ValueError(f"Batch item {b}'s real tokens are not one contiguous span; use keep_padding=True")
        return start, stop

    @staticmethod
    def _shift(segments: list[Segment], start: int, stop: int, keep_padding: bool) -> list[Segment]:
        return [replace(s, start=s.start - start, end=s.end - start) for s in segments
                if keep_padding or (s.kind != "pad" and s.start >= start and s.end <= stop)]

    def with_layers(self, layers: dict[int, LayerRecord]) -> "Trace":
        """A copy of this Trace holding other layer records."""
        return replace(self, layers=layers)
