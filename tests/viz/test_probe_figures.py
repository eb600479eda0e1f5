"""Probe figures: structure only (trace counts, types, axis titles); nothing is shown or saved."""

import plotly.graph_objects as go
import pytest

from attnlab.probes.flow import attention_flow
from attnlab.probes.massive import massive_activations
from attnlab.probes.registers import high_norm_tokens
from attnlab.probes.rollout import attention_rollout
from attnlab.probes.sinks import sink_tokens
from attnlab.probes.vhd import head_divergence
from attnlab.viz.massive import massive_activation_plot
from attnlab.viz.registers import artifact_map, norm_histogram
from attnlab.viz.relevance import relevance_bar, relevance_grid
from attnlab.viz.sinks import sink_heatmap
from attnlab.viz.vhd import vhd_heatmap


def axis_titles(fig: go.Figure) -> tuple[str, str]:
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


@pytest.mark.parametrize("probe", [attention_rollout, attention_flow])
def test_relevance_figures(probe, vit_trace):
    result = probe(vit_trace)
    bar = relevance_bar(result)
    assert len(bar.data) == 1 and isinstance(bar.data[0], go.Bar) and len(bar.data[0].x) == vit_trace.n_tokens
    assert axis_titles(bar) == ("input token", "relevance")
    grid = relevance_grid(result)
    assert len(grid.data) == 1 and isinstance(grid.data[0], go.Heatmap)
    assert (len(grid.data[0].z), len(grid.data[0].z[0])) == (4, 4)
    assert axis_titles(grid) == ("patch column", "patch row")
    with pytest.raises(ValueError, match="segment"):
        relevance_grid(result, segment=1)


def test_sink_heatmap(vit_trace):
    fig = sink_heatmap(sink_tokens(vit_trace))
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    assert (len(fig.data[0].z), len(fig.data[0].z[0])) == (3, 2)
    assert axis_titles(fig) == ("head", "layer")
    assert fig.layout.xaxis.dtick == 1 and fig.layout.yaxis.type == "category"  # 2 heads: no ticks at -0.5, 0.5


def test_massive_activation_plot(vit_trace):
    fig = massive_activation_plot(massive_activations(vit_trace, top_k=3))
    assert len(fig.data) == 4 and [t.name for t in fig.data] == ["top 1", "top 2", "top 3", "median"]
    assert axis_titles(fig) == ("layer", "|activation|") and fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis.dtick == 1  # one labelled tick per decade, never a bare "3" for 0.3
    assert len(massive_activation_plot(massive_activations(vit_trace), batch=0).data) == 4


def test_register_figures(vit_trace):
    result = high_norm_tokens(vit_trace, threshold=30.0)
    hist = norm_histogram(result)
    assert len(hist.data) == 1 and isinstance(hist.data[0], go.Histogram) and len(hist.layout.shapes) == 1
    assert axis_titles(hist) == ("token norm", "patch tokens")
    grid = artifact_map(result)
    assert [type(t) for t in grid.data] == [go.Heatmap, go.Scatter] and len(grid.data[1].x) == 2  # positions 3 and 7
    assert axis_titles(grid) == ("patch column", "patch row")
    clean = norm_histogram(high_norm_tokens(vit_trace), layer=0)
    assert len(clean.layout.shapes) == 0


def test_vhd_heatmap(vit_trace, text_trace):
    vit_trace.tokens[0][-1] = "p"
    fig = vhd_heatmap(head_divergence(vit_trace, text_trace))
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    assert (len(fig.data[0].z), len(fig.data[0].z[0])) == (3, 2)
    assert axis_titles(fig) == ("head", "layer")


def test_relevance_bar_labels_words_and_says_what_red_means(text_trace):
    text_trace.tokens[0][1:] = ["play", "##ing"]
    result = attention_rollout(text_trace)
    bar = relevance_bar(result)
    trace = bar.data[0]
    assert list(trace.x) == ["0:[CLS]", "1:playing", "2:playing"]  # word first
    assert trace.customdata[2] == "##ing (piece of playing)" and trace.customdata[0] == "[CLS]"  # raw piece on hover
    assert "%{customdata}" in trace.hovertemplate
    out = int(result.positions[0])
    red = [i for i, c in enumerate(trace.marker.color) if c == "#d62728"]
    assert red == [out]
    note = bar.layout.annotations[0].text
    assert "red: the output token" in note and trace.x[out] in note
    pooled = relevance_bar(attention_rollout(text_trace, position="mean"))
    assert "#d62728" not in pooled.data[0].marker.color and not pooled.layout.annotations  # no red bar, no note


def test_artifact_map_legend_names_the_red_marks(vit_trace):
    result = high_norm_tokens(vit_trace, threshold=30.0)
    grid = artifact_map(result)
    marks = grid.data[1]
    assert marks.marker.color == "red" and marks.marker.symbol == "x"
    assert grid.layout.showlegend and marks.showlegend is not False
    assert marks.name == "high-norm artifact (norm above 30.0)"
