"""Callbacks on an encoder-decoder Run (tiny T5): ``main.cross`` maps are labelled encoder keys x decoder queries.

The Run is captured here from a random tiny T5 whose decoder reads a shorter text than its encoder, so every
cross-attention map is ``[Q, K]`` with ``Q != K`` and the two token lists differ; item 1 is padded on both sides.
The oracle is the Trace read back with :meth:`attnlab.core.runs.Run.trace` (not the dashboard's cached reader).
"""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest
import torch

from attnlab.core.runs import Run

ENCODER = ["the cat sat on the mat .", "a dog"]
DECODER = ["a dog", "the"]
RUN = "0:t5"
HIDDEN = {"display": "none"}


def page(name: str):
    """A page module as Dash loaded it (``create_app`` executes the pages folder)."""
    return sys.modules[f"attnlab.dashboard.pages.{name}"]


@pytest.fixture(scope="module")
def t5_root(tmp_path_factory):
    """A folder holding one T5 Run with ``main``, ``main.encoder`` and ``main.cross`` (patterns, stats, q and k)."""
    from attnlab.core.capture import Capture
    from attnlab.core.runs import RunInfo, save_run
    from attnlab.hooks import attach
    from attnlab.hooks.inputs import prepare_inputs
    from attnlab.zoo import load
    from attnlab.zoo.tiny import save_tiny

    path = save_tiny("t5", tmp_path_factory.mktemp("ckpt") / "t5")
    model, proc, spec = load(str(path))
    inputs = prepare_inputs(proc, spec, ENCODER)
    dec = proc(DECODER, return_tensors="pt", padding=True)
    start = torch.full((len(DECODER), 1), model.config.decoder_start_token_id)
    inputs = dict(inputs, decoder_input_ids=torch.cat([start, dec.input_ids[:, :-1]], 1),
                  decoder_attention_mask=torch.cat([torch.ones_like(start), dec.attention_mask[:, :-1]], 1))
    root = tmp_path_factory.mktemp("runs")
    for name, capture in (("t5", Capture(pattern=True, stats=True, qk=True)), ("t5-qk", Capture(qk=True))):
        with torch.no_grad(), attach(model, capture, tokenizer=proc) as rec:
            model(**inputs)
        save_run(root / name, {"main": rec.trace()}, RunInfo(model={"name": str(path), "family": "t5"}))
    return root


@pytest.fixture(scope="module")
def cross_app(t5_root):
    from attnlab.dashboard.app import create_app

    app = create_app([t5_root])
    with app.server.app_context():
        yield app


@pytest.fixture(scope="module")
def trace(t5_root):
    """The stored main Trace with its nested ``encoder`` and ``cross`` Traces."""
    return Run.open(t5_root / "t5").trace("main")


def _labels(tokens: list[str], mask: torch.Tensor) -> list[str]:
    return [f"{int(n)}:{tokens[int(n)]}" for n in torch.nonzero(mask).flatten()]


def _real(mask: torch.Tensor) -> np.ndarray:
    return torch.nonzero(mask).flatten().numpy()


def test_the_run_is_cross_attention_with_other_keys(trace):
    cross = trace.cross
    assert cross.is_cross and cross.key_tokens == trace.encoder.tokens and cross.tokens == trace.tokens
    assert cross.layer(0).pattern.shape[-2] != cross.layer(0).pattern.shape[-1]


@pytest.mark.parametrize("item", [0, 1])
def test_cross_heatmap_labels_keys_with_encoder_tokens_and_queries_with_decoder_tokens(cross_app, trace, item):
    attention = page("attention")
    figure, note = attention.heatmap(RUN, "main.cross", item, 1, 2, "fixed", [])
    assert note is None
    heat, cross = figure.data[0], trace.cross
    assert list(heat.x) == _labels(cross.key_tokens[item], cross.key_mask[item])  # the encoder's tokens
    assert list(heat.y) == _labels(cross.tokens[item], cross.token_mask[item])  # the decoder's tokens
    assert list(heat.x) != list(heat.y)
    stored = cross.layer(1).pattern[item, 2].float().numpy()  # (Q, K)
    expected = stored[np.ix_(_real(cross.token_mask[item]), _real(cross.key_mask[item]))]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), expected, rtol=1e-6, atol=1e-7)
    # the first key column hidden is the encoder's first token
    hidden, _ = attention.heatmap(RUN, "main.cross", item, 1, 2, "fixed", [attention.SINK])
    assert list(hidden.data[0].x) == list(heat.x)[1:]


