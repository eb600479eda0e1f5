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
        A ``go.Figure``: queries as rows, keys as columns, labelled ``"position:token"`` (a cross-attention
        Trace's columns with its key side's tokens, :meth:`~attnlab.core.trace.Trace.key_side`).

    Example:
        >>> head_pattern(trace, layer=3, head=5)  # doctest: +SKIP
    """
    record = trace.layer(layer)
    if record.pattern is None:
        raise ValueError("This Trace holds no attention patterns; capture with Capture(pattern=True)")
    n_heads = record.pattern.shape[1]  # (B, H, Q, K)
    if not -n_heads <= head < n_heads:
        raise ValueError(f"Head {head} is not in this model's heads 0..{n_heads - 1}")
    keys = trace.key_side()  # the encoder's tokens for a cross-attention Trace, else the queries
    real, real_keys = trace.real_positions(batch), keys.real_positions(batch)  # (q,), (k,)
    pattern = record.pattern[batch % trace.batch_size, head].float().cpu()[real][:, real_keys]  # (q, k)
    layer_index = layer % trace.meta.n_layers
    return attention_heatmap(pattern.numpy(), _labels(trace, batch, real),
                             title or f"{trace.meta.model} layer {layer_index} head {head % n_heads}",
                             key_labels=_labels(keys, batch, real_keys) if trace.is_cross else None)


def _labels(trace: Trace, batch: int, positions) -> list[str]:
    """``"position:token"`` of ``positions`` in one item of ``trace``."""
    return [f"{int(p)}:{trace.tokens[batch][int(p)]}" for p in positions]
