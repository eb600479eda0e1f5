"""The figures the dashboard, the notebooks and the CLI share, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attnlab.viz.attention import (attention_heatmap, attention_minimap, colour_range, compare_attention, max_pool,
                                   patch_overlay, resolve_scale, zoom_window)
from attnlab.viz.text_view import CELL_PAD, LINE_CHARS, text_length, token_text_view
from attnlab.viz.circuits import circuit_figure
from attnlab.viz.evals import eval_bars
from attnlab.viz.qk import qk_small_multiples
from attnlab.viz.style import head_grid, message_figure, stamp


def test_attention_heatmap_is_on_the_fixed_scale_with_queries_down():
    pattern = np.array([[1.0, 0.0], [0.25, 0.75]])
    fig = attention_heatmap(pattern, ["0:a", "1:b"], "layer 0, head 1")
    trace = fig.data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), pattern)
    assert (trace.zmin, trace.zmax) == (0, 1) and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.title.text == "layer 0, head 1"


def _cells(trace) -> list[tuple[int, float, float, str]]:
    """``(line, left, right, text)`` of each text-view cell."""
    return [(int(y), float(b), float(b) + float(w), t) for y, b, w, t in zip(trace.y, trace.base, trace.x, trace.text)]


def test_text_view_at_400_tokens_keeps_every_label_whole_and_apart():
    rng = np.random.default_rng(0)
    pieces = ["the", "##ing", "[CLS]", "internationalization", "<s>", "\n", " a", "x" * 30, "supercalifragilistic"]
    tokens = [pieces[i] for i in rng.integers(0, len(pieces), 400)]
    tokens[17] = "y" * 120  # longer than a line: cut in its cell, whole on hover
    row = rng.dirichlet(np.ones(400)) / 3  # a long input's weights: all far below 1
    col = rng.random(400) * 0.2
    fig = token_text_view(tokens, list(range(1000, 1400)), row, col, focus=250)
    top, bottom, top_text, _ = fig.data
    assert list(top_text.text) == list(top.text) and top_text.mode == "text"
    np.testing.assert_allclose(top_text.x, [b + w / 2 for b, w in zip(top.base, top.x)])  # centred in its cell
    for trace in (top, bottom):
        cells = _cells(trace)
        assert len(cells) == 400
        for (line, left, right, text), nxt in zip(cells, cells[1:] + [None]):
            assert 0 <= left and right <= LINE_CHARS
            assert right - left >= text_length(text) + CELL_PAD  # the text fits its cell in a monospace font
            if nxt is not None and nxt[0] == line:
                assert nxt[1] >= right  # the next cell on the line starts after this one ends
            elif nxt is not None:
                assert nxt[0] == line + 1
        assert cells[-1][0] > 20  # wrapped onto many lines (the old grid drew 20 fixed cells a row)
    # whole tokens: no cell is cut below a whole line, and the hover names every token in full
    assert [i for i, t in enumerate(top.text) if t.endswith("…")] == [17]  # only the token longer than a line
    assert all(h.startswith(t.replace("<", "&lt;").replace(">", "&gt;").replace("\n", "↵"))
               for h, t in zip(top.hovertext, tokens))
    assert "y" * 120 in top.hovertext[17] and top.text[17].endswith("…")
    # each panel's colour runs from 0 to its own largest value (the focused row's max), and shows its scale
    assert top.marker.cmin == 0 and top.marker.cmax == pytest.approx(row.max(), rel=1e-6)
    assert bottom.marker.cmax == pytest.approx(col.max(), rel=1e-6) and row.max() < 0.2
    np.testing.assert_allclose(np.asarray(top.marker.color, dtype=float), row, rtol=1e-6)
    assert top.marker.showscale and bottom.marker.showscale and "row max" in top.marker.colorbar.title.text
    assert [c[0] for c in top.customdata[:3]] == [1000, 1001, 1002]  # what a click reports
    line, left, right, _ = _cells(top)[250]
    shape = fig.layout.shapes[0]
    assert (shape.x0, shape.x1, shape.y0, shape.y1) == (left, right, line - 0.5, line + 0.5)
    assert "position 1250" in fig.layout.annotations[0].text and "click" in fig.layout.title.text


def test_text_view_hover_names_the_word_and_image_cells_are_not_focusable():
    tokens, words = ["[CLS]", "play", "##ing", "img 4×4"], ["[CLS]", "playing", "playing", "img 4×4"]
    fig = token_text_view(tokens, [0, 1, 2, -1], np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4), focus=2,
                          words=words)
    top = fig.data[0]
    assert top.text == ("[CLS]", "play", "##ing", "img 4×4")
    assert top.hovertext[2] == "##ing (word playing)<br>position 2" and "position" not in top.hovertext[3]
    assert top.customdata[3][0] == -1 and top.customdata[2][1] == pytest.approx(0.3)
    assert len({line for line, *_ in _cells(top)}) == 1  # four short tokens share one line
    assert fig.data[1].marker.cmax > 0  # an all-zero column still has a valid colour range


def test_heatmap_hover_names_the_raw_piece_while_the_axes_keep_the_word():
    labels = ["0:[CLS]", "1:playing", "2:playing"]
    fig = attention_heatmap(np.eye(3), labels, "t", hover_labels={"2:playing": "2:playing (piece ##ing)"})
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        # hover labels get the prefix and the suffix, a tick (but a lone one) never both: aliases reach hover only
        assert axis.labelalias == {"\u200b2:playing\u200b": "2:playing (piece ##ing)"}
        assert (axis.tickprefix, axis.showtickprefix, axis.ticksuffix, axis.showticksuffix) == \
            ("\u200b", "first", "\u200b", "last")
    assert list(fig.data[0].y) == labels
    assert attention_heatmap(np.eye(3), labels, "t").layout.xaxis.labelalias is None


def test_patch_overlay_paints_the_grid_over_the_image():
    grid = np.arange(6, dtype=float).reshape(2, 3) / 10
    uri = "data:image/png;base64,iVBORw0KGgo="
    fig = patch_overlay(uri, grid, "attention of 5:x")
    assert fig.data[0].type == "image" and fig.data[-1].type == "heatmap"
    np.testing.assert_array_equal(np.asarray(fig.data[-1].z), grid)
    image = fig.layout.images[0]
    assert (image.sizex, image.sizey, image.x, image.y) == (3, 2, -0.5, -0.5)  # covers the grid cells exactly
    assert list(fig.layout.yaxis2.range) == [1.5, -0.5]  # first patch row at the top, as in the image
    alone = patch_overlay(None, grid, "t")
    assert [t.type for t in alone.data] == ["heatmap"] and "not available" in alone.layout.annotations[-1].text


def test_head_grid_signed_scale_is_symmetric():
    fig = head_grid(np.array([[0.5, -2.0], [1.0, np.nan]]), [3, 4], "patching effect", signed=True,
                    selected=(4, 1))
    trace = fig.data[0]
    assert (trace.zmin, trace.zmax, trace.zmid) == (-2.0, 2.0, 0.0) and list(trace.y) == ["3", "4"]
    assert fig.layout.shapes[0].y0 == 0.5


def test_circuit_figure_hides_weak_edges():
    edges = pd.DataFrame({"upstream": ["0.0", "0.1", "embed"], "downstream": ["1.0", "1.1", "1.0"],
                          "side": ["src", "dest", "src"], "strength": [0.9, 0.1, 0.5]})
    fig = circuit_figure(edges, 2, 2, min_strength=0.3)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(len(t.x) // 3 for t in lines) == 2 and "2 edges" in fig.layout.title.text
    assert {t.line.color for t in lines} == {"#1f77b4"}  # only key-side reads pass the threshold


def _points():
    rng = np.random.default_rng(0)
    rows = [("query" if i < 5 else "key", 0, 0, i % 5, f"w{i % 5}", "text" if i % 5 else "special") for i in range(10)]
    frame = pd.DataFrame(rows, columns=["kind", "input", "batch", "position", "token", "segment"])
    frame["x"], frame["y"] = rng.normal(size=10), rng.normal(size=10)
    return frame


def test_qk_scatter_colours_queries_and_keys():
    from attnlab.viz.qk import qk_scatter
    from attnlab.viz.style import QUERY_COLOUR, SEGMENT_COLOURS

    fig = qk_scatter(_points(), "kind", "layer 0, head 0")
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"query", "key"}
    assert by_name["query"].marker.color == QUERY_COLOUR and by_name["key"].marker.color != QUERY_COLOUR
    assert list(by_name["key"].customdata[0]) == ["w0", "key", 0, 0, 0]  # token, kind, position, input, item
    continuous = qk_scatter(_points(), "position", "t")
    assert [t.name for t in continuous.data] == ["query", "key"]
    assert continuous.layout.coloraxis.colorbar.title.text == "position"
    assert continuous.data[1].marker.symbol == "diamond"
    by_segment = {t.name: t for t in qk_scatter(_points(), "segment", "t").data}
    assert by_segment["special"].marker.color == SEGMENT_COLOURS["special"]


def test_small_multiples_lay_panels_side_by_side():
    frames = [(f"head {h}", _points()) for h in range(6)]
    fig = qk_small_multiples(frames, "segment", "layer 1", cols=4)
    domains = sorted({tuple(fig.layout[f"xaxis{'' if i == 0 else i + 1}"].domain) for i in range(6)})
    assert len(domains) == 4 and all(a[1] < b[0] for a, b in zip(domains, domains[1:]))
    assert len(fig.layout.annotations) == 6 and fig.layout.height == 60 + 190 * 2


def test_compare_attention_difference_panel():
    a = np.eye(3)
    b = np.full((3, 3), 1 / 3)
    fig = compare_attention(a, b, ["0:x", "1:y", "2:z"], ("base", "method"))
    np.testing.assert_allclose(np.asarray(fig.data[2].z), b - a)
    assert fig.data[2].zmid == 0 and fig.data[2].zmax == pytest.approx(2 / 3)


def test_eval_bars_one_trace_per_method():
    summary = pd.DataFrame({"task": ["pope"] * 4, "split": ["random", "random", "popular", "popular"],
                            "method": ["baseline", "vhr"] * 2, "f1": [0.7, 0.75, 0.6, 0.65]})
    fig = eval_bars(summary, "f1")
    assert [t.name for t in fig.data] == ["baseline", "vhr"] and list(fig.data[1].y) == [0.75, 0.65]
    assert eval_bars(summary, "chair_s").data == ()


def test_message_figure_is_marked_empty():
    fig = message_figure("not available in this Run")
    assert fig.layout.meta["empty"] and fig.data == ()


def _long_pattern(n: int = 400) -> np.ndarray:
    """A causal map whose rows put 0.6 on the first token and spread the rest uniformly (a sink head)."""
    pattern = np.zeros((n, n))
    pattern[0, 0] = 1.0
    for i in range(1, n):
        pattern[i, 0] = 0.6
        pattern[i, 1:i + 1] = 0.4 / i
    return pattern


def test_long_inputs_default_to_the_per_head_max_and_can_hide_the_sink():
    n = 400
    labels = [f"{i}:t{i}" for i in range(n)]
    fig = attention_heatmap(_long_pattern(n), labels, "t", scale="auto")
    trace = fig.data[0]
    assert (trace.zmin, trace.zmax) == (0, 1.0)  # per-head max: here the first row's weight 1 on itself
    hidden = attention_heatmap(_long_pattern(n), labels, "t", scale="auto", exclude_first=True).data[0]
    assert list(hidden.x) == labels[1:] and np.asarray(hidden.z).shape == (n, n - 1)
    assert hidden.zmax == pytest.approx(0.4)  # row 1 gives 0.4 to token 1: the largest weight off the sink column
    assert resolve_scale("auto", 100) == "fixed" and resolve_scale(None, 101) == "max"
    with pytest.raises(ValueError, match="colour scale"):
        resolve_scale("rainbow", 10)


def test_colour_scales_by_hand():
    values = np.arange(100, dtype=float) / 100  # 0.00 ... 0.99
    _, p99 = colour_range(values, "p99")
    assert p99["zmax"] == pytest.approx(0.98 + 0.01 * (0.99 - 0.98))  # rank 0.99 * 99 = 98.01: 1% past 0.98
    z, log = colour_range(np.array([1e-6, 1e-3, 0.3]), "log")
    np.testing.assert_allclose(z, [-4.0, -3.0, np.log10(0.3)])  # below the floor 1e-4: clipped to it
    assert log["zmin"] == -4 and log["zmax"] == pytest.approx(np.log10(0.3))
    assert log["colorbar"]["ticktext"] == ["0.0001", "0.001", "0.01", "0.1", "1"]  # weights, not exponents
    _, fixed = colour_range(values, "fixed")
    assert (fixed["zmin"], fixed["zmax"]) == (0.0, 1.0)


def test_heatmap_cells_are_square_and_keep_every_label():
    labels = [f"{i}:w{i}" for i in range(300)]
    fig = attention_heatmap(np.full((300, 300), 1 / 300), labels, "t", scale="max")
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    assert list(fig.data[0].x) == labels and list(fig.data[0].y) == labels
    assert fig.layout.xaxis.tickmode is None  # plotly's auto ticks: thinned to fit, refined on zoom


def test_comparison_keeps_labels_past_forty_tokens():
    labels = [f"{i}:w{i}" for i in range(60)]
    fig = compare_attention(np.eye(60), np.eye(60), labels, ("a", "b"))
    assert all(fig.layout[f"xaxis{n}"].showticklabels is not False for n in ("", "2", "3"))
    assert fig.layout.yaxis.showticklabels is not False and list(fig.data[0].y) == labels


def test_stamp_names_the_download_and_the_subtitle():
    fig = stamp(attention_heatmap(np.eye(2), ["0:a", "1:b"], "layer 1, head 2"), "Run 0:x · m", "attnlab_x")
    assert fig.layout.meta["export"] == "attnlab_x" and fig.layout.title.subtitle.text == "Run 0:x · m"
    assert fig.layout.title.text == "layer 1, head 2"  # the title itself is unchanged


def test_circuit_edges_have_arrows_from_writer_to_reader():
    edges = pd.DataFrame({"upstream": ["0.0", "0.1"], "downstream": ["1.1", "1.0"], "side": ["src", "dest"],
                          "strength": [0.9, 0.5]})
    fig = circuit_figure(edges, 2, 2, min_strength=0.3)
    arrows = [(a.ax, a.ay, a.x, a.y) for a in fig.layout.annotations if a.showarrow]
    assert sorted(arrows) == [(0, 0, 1, 1), (0, 1, 1, 0)]  # tail at the writer (layer 0), head at the reader


def _block_maxima(matrix: np.ndarray, size: int) -> np.ndarray:
    """The oracle: each ``size x size`` block's maximum by explicit loops (the last blocks may be shorter)."""
    n_q, n_k = matrix.shape
    return np.array([[matrix[i:i + size, j:j + size].max() for j in range(0, n_k, size)]
                     for i in range(0, n_q, size)])


