"""Evaluation figures: a metric of an eval summary per method (``attnlab eval compare``)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .style import MARGIN, layout_title


def eval_bars(summary: pd.DataFrame, metric: str) -> go.Figure:
    """One metric of an eval summary table per method, grouped by task and split."""
    frame = summary.dropna(subset=[metric]) if metric in summary else summary.iloc[0:0]
    data = []
    if len(frame):
        frame = frame.assign(group=frame["task"].astype(str) + " / " + frame["split"].astype(str))
        for method, part in frame.groupby("method", sort=False):
            data.append({"type": "bar", "x": part["group"].tolist(), "y": part[metric].to_numpy(), "name": str(method),
                         "hovertemplate": "%{x}<br>" + metric + " %{y:.3f}<extra>" + str(method) + "</extra>"})
    return go.Figure({"data": data, "layout": {
        "barmode": "group", "title": layout_title(f"{metric} by method"), "margin": MARGIN, "height": 360,
        "legend": {"title": {"text": "method"}}, "xaxis": {"title": {"text": "task / split"}},
        "yaxis": {"title": {"text": metric}}}})
