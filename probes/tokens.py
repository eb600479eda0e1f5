"""Reading a Trace the way probes need it: output positions, layers, token categories.

Real positions, key sets and items are the Trace's own (:meth:`Trace.real_positions`, :meth:`Trace.key_set`,
:meth:`Trace.item`).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import torch

from attnlab.core.trace import Trace

#: Token categories reported for sink tokens, in the order they are tested.
TOKEN_CATEGORIES = ("initial", "image", "special", "punctuation", "other")

# Tokeniser word-boundary markers (GPT-2 byte BPE, SentencePiece, WordPiece) stripped before the punctuation test.
_MARKERS = ("Ġ", "▁", "Ċ", "##", "ĉ")
_SPECIAL = re.compile(r"^(<\|?[^<>\s]*\|?>|\[[A-Z_]+\])$")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a (possibly half-precision) tensor."""
    return t.detach().to("cpu", torch.float64).numpy()


def token_mask(trace: Trace) -> np.ndarray:
    """``[B, N]`` bool, True for real (non-padding) tokens."""
    return trace.token_mask.detach().cpu().numpy().astype(bool)


def output_position(trace: Trace, batch: int, position: int | None) -> int:
    """The absolute position whose inputs a relevance probe explains.

    Args:
        trace: the Trace.
        batch: batch item.
        position: index into the item's real tokens (negative counts from the last real token);
            ``None`` picks the first token ([CLS]) for encoders and the last token for causal decoders.

    Returns:
        The absolute position.
    """
    real = trace.real_positions(batch).numpy()
    if real.size == 0:
        raise ValueError(f"Batch item {batch} has no real tokens (token_mask is all False)")
    if position is None:
        position = -1 if trace.meta.causal else 0
    if not -real.size <= position < real.size:
        raise ValueError(
            f"position {position} is outside the {real.size} real tokens of batch item {batch}; "
            f"pass an index in [-{real.size}, {real.size})"
        )
    return int(real[position])


#: ``position`` values that explain a pooled output instead of one token.
POOLED_OUTPUTS = ("mean", "pooled")
#: The output position a result records for a mean-pooled output (no single token).
MEAN_POOLED = -1


def relevance_output(trace: Trace, batch: int, position: int | str | None) -> tuple[int | np.ndarray, int]:
    """The output a relevance probe explains for one item, as an index into its real tokens or pooling weights.

    Args:
        trace: the Trace.
        batch: batch item.
        position: a token index as in :func:`output_position` (``None`` too); ``"mean"``: the mean over the
            item's real tokens (mean pooling, as sentence-transformers models such as all-MiniLM-L6-v2 use);
            ``"pooled"``: the model's own pooling, read from ``trace.meta.pooling`` (``mean``, ``cls``, ``last``).

    Returns:
        ``(output, position)``: ``output`` is the token's index among the item's ``n`` real tokens, or ``[n]``
        weights summing to 1 for the mean; ``position`` is the token's absolute position, or
        :data:`MEAN_POOLED`.

    Raises:
        ValueError: an unknown ``position`` string, or ``"pooled"`` on a Trace whose pooling is unknown or not
            a weighted sum of token states (``max``), naming what to pass instead.
    """
    real = trace.real_positions(batch).numpy()
    if position == "pooled":
        pooling = trace.meta.pooling
        if pooling not in ("mean", "cls", "last"):
            why = (f"the model pools with {pooling!r}, which is not a weighted sum of token states" if pooling else
                   "the Trace does not know how the model pools (no sentence-transformers 1_Pooling/config.json "
                   "beside the checkpoint it was loaded from)")
            raise ValueError(f"position='pooled': {why}; pass position='mean' or a token index instead")
        position = {"mean": "mean", "cls": 0, "last": -1}[pooling]
    if position == "mean":
        if real.size == 0:
            raise ValueError(f"Batch item {batch} has no real tokens (token_mask is all False)")
        return np.full(real.size, 1.0 / real.size), MEAN_POOLED
    if isinstance(position, str):
        raise ValueError(f"position={position!r}: pass a token index, None, 'mean' or 'pooled'")
    pos = output_position(trace, batch, position)
    return int(np.searchsorted(real, pos)), pos


def select_layers(trace: Trace, layers, field: str, probe: str, default: str = "all") -> tuple[int, ...]:
    """Resolve a ``layers`` argument and check ``field`` was captured for each of them.

    Args:
        trace: the Trace.
        layers: iterable of layer indices (negative counts from the end), or ``None``.
        field: ``LayerRecord`` attribute the probe reads (``pattern``, ``resid``, ``head_out``).
        probe: probe name for error messages.
        default: for ``layers=None``: ``"all"`` (every model layer) or ``"captured"`` (captured layers only).

    Returns:
        Sorted layer indices.

    Raises:
        ValueError: a layer outside the model, or not captured with ``field``, naming the fix.
    """
    n = trace.meta.n_layers
    if layers is None:
        layers = range(n) if default == "all" else sorted(trace.layers)
    out = []
    for i in layers:
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise ValueError(f"{probe}: layer {i} is outside the model, which has layers 0..{n - 1}")
        rec = trace.layers.get(j)
        if rec is None or getattr(rec, field) is None:
            raise ValueError(
                f"{probe} needs '{field}' for layer {j}, which the Trace lacks "
                f"(captured layers: {sorted(trace.layers)}). Capture again with "
                f"Capture({field}=True, layers=None) or pass layers=... naming captured layers."
            )
        out.append(j)
    if not out:
        raise ValueError(f"{probe}: no layers selected; pass layers=... or capture some layers")
    return tuple(sorted(set(out)))


def segment_kinds(trace: Trace, batch: int) -> list[str]:
    """``[N]`` segment kind of each position of one batch item (``""`` outside every segment)."""
    kinds = [""] * trace.n_tokens
    for seg in trace.segments[batch]:
        for n in range(seg.start, min(seg.end, trace.n_tokens)):
            kinds[n] = seg.kind
    return kinds


def is_punctuation(token: str) -> bool:
    """True for tokens made only of punctuation, symbols or whitespace (``"."``, ``","``, ``"\\n"``, ``"Ġ:"``)."""
    text = token
    for marker in _MARKERS:
        text = text.replace(marker, "")
    text = text.strip()
    if not text:
        return bool(token)
    return all(unicodedata.category(ch)[0] in "PS" for ch in text)


def token_categories(trace: Trace, batch: int) -> list[str]:
    """Category of each position of one batch item, one of :data:`TOKEN_CATEGORIES`.

    The first real token is ``initial``; then segment kind ``image`` -> ``image``; kinds ``special``
    and ``register`` or a token written like ``<s>``, ``<|endoftext|>``, ``[CLS]`` -> ``special``;
    punctuation, symbol or whitespace tokens -> ``punctuation``; everything else ``other``.
    Padding positions get ``""``.
    """
    mask = token_mask(trace)[batch]
    kinds = segment_kinds(trace, batch)
    first = int(trace.first_positions()[batch])
    toks = trace.tokens[batch]
    out = []
    for n in range(trace.n_tokens):
        tok = toks[n] if n < len(toks) else ""
        if not mask[n]:
            out.append("")
        elif n == first:
            out.append("initial")
        elif kinds[n] == "image":
            out.append("image")
        elif kinds[n] in ("special", "register") or _SPECIAL.match(tok.strip()):
            out.append("special")
        elif is_punctuation(tok):
            out.append("punctuation")
        else:
            out.append("other")
    return out