def test_minimap_max_pooling_keeps_each_blocks_maximum():
    rng = np.random.default_rng(0)
    m = rng.random((10, 10)) * 0.1
    m[3, 6] = 0.9  # one strong weight: it must colour its whole block, not be averaged away
    pooled, bq, bk = max_pool(m, 5)
    assert (bq, bk) == (2, 2) and pooled.shape == (5, 5)
    np.testing.assert_allclose(pooled, _block_maxima(m, 2), rtol=1e-6)
    assert pooled[1, 3] == pytest.approx(0.9)
    by_hand = np.arange(49, dtype=float).reshape(7, 7)  # 7 into at most 3 blocks of 3: rows 0-2, 3-5, 6
    pooled, bq, bk = max_pool(by_hand, 3)
    np.testing.assert_array_equal(pooled, [[16, 19, 20], [37, 40, 41], [44, 47, 48]])
    wide = rng.random((13, 11))  # not square, neither divisible: blocks of 5 and 4
    pooled, bq, bk = max_pool(wide, 3)
    assert (bq, bk) == (5, 4) and pooled.shape == (3, 3)
    np.testing.assert_allclose(pooled, [[wide[i:i + 5, j:j + 4].max() for j in (0, 4, 8)] for i in (0, 5, 10)])
    assert max_pool(m, 96)[0].shape == (10, 10)  # a small matrix stays whole


