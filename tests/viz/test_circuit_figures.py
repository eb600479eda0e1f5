"""Circuit figures: structure checked on hand-built results, without a browser."""

import numpy as np
import plotly.graph_objects as go

from attnlab.probes.circuits import CircuitEdge, CircuitGraph, writer_names
from attnlab.interventions.patching import PatchingResult
from attnlab.viz.circuits import circuit_graph_figure, patching_heatmap
from attnlab.viz.style import SIDE_COLOURS, head_grid


def _graph(edges):
    empty = np.zeros((0,))
    return CircuitGraph(edges=tuple(edges), firings=np.zeros((0, 5), int), scores=empty, attention=empty,
                        selected=np.zeros((0, 4), bool), writers=writer_names(3, 2), contrib_src=np.zeros((0, 10)),
                        contrib_dest=np.zeros((0, 10)), score_error=float("nan"), n_layers=3, n_heads=2,
                        threshold=0.7, attn_threshold=0.5, min_share=0.2, weighting="paper")


EDGES = [CircuitEdge("0.1", "1.0", "src", 0.8, 0.1, 5, 6, (0, 2)),
         CircuitEdge("0.0", "2.1", "dest", 0.4, 0.05, 3, 6, (1,)),
         CircuitEdge("1.1", "2.1", "src", 0.3, 0.02, 2, 6, (0,))]


def _edges(fig):
    """``[(writer, reader)]`` of the drawn edges, read off the arrows (one per edge, writer to reader)."""
    return [((a.ax, a.ay), (a.x, a.y)) for a in fig.layout.annotations if a.showarrow]


def _hover_points(fig):
    (points,) = [t for t in fig.data if t.name == "edges"]
    return points


def test_graph_figure_places_heads_on_the_grid_and_draws_edges():
    fig = circuit_graph_figure(_graph(EDGES))
    assert isinstance(fig, go.Figure)
    (heads,) = [t for t in fig.data if t.name == "heads"]
    assert list(heads.x) == [0, 0, 1, 1, 2, 2] and list(heads.y) == [0, 1, 0, 1, 0, 1]
    assert sorted(_edges(fig)) == [((0, 0), (2, 1)), ((0, 1), (1, 0)), ((1, 1), (2, 1))]  # writer -> reader
    lines = [t for t in fig.data if t.mode == "lines"]
    by_colour = {t.line.color: t for t in lines}
    assert set(by_colour) == {SIDE_COLOURS["src"], SIDE_COLOURS["dest"]}
    strong = max(lines, key=lambda t: t.line.width)
    assert list(strong.x[:2]) == [0, 1] and list(strong.y[:2]) == [1, 0]  # 0.1 -> 1.0, the strongest edge
    points = _hover_points(fig)
    assert list(points.x) == [0.5, 1.0, 1.5] and list(points.y) == [0.5, 0.5, 1.0]  # each edge's middle
    assert "0.1 → 1.0" in points.hovertext[0] and "components [0, 2]" in points.hovertext[0]
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "head"


def test_graph_figure_thresholds_and_tables():
    assert len(_edges(circuit_graph_figure(_graph(EDGES), min_strength=0.5))) == 1
    from_table = circuit_graph_figure(_graph(EDGES).to_frame())
    assert len(_edges(from_table)) == 3
    (heads,) = [t for t in from_table.data if t.name == "heads"]
    assert len(heads.x) == 6  # 3 layers x 2 heads read off the names
    empty = circuit_graph_figure(_graph([]))
    assert _edges(empty) == [] and len([t for t in empty.data if t.name == "heads"][0].x) == 6


def test_patching_heatmap_shows_the_effect_table():
    effect = np.array([[0.1, 0.9], [np.nan, -0.2], [0.0, 0.5]])
    res = PatchingResult(effect=effect, metric=effect * 2, clean=2.0, corrupted=0.0, method="path",
                         direction="denoise", receivers=((2, 1),), receiver_inputs="q")
    fig = patching_heatmap(res)
    (heat,) = fig.data
    assert isinstance(heat, go.Heatmap)
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), effect)
    assert list(heat.y) == ["0", "1", "2"] and list(heat.x) == [0, 1]
    assert heat.zmid == 0 and (heat.zmin, heat.zmax) == (-0.9, 0.9)
    assert heat.text[1][0] == "" and heat.text[0][1] == "0.90"
    assert "path patching (denoise) → 2.1 [q]" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert patching_heatmap(effect).layout.title.text == "Patching effect"
    seq = head_grid(np.ones((2, 2)), label="score")
    assert seq.data[0].zmid is None and seq.data[0].colorbar.title.text == "score"
