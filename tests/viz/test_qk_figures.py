"""Joint query-key embedding figures: traces, points, hover, axis titles and the subplot grid (no browser)."""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta
from attnlab.probes.qk_embedding import QKEmbedding
from attnlab.probes.qk_heads import embed_all_heads
from attnlab.viz.qk import qk_heads_matrix, qk_scatter, qk_scatter_3d

N_INPUTS, N_TOKENS, N_LAYERS, N_HEADS = 2, 9, 2, 3
N_POINTS = 2 * N_INPUTS * N_TOKENS


@pytest.fixture(scope="module")
def trace() -> Trace:
    """Two inputs of ``[CLS]``, a 2 x 3 image and two text tokens, with random queries and keys."""
    rng = np.random.default_rng(0)
    layers = {i: LayerRecord(q=torch.tensor(rng.normal(size=(N_INPUTS, N_HEADS, N_TOKENS, 4)), dtype=torch.float32),
                             k=torch.tensor(rng.normal(size=(N_INPUTS, N_HEADS, N_TOKENS, 4)), dtype=torch.float32))
              for i in range(N_LAYERS)}
    segs = [Segment("special", 0, 1), Segment("image", 1, 7, grid=(2, 3)), Segment("text", 7, 9)]
    meta = TraceMeta(model="hand-built", family="llava", n_layers=N_LAYERS, n_heads=N_HEADS, d_head=4, d_model=12,
                     causal=False, captured=("qk",))
    tokens = [["[CLS]"] + [f"patch{i}" for i in range(6)] + ["red", "."] for _ in range(N_INPUTS)]
    return Trace(tokens=tokens, segments=[segs] * N_INPUTS, layers=layers, meta=meta,
                 token_mask=torch.ones(N_INPUTS, N_TOKENS, dtype=torch.bool))


@pytest.fixture(scope="module")
def fitted(trace) -> QKEmbedding:
    return QKEmbedding(method="pca").fit(trace, layer=1, head=2)


def n_points(fig: go.Figure) -> int:
    return sum(len(t.x) for t in fig.data)


def test_scatter_by_kind_has_queries_and_keys(fitted):
    fig = qk_scatter(fitted)
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == ["query", "key"]
    assert all(isinstance(t, go.Scattergl) for t in fig.data)
    assert [len(t.x) for t in fig.data] == [N_POINTS // 2] * 2
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("PC1", "PC2")
    assert "layer 1, head 2" in fig.layout.title.text
    np.testing.assert_allclose(fig.data[0].x, fitted.embedding_[: N_POINTS // 2, 0])


def test_hover_shows_token_and_position(fitted):
    fig = qk_scatter(fitted)
    custom = fig.data[1].customdata
    assert custom.shape == (N_POINTS // 2, 5)  # token, kind, position, input, batch item
    assert tuple(custom[0][:3]) == ("[CLS]", "key", 0) and tuple(custom[8][:3]) == (".", "key", 8)
    assert "customdata[0]" in fig.data[1].hovertemplate and "position" in fig.data[1].hovertemplate


def test_numeric_colour_uses_one_scale(fitted):
    fig = qk_scatter(fitted, color="position")
    assert len(fig.data) == 2 and n_points(fig) == N_POINTS
    assert all(t.marker.coloraxis == "coloraxis" for t in fig.data)
    assert list(fig.data[0].marker.color) == list(range(N_TOKENS)) * N_INPUTS
    assert fig.layout.coloraxis.colorbar.title.text == "position"
    fig = qk_scatter(fitted, color="patch_col")
    assert sorted(set(fig.data[0].marker.color)) == [-1, 0, 1, 2]


def test_categorical_colour_gives_one_trace_per_value(fitted):
    fig = qk_scatter(fitted, color="segment")
    assert sorted(t.name for t in fig.data) == ["image", "special", "text"] and n_points(fig) == N_POINTS
    image = next(t for t in fig.data if t.name == "image")
    assert len(image.x) == 2 * N_INPUTS * 6 and set(image.marker.symbol) == {"circle", "diamond"}
    fig = qk_scatter(fitted, color="category")
    assert sorted(t.name for t in fig.data) == ["image", "initial", "other", "punctuation"]


def test_axis_titles_follow_the_method(fitted):
    points = fitted.points_.copy()
    points.attrs = {**fitted.points_.attrs, "method": "tsne"}
    fig = qk_scatter(points)
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("t-SNE 1", "t-SNE 2")
    points.attrs = {}
    assert qk_scatter(points).layout.xaxis.title.text == "dim 1"


def test_3d_scatter(trace, fitted):
    fig = qk_scatter_3d(QKEmbedding(method="pca", n_components=3).fit(trace, layer=0, head=0), color="norm")
    assert all(isinstance(t, go.Scatter3d) for t in fig.data) and n_points(fig) == N_POINTS
    scene = fig.layout.scene
    assert (scene.xaxis.title.text, scene.yaxis.title.text, scene.zaxis.title.text) == ("PC1", "PC2", "PC3")
    with pytest.raises(ValueError, match="n_components=3"):
        qk_scatter_3d(fitted)


def test_heads_matrix_has_one_subplot_per_head(trace):
    result = embed_all_heads(trace, QKEmbedding(method="pca"))
    fig = qk_heads_matrix(result)
    cells = N_LAYERS * N_HEADS
    assert len([k for k in fig.layout if k.startswith("xaxis")]) == cells
    assert len(fig.data) == 2 * cells and n_points(fig) == cells * N_POINTS
    assert [a.text for a in fig.layout.annotations] == [f"L{l} H{h} ρ {result.layout_correlations[l, h]:+.2f}"
                                                        for l in range(N_LAYERS) for h in range(N_HEADS)]
    assert sum(bool(t.showlegend) for t in fig.data) == 2  # one legend entry per kind
    # the trace of layer 1, head 2 sits in the last cell and holds that head's coordinates
    last = [t for t in fig.data if t.xaxis == f"x{cells}"]
    np.testing.assert_allclose(last[0].x, result.coords[1, 2, : N_POINTS // 2, 0])
    small = qk_heads_matrix(result, color="position", max_points=10)
    assert n_points(small) == cells * 10


def test_bad_inputs_raise(fitted):
    with pytest.raises(ValueError, match="colour encoding"):
        qk_scatter(fitted, color="rainbow")
    with pytest.raises(TypeError, match="fitted QKEmbedding"):
        qk_scatter(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="lacks columns"):
        qk_scatter(fitted.points_.drop(columns=["x"]))