def test_minimap_outlines_the_view_on_the_per_head_max_scale():
    rng = np.random.default_rng(1)
    m = rng.dirichlet(np.ones(400), size=400) / 2  # a long input's weights, all far below 1
    fig = attention_minimap(m, view=((100.5, 139.5), (59.5, 20.5)))
    trace = fig.data[0]
    assert np.asarray(trace.z).shape == (80, 80)  # 400 in blocks of 5: at most 96 per axis
    np.testing.assert_allclose(np.asarray(trace.z), _block_maxima(m, 5), rtol=1e-6)
    assert (trace.zmin, trace.zmax) == (0, pytest.approx(m.max()))  # the heatmap's per-head max rule
    assert list(trace.x[:2]) == [2.0, 7.0] and trace.y[-1] == 397.0  # block centres, in token indices
    (rect,) = fig.layout.shapes
    assert (rect.type, rect.xref, rect.yref) == ("rect", "x", "y")
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (100.5, 139.5, 20.5, 59.5)
    x, y = fig.layout.xaxis, fig.layout.yaxis
    assert tuple(x.range) == (-0.5, 399.5) and tuple(y.range) == (399.5, -0.5)  # the whole matrix, queries down
    assert (y.scaleanchor, y.scaleratio) == ("x", 1) and not x.showticklabels and not y.showticklabels
    assert not attention_minimap(m).layout.shapes  # no view, no outline


