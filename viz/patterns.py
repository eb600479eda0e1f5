"""One head's attention pattern from a Trace, labelled with the tokens (the figure most users start with)."""

from __future__ import annotations

import plotly.graph_objects as go

from attnlab.core.trace import Trace

from .attention import attention_heatmap


def head_pattern(trace: Trace, layer: int, head: int, batch: int = 0, title: str | None = None) -> go.Figure:
    """Heatmap of one head's attention over one item's real tokens (padding dropped).

    Args:
        trace: a Trace captured with ``Capture(pattern=True)``.
        layer: layer index (negative counts from the end).
        head: head index in ``[0, n_heads)``.
        batch: batch item.
        title: figure title; ``"<model> layer L head H"`` by default.

    Returns:
        A ``go.Figure``: queries as rows, keys as columns, labelled ``"position:token"``.

    Example:
        >>> head_pattern(trace, layer=3, head=5)  # doctest: +SKIP
    """
    record = trace.layer(layer)
    if record.pattern is None:
        raise ValueError("This Trace holds no attention patterns; capture with Capture(pattern=True)")
    n_heads = record.pattern.shape[1]  # (B, H, Q, K)
    if not -n_heads <= head < n_heads:
        raise ValueError(f"Head {head} is not in this model's heads 0..{n_heads - 1}")
    real = trace.real_positions(batch)  # (n,)
    pattern = record.pattern[batch % trace.batch_size, head].float().cpu()[real][:, real]  # (n, n)
    labels = [f"{int(p)}:{trace.tokens[batch][int(p)]}" for p in real]
    layer_index = layer % trace.meta.n_layers
    return attention_heatmap(pattern.numpy(), labels,
                             title or f"{trace.meta.model} layer {layer_index} head {head % n_heads}")
