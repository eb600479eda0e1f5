"""Token strings and modality segments for the inputs of a forward call."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence

import torch

from attnlab.core.trace import Segment


class Deferred(Sequence):
    """A list computed on first use: the token strings and segments of a pass nothing may read (a decoding step of a
    generation that only steers attention), which cost ~0.2 ms of Python per step for 32 items otherwise."""

    def __init__(self, make: Callable[[], list]):
        self._make, self._items = make, None

    def _value(self) -> list:
        if self._items is None:
            self._items = self._make()
        return self._items

    def __getitem__(self, index):
        return self._value()[index]

    def __len__(self) -> int:
        return len(self._value())

    def __eq__(self, other) -> bool:
        return list(self._value()) == list(other)


def text_tokens(input_ids: torch.Tensor, tokenizer) -> list[list[str]]:
    """Readable token strings ``[B][N]``; ``#<id>`` when no tokenizer is known or it lacks the id.

    Sub-word markers become what they stand for: byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` a leading
    space, ``Ċ`` a newline, mangled bytes their UTF-8 text. A byte that is only part of a character keeps
    its raw form. Special tokens (``<s>``, ``[CLS]``) stay as they are.
    """
    ids = input_ids.tolist()
    if tokenizer is None:
        return [[f"#{i}" for i in row] for row in ids]
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    distinct = sorted({i for row in ids for i in row})  # each id converted once, not once per position
    # An id the tokenizer does not know (a model vocabulary larger than its tokenizer's) keeps its number.
    shown = {i: f"#{i}" if tok is None else tok if tok in special else readable_token(tok, tokenizer)
             for i, tok in zip(distinct, tokenizer.convert_ids_to_tokens(distinct))}
    return [[shown[i] for i in row] for row in ids]


def readable_token(token: str, tokenizer) -> str:
    """One sub-word token as text (see :func:`text_tokens`)."""
    if "▁" in token:  # SentencePiece: decoding one piece would drop the space the marker stands for
        return token.replace("▁", " ")
    try:
        text = tokenizer.convert_tokens_to_string([token])
    except (TypeError, ValueError, KeyError, AttributeError):
        return token
    return token if not text or "\ufffd" in text else text


def square_grid(n: int) -> tuple[int, int] | None:
    """``(r, r)`` when ``n`` is a perfect square, else ``None``."""
    r = math.isqrt(n)
    return (r, r) if r * r == n and n > 0 else None


#: The token kinds :func:`text_segments` tells apart, by code.
_KINDS = ("pad", "image", "special", "text")


def text_segments(input_ids: torch.Tensor, token_mask: torch.Tensor, special_ids: set[int],
                  image_token_id: int | None = None,
                  image_grid: tuple[int, int] | list[tuple[int, int]] | None = None) -> list[list[Segment]]:
    """Segments of token-id sequences: ``special`` ids, ``image`` placeholder runs, ``pad`` and ``text``.

    Args:
        input_ids: ``[B, N]``.
        token_mask: ``[B, N]`` bool, False for padding.
        special_ids: ids of special tokens (BOS, [CLS], [SEP], ...).
        image_token_id: id of the LVLM image placeholder, whose runs become image spans.
        image_grid: patch grid of each image span, or one grid per image span in reading order (batch item, then
            position) when images differ in shape (Qwen2-VL); a square grid is inferred when ``None``.
    """
    grids = list(image_grid) if isinstance(image_grid, list) else None
    live = token_mask.to(torch.bool)
    code = torch.full(input_ids.shape, _KINDS.index("text"), dtype=torch.int8)  # (B, N) one code per token kind
    special = sorted(i for i in special_ids if isinstance(i, int))
    if special:
        code[torch.isin(input_ids, torch.tensor(special, dtype=input_ids.dtype))] = _KINDS.index("special")
    if image_token_id is not None:
        code[input_ids == image_token_id] = _KINDS.index("image")
    code[~live] = _KINDS.index("pad")
    # maximal runs of one kind, in position order: a run starts where the kind changes
    starts = torch.ones(code.shape, dtype=torch.bool)
    starts[:, 1:] = code[:, 1:] != code[:, :-1]
    n_tokens = code.shape[1]
    runs: list[list[tuple[int, int]]] = [[] for _ in range(code.shape[0])]  # per row: (start, kind code)
    for (row, start), kind in zip(starts.nonzero().tolist(), code[starts].tolist()):  # row-major order
        runs[row].append((start, kind))
    out = []
    for row_runs in runs:
        segs, n_images = [], 0
        for (start, kind), end in zip(row_runs, [start for start, _ in row_runs[1:]] + [n_tokens]):
            kind = _KINDS[kind]
            grid, label = None, ""
            if kind == "image":
                own = (grids.pop(0) if grids else None) if grids is not None else image_grid
                grid = own or square_grid(end - start)
                if grid is not None and grid[0] * grid[1] != end - start:
                    grid = square_grid(end - start)
                label, n_images = f"image {n_images}", n_images + 1
            segs.append(Segment(kind, start, end, grid=grid, label=label))
        out.append(segs)
    return out


def vision_layout(batch: int, n_tokens: int, grid: tuple[int, int], n_registers: int = 0,
                  has_cls: bool = True, n_distill: int = 0) -> tuple[list[list[str]], list[list[Segment]]]:
    """Tokens and segments of a ViT-style sequence ``[CLS] [DIST]*d [REG]*r patches``.

    Args:
        batch: B.
        n_tokens: N; must equal ``has_cls + n_registers + rows * cols``.
        grid: patch grid ``(rows, cols)``.
        n_registers: register tokens after [CLS] (DINOv2 with registers).
        has_cls: whether a [CLS] token leads (SigLIP has none).
        n_distill: distillation tokens after [CLS] (DeiT, Touvron et al., 2021).
    """
    rows, cols = grid
    head = int(has_cls) + n_distill
    lead = head + n_registers
    if lead + rows * cols != n_tokens:
        raise ValueError(f"Vision sequence of {n_tokens} tokens does not match {lead} leading tokens + {rows}x{cols} patches")
    tokens = (["[CLS]"] if has_cls else []) + ["[DIST]"] * n_distill + [f"[REG{i}]" for i in range(n_registers)]
    tokens += [f"patch({r},{c})" for r in range(rows) for c in range(cols)]
    segs = []
    if has_cls:
        segs.append(Segment("special", 0, 1, label="[CLS]"))
    if n_distill:
        segs.append(Segment("special", int(has_cls), head, label="[DIST]"))
    if n_registers:
        segs.append(Segment("register", head, lead, label="registers"))
    segs.append(Segment("image", lead, n_tokens, grid=grid, label="image 0"))
    return [list(tokens) for _ in range(batch)], [list(segs) for _ in range(batch)]


def merged_patch_layout(grid_thw: list[tuple[int, int, int]], merge: int
                        ) -> tuple[list[list[str]], list[list[Segment]], torch.Tensor]:
    """Tokens, segments and token mask ``[n_images, n_max]`` of a Qwen2-VL-type vision tower (Wang et al., 2024), one
    item per image.

    Each image's ``t x h x w`` patches come in the patch merger's order: ``merge x merge`` windows in raster order,
    each window's patches in raster order. Tokens name each patch's place in the image, ``patch(row,col)`` (with
    ``t<i>`` in front for more than one frame); the image span has no ``grid``, since its order is not raster.
    """
    tokens, segments = [], []
    for t, h, w in grid_thw:
        names = [f"{f't{ti} ' if t > 1 else ''}patch({hb * merge + dh},{wb * merge + dw})"
                 for ti in range(t) for hb in range(h // merge) for wb in range(w // merge)
                 for dh in range(merge) for dw in range(merge)]
        tokens.append(names)
        segments.append([Segment("image", 0, len(names), label=f"image {len(tokens) - 1} ({h}x{w} patches)")])
    n_max = max((len(names) for names in tokens), default=0)
    mask = torch.tensor([[i < len(names) for i in range(n_max)] for names in tokens], dtype=torch.bool)
    for names, segs in zip(tokens, segments):
        if len(names) < n_max:
            segs.append(Segment("pad", len(names), n_max))
            names += ["[PAD]"] * (n_max - len(names))
    return tokens, segments, mask


def is_punctuation(token: str) -> bool:
    """True for tokens made only of punctuation (after stripping sub-word markers)."""
    core = token.replace("Ġ", "").replace("▁", "").replace("##", "").strip()
    return bool(core) and all(ch in string.punctuation for ch in core)


def word_of_pieces(tokens: list[str]) -> list[str]:
    """The whole word each WordPiece token belongs to (``["play", "##ing"] -> ["playing", "playing"]``).

    WordPiece (BERT, MiniLM) marks a piece that continues the previous one with a leading ``##``
    (Wu et al. 2016, §4.1); byte-level BPE and SentencePiece already read as text after
    :func:`text_tokens` and are returned unchanged, as are special tokens (``[CLS]``).

    Args:
        tokens: ``[N]`` token strings of one item.

    Returns:
        ``[N]`` the word of each token (the token itself when it is not part of a split word).

    Example:
        >>> word_of_pieces(["[CLS]", "play", "##ing", "now"])
        ['[CLS]', 'playing', 'playing', 'now']
    """
    words = list(tokens)
    start = 0
    for n, token in enumerate(tokens + [""]):
        if n < len(tokens) and token.startswith("##") and len(token) > 2 and n > 0:
            continue
        if n - start > 1:
            word = tokens[start] + "".join(t[2:] for t in tokens[start + 1:n])
            words[start:n] = [word] * (n - start)
        start = n
    return words