def test_zoom_window_is_centred_and_stays_inside():
    assert zoom_window(200, 400) == [179.5, 219.5]  # tokens 180-219
    assert zoom_window(3, 400) == [-0.5, 39.5] and zoom_window(398, 400) == [359.5, 399.5]
    assert zoom_window(5, 12) == [-0.5, 11.5]  # fewer tokens than the window: all of them


def test_comparison_and_token_bars_show_the_raw_piece_on_hover_only():
    """Word-first labels keep the axes; a word piece's raw form reaches the hover (labelalias keyed by the marked
    label) on every axis of the Interventions comparison and on the QK token bars."""
    from attnlab.viz.attention import compare_attention, token_bar
    from attnlab.viz.style import TICK_MARK

    labels = ["0:the", "1:playing", "2:playing"]
    pieces = {"1:playing": "1:playing (piece play)", "2:playing": "2:playing (piece ##ing)"}
    fig = compare_attention(np.eye(3), np.eye(3) * 0.5, labels, ("a", "b"), hover_labels=pieces)
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2", "xaxis3", "yaxis3"):
        alias = fig.layout[axis].labelalias
        assert alias == {f"{TICK_MARK}{k}{TICK_MARK}": v for k, v in pieces.items()}, axis
        assert fig.layout[axis].showtickprefix == "first" and fig.layout[axis].showticksuffix == "last"
    assert list(fig.data[0].x) == labels  # the axes keep the word-first labels
    bar = token_bar(labels, np.array([0.2, 0.5, 0.3]), "t", hover_labels=pieces)
    assert bar.layout.xaxis.labelalias == {f"{TICK_MARK}{k}{TICK_MARK}": v for k, v in pieces.items()}
    assert "labelalias" not in token_bar(labels, np.array([0.2, 0.5, 0.3]), "t").layout.xaxis.to_plotly_json()


