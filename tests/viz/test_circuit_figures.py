"""Circuit figures: structure checked on hand-built results, without a browser."""

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.circuits import CircuitEdge, CircuitGraph, writer_names
from attnlab.interventions.patching import PatchingResult
from attnlab.viz.circuits import SIDE_COLOURS, circuit_graph_figure, head_heatmap, patching_heatmap


def _graph(edges):
    empty = np.zeros((0,))
    return CircuitGraph(edges=tuple(edges), firings=np.zeros((0, 5), int), scores=empty, attention=empty,
                        selected=np.zeros((0, 4), bool), writers=writer_names(3, 2), contrib_src=np.zeros((0, 10)),
                        contrib_dest=np.zeros((0, 10)), score_error=float("nan"), n_layers=3, n_heads=2,
                        threshold=0.7, attn_threshold=0.5, min_share=0.2, weighting="paper")


EDGES = [CircuitEdge("0.1", "1.0", "src", 0.8, 0.1, 5, 6, (0, 2)),
         CircuitEdge("0.0", "2.1", "dest", 0.4, 0.05, 3, 6, (1,)),
         CircuitEdge("1.1", "2.1", "src", 0.3, 0.02, 2, 6, (0,))]


def _edge_traces(fig):
    return [t for t in fig.data if t.mode == "lines"]


def test_graph_figure_places_heads_on_the_grid_and_draws_edges():
    fig = circuit_graph_figure(_graph(EDGES))
    assert isinstance(fig, go.Figure)
    heads = fig.data[-1]
    assert heads.name == "heads" and heads.mode == "markers+text"
    assert list(heads.x) == [0, 0, 1, 1, 2, 2] and list(heads.y) == [0, 1, 0, 1, 0, 1]
    assert list(heads.text) == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    lines = _edge_traces(fig)
    assert len(lines) == 3
    strong, weak = lines[0], lines[1]  # edge order follows the table
    assert list(strong.x) == [0, 1] and list(strong.y) == [1, 0]  # 0.1 -> 1.0
    assert list(weak.x) == [0, 2] and list(weak.y) == [0, 1]  # 0.0 -> 2.1
    assert strong.line.width > weak.line.width > lines[2].line.width and strong.opacity > weak.opacity
    assert strong.line.color == SIDE_COLOURS["src"] and weak.line.color == SIDE_COLOURS["dest"]
    assert strong.line.dash == "solid" and weak.line.dash == "dot"
    assert "components [0, 2]" in strong.hovertext
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "head"


def test_graph_figure_thresholds_and_tables():
    assert len(_edge_traces(circuit_graph_figure(_graph(EDGES), min_strength=0.5))) == 1
    from_table = circuit_graph_figure(_graph(EDGES).to_frame())
    assert len(_edge_traces(from_table)) == 3
    assert len(from_table.data[-1].x) == 6  # 3 layers x 2 heads read off the names
    empty = circuit_graph_figure(_graph([]))
    assert len(_edge_traces(empty)) == 0 and len(empty.data[-1].x) == 6


def test_patching_heatmap_shows_the_effect_table():
    effect = np.array([[0.1, 0.9], [np.nan, -0.2], [0.0, 0.5]])
    res = PatchingResult(effect=effect, metric=effect * 2, clean=2.0, corrupted=0.0, method="path",
                         direction="denoise", receivers=((2, 1),), receiver_inputs="q")
    fig = patching_heatmap(res)
    (heat,) = fig.data
    assert isinstance(heat, go.Heatmap)
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), effect)
    assert list(heat.y) == [0, 1, 2] and list(heat.x) == [0, 1]
    assert heat.zmid == 0 and heat.text[1][0] == "" and heat.text[0][1] == "0.90"
    assert "path patching (denoise) → 2.1 [q]" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert patching_heatmap(effect).layout.title.text == "Patching effect"
    seq = head_heatmap(np.ones((2, 2)), title="scores", colorbar="score", zmid=None)
    assert seq.data[0].zmid is None and seq.data[0].colorbar.title.text == "score"
