"""Figures for massive-activation results."""

from __future__ import annotations

import plotly.graph_objects as go

from attnlab.probes.massive import MassiveResult


def massive_activation_plot(result: MassiveResult, batch: int | None = None) -> go.Figure:
    """Top-k ``|h|`` and the median ``|h|`` of each layer's output, on a log axis (Sun et al.'s layer-wise plot).

    Args:
        result: :func:`massive_activations` output.
        batch: one batch item, or ``None`` to average over the batch (as the reference averages sequences).

    Returns:
        A figure with ``top_k + 1`` line traces.
    """
    top = result.top.mean(axis=1) if batch is None else result.top[:, batch]  # (L, k)
    median = result.median.mean(axis=1) if batch is None else result.median[:, batch]  # (L,)
    layers = list(result.layers)
    fig = go.Figure()
    for k in range(top.shape[1]):
        fig.add_trace(go.Scatter(x=layers, y=top[:, k], mode="lines+markers", name=f"top {k + 1}"))
    fig.add_trace(go.Scatter(x=layers, y=median, mode="lines+markers", name="median", line={"dash": "dash"}))
    fig.update_layout(title="Largest activation magnitudes per layer", xaxis_title="layer", yaxis_title="|activation|")
    # one labelled tick per decade: plotly's default log ticks label 0.3 as a bare "3"
    fig.update_yaxes(type="log", dtick=1, exponentformat="power")
    fig.update_xaxes(dtick=1)
    return fig