def test_cross_attention_heatmap_labels_keys_apart_from_queries():
    """A cross-attention map ``[Q, K]`` (decoder queries x encoder keys) keeps each side's labels and hovers."""
    pattern = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])  # (Q=2, K=3)
    queries, keys = ["0:<bos>", "1:der"], ["0:the", "1:play", "2:playing"]
    fig = attention_heatmap(pattern, queries, "t", key_labels=keys, hover_labels={"1:der": "1:der (piece ▁der)"},
                            key_hover_labels={"2:playing": "2:playing (piece ##ing)"})
    heat = fig.data[0]
    assert list(heat.x) == keys and list(heat.y) == queries
    np.testing.assert_allclose(np.asarray(heat.z), pattern, rtol=1e-6)
    assert list(fig.layout.xaxis.labelalias.values()) == ["2:playing (piece ##ing)"]
    assert list(fig.layout.yaxis.labelalias.values()) == ["1:der (piece ▁der)"]
    assert list(attention_heatmap(pattern, queries, "t", key_labels=keys, exclude_first=True).data[0].x) == keys[1:]
    with pytest.raises(ValueError, match="key_labels for cross-attention"):
        attention_heatmap(pattern, queries, "t")  # keys labelled with the queries: the old mistake


def test_cross_text_view_draws_key_cells_that_do_not_refocus():
    row, col = np.array([0.2, 0.7, 0.1]), np.array([0.6, 0.3])
    keys = {"tokens": ["the", "cat", "sat"], "positions": [0, 1, 2], "outline": 1}
    fig = token_text_view(["<bos>", "der"], [0, 1], row, col, focus=1, keys=keys)
    top, bottom = fig.data[:2]
    assert list(top.text) == ["the", "cat", "sat"] and list(bottom.text) == ["&lt;bos&gt;", "der"]
    assert [c[0] for c in top.customdata] == [-1, -1, -1] and [c[0] for c in bottom.customdata] == [0, 1]
    np.testing.assert_allclose([c[1] for c in top.customdata], row)
    outline = fig.layout.shapes[0]
    assert (outline.x0, outline.x1) == (top.base[1], top.base[1] + top.x[1])  # the key the bottom panel is about
    assert "cat" in fig.layout.annotations[1].text and "der" in fig.layout.annotations[0].text


def test_head_pattern_of_a_cross_trace_labels_columns_with_the_key_side():
    from attnlab.core.trace import LayerRecord, Trace, TraceMeta
    from attnlab.viz.patterns import head_pattern

    pattern = torch.softmax(torch.randn(1, 1, 2, 4), -1)  # (B, H, Q, K): the last key is padding
    meta = TraceMeta(model="m", family="t5", n_layers=1, n_heads=1, d_head=2, d_model=2, causal=False)
    trace = Trace([["<bos>", "a"]], [[]], {0: LayerRecord(pattern=pattern)}, meta, torch.ones(1, 2, dtype=torch.bool),
                  key_tokens=[["x", "y", "z", "<pad>"]], key_segments=[[]],
                  key_mask=torch.tensor([[True, True, True, False]]))
    heat = head_pattern(trace, 0, 0).data[0]
    assert list(heat.x) == ["0:x", "1:y", "2:z"] and list(heat.y) == ["0:<bos>", "1:a"]
    np.testing.assert_allclose(np.asarray(heat.z), pattern[0, 0, :, :3].numpy(), rtol=1e-6)