def test_self_attention_traces_of_the_same_run_stay_square(cross_app, trace):
    attention = page("attention")
    for name, sub in (("main.encoder", trace.encoder), ("main", trace)):
        heat = attention.heatmap(RUN, name, 0, 0, 1, "fixed", [])[0].data[0]
        assert list(heat.x) == list(heat.y) == _labels(sub.tokens[0], sub.token_mask[0])


def test_cross_recomputed_from_queries_and_keys_is_the_map_the_model_applied(cross_app, t5_root):
    """Without a stored pattern the map is rebuilt as softmax(score_scale * q·k) over every encoder key (no causal
    mask, keys on the columns). T5 does not scale its scores (score_scale 1, Raffel et al. 2020), and its
    cross-attention has no position bias, so the rebuilt map equals the pattern the same input's other Run stored;
    its self-attention adds a relative position bias, so rebuilding it is refused, naming the bias."""
    attention = page("attention")
    cross = Run.open(t5_root / "t5-qk").trace("main").cross
    assert cross.meta.score_scale == 1.0 and cross.meta.score_terms == ()
    figure, note = attention.heatmap("0:t5-qk", "main.cross", 0, 1, 3, "fixed", [])
    assert "recomputed" in note.children
    stored = Run.open(t5_root / "t5").trace("main").cross
    applied = stored.layer(1).pattern[0, 3][_real(stored.token_mask[0])][:, _real(stored.key_mask[0])]  # (q, k)
    np.testing.assert_allclose(np.asarray(figure.data[0].z, dtype=float), applied.numpy(), atol=1e-5)
    assert list(figure.data[0].x) == _labels(cross.key_tokens[0], cross.key_mask[0])
    encoder = Run.open(t5_root / "t5-qk").trace("main").encoder
    assert encoder.meta.score_terms == ("bias",)
    from attnlab.dashboard.data import DashboardData
    from attnlab.dashboard.summaries import attention_matrix

    with pytest.raises(ValueError, match="hold bias besides q·k"):
        data = DashboardData([t5_root])
        attention_matrix(data, data.run("0:t5-qk"), "main.encoder", 1, 3, 0)


def test_cross_text_view_shows_encoder_keys_and_decoder_queries(cross_app, trace):
    from attnlab.viz.text_view import cell_text

    attention = page("attention")
    cross = trace.cross
    queries = _real(cross.token_mask[0])
    focus = int(queries[-1])
    figure = attention.text_view(RUN, "main.cross", 0, 1, 0, focus)
    top, bottom = figure.data[:2]
    keys = _real(cross.key_mask[0])
    assert list(top.text) == [cell_text(cross.key_tokens[0][n]) for n in keys]
    assert list(bottom.text) == [cell_text(cross.tokens[0][n]) for n in queries]
    matrix = cross.layer(1).pattern[0, 0].float().numpy()[np.ix_(queries, keys)]  # (q, k)
    row = matrix[len(queries) - 1]
    np.testing.assert_allclose([c[1] for c in top.customdata], row, rtol=1e-5)
    np.testing.assert_allclose([c[1] for c in bottom.customdata], matrix[:, row.argmax()], rtol=1e-5)
    assert all(c[0] == -1 for c in top.customdata)  # a key is not a query one can focus
    assert [c[0] for c in bottom.customdata] == [int(n) for n in queries]
    # the focus dropdown offers the decoder's tokens (a focus selects a heatmap row)
    options, _ = attention.focus_options(RUN, "main.cross", 0)
    assert [o["value"] for o in options] == [int(n) for n in queries]
    assert [o["label"].split(": ", 1)[1] for o in options] == [cross.tokens[0][n] for n in queries]


