"""Reading a Run's trace files: a header's segments and meta, tensor shapes, and any part of a tensor.

One reader for every consumer: :meth:`attnlab.core.runs.Run.trace` builds Traces with it, and the dashboard reads
single tensors, items and heads through the same functions (with its cache in front). A trace file is a
safetensors file whose keys are ``layer.{i}.{field}``, ``token_mask``, ``embeddings`` and, for cross-attention,
``key_mask``; its header in the manifest holds the tokens, segments, meta and captured layers (and the keys'
``key_tokens`` and ``key_segments``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from .manifest import RunFormatError, check_shapes
from .trace import LayerRecord, Segment, Trace, TraceMeta

#: ``reader(key, item)``: the tensor ``key`` whole (``item=None``) or its batch item ``item`` (leading axis kept).
Reader = Callable[[str, "int | None"], torch.Tensor]


def segments_of(header: dict) -> list[list[Segment]]:
    """Segments of every batch item from a trace header."""
    return [[Segment(s["kind"], s["start"], s["end"], tuple(s["grid"]) if s.get("grid") else None, s.get("label", ""))
             for s in segs] for segs in header["segments"]]


def meta_of(header: dict) -> TraceMeta:
    """The TraceMeta of a trace header."""
    meta = header["meta"]
    return TraceMeta(**{**meta, "captured": tuple(meta["captured"]), "score_terms": tuple(meta.get("score_terms", ()))})


@contextlib.contextmanager
def _opened(file: Path) -> Iterator:
    """A safetensors handle on ``file``; any failure while it is open is a :class:`RunFormatError`."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            yield handle
    except RunFormatError:
        raise
    except Exception as err:  # safetensors raises several types for damaged files
        raise RunFormatError(f"{file} is corrupt or truncated ({err}); re-create the Run") from err


def _shapes(handle, name: str, header: dict) -> dict[str, tuple[int, ...]]:
    shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    check_shapes(name, header, shapes)
    return shapes


def _part(handle, key: str, item: int | None, head: int | None) -> torch.Tensor:
    if item is None:
        return handle.get_tensor(key)
    part = handle.get_slice(key)
    if head is None:
        return part[item:item + 1][0].clone()
    return part[item:item + 1, head:head + 1][0, 0].clone()


def tensor_shapes(file: Path, name: str, header: dict) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a trace file (its header only), checked against the manifest's header.

    Raises:
        RunFormatError: a damaged file, or shapes that disagree with the manifest (a wrong head count, fewer
            tokens than the tensors).
    """
    with _opened(file) as handle:
        return _shapes(handle, name, header)


def read_tensor(file: Path, key: str, item: int | None = None, head: int | None = None) -> torch.Tensor:
    """One tensor of a trace file, or only its batch item ``item`` (``[...]`` without the batch axis) and head
    ``head``; a slice reads only its own bytes."""
    with _opened(file) as handle:
        return _part(handle, key, item, head)


def wanted_field(name: str, fields: Iterable[str] | None) -> bool:
    """Whether a layer field (``pattern``, ``stats.entropy`` ...) is among ``fields`` (``stats`` takes every
    ``stats.<name>``; ``None`` takes all)."""
    if fields is None:
        return True
    fields = tuple(fields)
    return name in fields or ("stats" in fields and name.startswith("stats."))


def load_trace(file: Path, name: str, header: dict, *, layers: Iterable[int] | None = None,
               fields: Iterable[str] | None = None, item: int | None = None, shapes: dict | None = None,
               reader: Reader | None = None) -> Trace:
    """A Trace of ``layers`` (default: every captured one) holding only ``fields`` (default: all), of every batch
    item or of ``item`` alone (batch size 1); nothing else is read.

    Args:
        file: the trace file; name, header: its manifest name and entry.
        layers, fields, item: what to read.
        shapes: :func:`tensor_shapes` of the file when the caller has them (a cache).
        reader: reads one tensor or one item of it (default: every read goes through one open handle; the
            dashboard passes its cache).

    Raises:
        RunFormatError: a damaged file, or layers the manifest lists but the file lacks.
        ValueError: an item outside the batch.
    """
    if item is not None and not 0 <= item < len(header["tokens"]):
        raise ValueError(f"Item {item} is not in this trace, which holds {len(header['tokens'])} item(s)")
    if reader is not None:
        shapes = tensor_shapes(file, name, header) if shapes is None else shapes
        return _build(file, header, shapes, layers, fields, item, reader)
    with _opened(file) as handle:  # one handle for every tensor read
        shapes = _shapes(handle, name, header) if shapes is None else shapes
        return _build(file, header, shapes, layers, fields, item, lambda key, i: _part(handle, key, i, None))


def _build(file: Path, header: dict, shapes: dict, layers, fields, item: int | None, read: Reader) -> Trace:
    def get(key: str) -> torch.Tensor:
        return read(key, None) if item is None else read(key, item)[None]

    chosen = list(header["layers"]) if layers is None else [i for i in header["layers"] if i in set(layers)]
    missing = [i for i in chosen if not any(k.startswith(f"layer.{i}.") for k in shapes)]
    if missing:
        raise RunFormatError(f"{file} lacks layers {missing} listed in the manifest; the Run is corrupt")
    records = {}
    for i in chosen:
        prefix = f"layer.{i}."
        records[i] = LayerRecord.from_tensors({key[len(prefix):]: get(key) for key in shapes
                                               if key.startswith(prefix) and wanted_field(key[len(prefix):], fields)})
    embeddings = get("embeddings") if "embeddings" in shapes and (fields is None or "resid" in fields) else None
    tokens, segments = header["tokens"], segments_of(header)
    keys = {}
    if header.get("key_tokens") is not None:  # a cross-attention Trace: keys are another sequence's tokens
        keys = dict(key_tokens=header["key_tokens"], key_segments=segments_of({"segments": header["key_segments"]}),
                    key_mask=get("key_mask"))
    if item is not None:
        tokens, segments = tokens[item:item + 1], segments[item:item + 1]
        if keys:
            keys["key_tokens"], keys["key_segments"] = (keys["key_tokens"][item:item + 1],
                                                        keys["key_segments"][item:item + 1])
    return Trace(tokens, segments, records, meta_of(header), get("token_mask"), embeddings, **keys)
