"""Figures for vision-aware head divergence results."""

from __future__ import annotations

import plotly.graph_objects as go

from attnlab.probes.vhd import VHDResult

from .style import head_grid


def vhd_heatmap(result: VHDResult, batch: int = 0) -> go.Figure:
    """Layer x head grid of VHD at the aligned position (:func:`~attnlab.viz.style.head_grid`).

    Args:
        result: :func:`head_divergence` output.
        batch: batch item.

    Returns:
        A figure with one heatmap trace (rows = layers, columns = heads).
    """
    return head_grid(result.vhd[:, batch], result.layers, "VHD",
                     title=f"Vision-aware head divergence at token {result.tokens[batch]!r}")