def test_cross_matrix_download_and_minimap_use_queries_by_keys(cross_app, trace):
    attention = page("attention")
    drawn = {"run": RUN, "trace": "main.cross", "item": 0, "layer": 0, "head": 1}
    sent = attention.download_matrix(1, drawn)
    matrix = np.load(io.BytesIO(base64.b64decode(sent["content"])))
    assert matrix.shape == (int(trace.cross.token_mask[0].sum()), int(trace.cross.key_mask[0].sum()))
    assert attention.minimap(drawn)[1] == HIDDEN  # a short input has no overview


def test_flow_refuses_the_cross_trace_with_one_line_and_runs_on_the_encoder(cross_app):
    flow = page("flow")
    assert flow.availability(RUN, "main.cross") == (HIDDEN, HIDDEN)
    for method in ("rollout", "flow"):
        _, _, _, note = flow.show(RUN, "main.cross", 0, method, "mean", 0.0, [], 0)
        text = note.children
        assert "needs self-attention" in text and "cross-attention" in text and "main.encoder" in text
        assert "\n" not in text and "message-note" in note.className
    assert flow.availability(RUN, "main.encoder") == ({}, {})
    bar, _, _, note = flow.show(RUN, "main.encoder", 0, "rollout", "mean", 0.0, [], 0)
    assert note is None and len(bar.data[0].y) == len(ENCODER[0].split()) + 1  # <bos> and the words


def test_require_probe_names_the_self_attention_traces(cross_app):
    from attnlab.dashboard.analyses import NotAvailable, require_probe
    from attnlab.dashboard.app import current_data

    run = current_data().run(RUN)
    for probe in ("rollout", "flow", "induction", "previous-token"):
        with pytest.raises(NotAvailable, match=r"pick the trace main or main\.encoder instead"):
            require_probe(run, "main.cross", probe)
        require_probe(run, "main.encoder", probe)
    require_probe(run, "main.cross", "sinks")  # sinks read the key side


def test_cross_sinks_are_named_by_encoder_tokens(cross_app, trace):
    sinks = page("sinks")
    figure, rows, _, note = sinks.show_sinks(RUN, "main.cross", 0, "act")
    assert note is None
    encoder = trace.cross.key_tokens[0]
    hover = [text for row in figure.data[0].customdata for text in row]  # "sinks: 0:<bos>, ..." per head
    assert rows and any(text != "sinks: none" for text in hover)
    for text in hover:
        for sink in str(text).removeprefix("sinks: ").split(", "):
            if sink != "none":
                position, token = sink.split(":", 1)
                assert encoder[int(position)] == token
    assert all(encoder[int(r["position"])] == r["token"] for r in rows)


def test_cross_head_grid_masses_are_over_encoder_keys(cross_app, trace):
    heads = page("heads")
    options = [o["value"] for o in heads.stat_options(RUN, "main.cross", None)[0]]
    assert "first" in options
    figure, note = heads.show_grid(RUN, "main.cross", 1, "first")
    assert note is None
    cross = trace.cross
    rows = _real(cross.token_mask[1])
    first = int(_real(cross.key_mask[1])[0])
    oracle = np.stack([cross.layer(i).pattern[1, :, rows, first].float().mean(-1).numpy() for i in (0, 1)])
    np.testing.assert_allclose(np.asarray(figure.data[0].z, dtype=float), oracle, rtol=1e-5)


def test_qk_token_bars_of_a_cross_query_are_the_encoder_tokens(cross_app, trace):
    qk = page("qk")
    cross = trace.cross
    position = int(_real(cross.token_mask[0])[-1])
    click = {"points": [{"customdata": [cross.tokens[0][position], "query", position, 0, 0]}]}
    bar = qk.token_view(click, RUN, "main.cross", 0, 1)
    assert list(bar.data[0].x) == _labels(cross.key_tokens[0], cross.key_mask[0])
    key = int(_real(cross.key_mask[0])[0])
    click = {"points": [{"customdata": [cross.key_tokens[0][key], "key", key, 0, 0]}]}
    bar = qk.token_view(click, RUN, "main.cross", 0, 1)
    assert list(bar.data[0].x) == _labels(cross.tokens[0], cross.token_mask[0])
