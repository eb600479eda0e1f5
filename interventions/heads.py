"""Head masking and scaling: parse ``L.H`` head lists and build Plans that scale head outputs."""

from __future__ import annotations

import re

from attnlab.kernels.plan import LayerPlan, Plan

_PART = re.compile(r"^(?P<layers>\d+(?:-\d+)?|\*)(?:\.(?P<heads>\d+(?:-\d+)?|\*))?$")


def _span(text: str | None, size: int, what: str, item: str) -> range:
    if text is None or text == "*":
        return range(size)
    lo, _, hi = text.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if lo_i > hi_i or hi_i >= size:
        raise ValueError(f"Head spec {item!r} names {what} {text}, outside the model's {what}s 0..{size - 1}")
    return range(lo_i, hi_i + 1)


def parse_heads(spec: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Parse a head list into sorted ``(layer, head)`` pairs.

    Grammar: comma-separated items ``L.H`` (one head), ``L`` or ``L.*`` (every head of layer L), ranges
    ``L1-L2.H1-H2``, and ``*.H`` (head H of every layer).

    Example:
        >>> parse_heads("0.1, 2, 3.0-1", n_layers=4, n_heads=2)
        [(0, 1), (2, 0), (2, 1), (3, 0), (3, 1)]

    Raises:
        ValueError: malformed items or heads outside the model, naming the item and the valid range.
    """
    pairs: set[tuple[int, int]] = set()
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError("Empty head spec; use e.g. '3.1' (layer 3 head 1), '2' (all heads of layer 2) or '0-1.4-5'")
    for item in items:
        match = _PART.match(item)
        if not match:
            raise ValueError(f"Bad head spec item {item!r}; use 'L.H', 'L' (all heads of L), ranges 'L1-L2.H1-H2' or '*.H'")
        for layer in _span(match["layers"], n_layers, "layer", item):
            for head in _span(match["heads"], n_heads, "head", item):
                pairs.add((layer, head))
    return sorted(pairs)


def scale_heads_plan(heads: list[tuple[int, int]], n_heads: int, factor: float = 0.0, name: str = "mask") -> Plan:
    """A Plan multiplying the output of each listed head by ``factor`` (0 masks it).

    Args:
        heads: ``(layer, head)`` pairs.
        n_heads: heads per layer.
        factor: output multiplier; 0 is head masking, 2 is VHR's reinforcement.
        name: Plan label.
    """
    per_layer: dict[int, list[float]] = {}
    for layer, head in heads:
        per_layer.setdefault(layer, [1.0] * n_heads)[head] = float(factor)
    return Plan({layer: LayerPlan(head_scale=tuple(scales)) for layer, scales in sorted(per_layer.items())}, name=name)


def model_shape(target) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of the main attention stack of a model, a Trace or a ModelSpec.

    Args:
        target: a Hugging Face model, a TransformerLens model or bridge (``cfg.n_layers``), a
            :class:`~attnlab.core.trace.Trace` (its ``meta``) or anything with ``n_layers`` and ``n_heads``
            (a :class:`~attnlab.zoo.load.ModelSpec`, a ``TraceMeta``).

    Raises:
        TypeError: for anything else, naming what is accepted.
    """
    meta = getattr(target, "meta", None)
    for source in (target, meta, getattr(target, "cfg", None)):
        if isinstance(getattr(source, "n_layers", None), int) and isinstance(getattr(source, "n_heads", None), int):
            return source.n_layers, source.n_heads
    from transformers import PreTrainedModel

    if isinstance(target, PreTrainedModel):
        from attnlab.hooks.hf import main_stack, stack_meta

        found = stack_meta(target, main_stack(target), "")
        return found.n_layers, found.n_heads
    raise TypeError(f"Cannot tell layers and heads of a {type(target).__name__}; pass a Hugging Face or "
                    "TransformerLens model, a Trace, a ModelSpec, or n_layers and n_heads as two integers")


def mask_plan(spec: str, model, n_heads: int | None = None, factor: float = 0.0) -> Plan:
    """Parse a head spec and build the masking (or scaling) Plan; see :func:`parse_heads`.

    Args:
        spec: heads, e.g. ``"3.5"`` (layer 3 head 5) or ``"0-1.*"``.
        model: the model, its Trace or ModelSpec, whose layer and head counts bound the spec; or
            ``n_layers`` as an integer followed by ``n_heads`` (the older form).
        n_heads: heads per layer, only with an integer ``model``.
        factor: output multiplier of the listed heads; 0 masks them.

    Example:
        >>> mask_plan("1.0", 2, 4).layers[1].head_scale
        (0.0, 1.0, 1.0, 1.0)
    """
    if isinstance(model, int) and not isinstance(model, bool):
        if not isinstance(n_heads, int):
            raise TypeError("mask_plan(spec, n_layers, n_heads): give n_heads as an integer, or pass the model "
                            "(or its Trace) instead of n_layers")
        n_layers = model
    else:
        if n_heads is not None:
            raise TypeError("mask_plan(spec, model) takes the head count from the model; drop n_heads "
                            "(pass factor=... by name)")
        n_layers, n_heads = model_shape(model)
    return scale_heads_plan(parse_heads(spec, n_layers, n_heads), n_heads, factor, name=f"mask:{spec}")
