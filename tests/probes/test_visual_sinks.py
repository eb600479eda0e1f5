"""VAR's visual sinks and image-centric heads on a hand-built LVLM-like Trace."""

import json

import numpy as np
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.visual_sinks import sink_score, visual_sinks

D = 512  # phi is at most sqrt(D); tau = 20 needs D >= 400
TOKENS = ["<s>", "USER", ":", "<im>", "<im>", "<im>", "<im>", "What", "is", "it"]
SEGMENTS = [Segment("special", 0, 1), Segment("text", 1, 3), Segment("image", 3, 7, grid=(2, 2)), Segment("text", 7, 10)]
N = len(TOKENS)
SINK_DIM = 7
VISUAL_SINK = 4


def hidden(seed):
    return np.random.default_rng(seed).normal(size=(1, N, D))


def lvlm_trace(build_trace, with_patterns=True):
    """4 layers; the hidden state leaving layers 1 and 2 has a massive value in SINK_DIM on <s> and one image token."""
    resid = [hidden(i) for i in range(4)]
    for i in (1, 2):
        resid[i][0, 0, SINK_DIM] = 1000.0
        resid[i][0, VISUAL_SINK, SINK_DIM] = 1000.0
    patterns = None
    if with_patterns:
        p = np.full((1, 3, N, N), 1.0 / N)  # head 2 (uniform): image mass 0.4, visual-sink share 0.1 -> selected
        p[0, 0, :, :] = 0.0
        p[0, 0, :, [3, 5, 6]] = 0.5 / 3  # head 0: 0.5 on non-sink image tokens -> selected
        p[0, 0, :, 8] = 0.5
        p[0, 1, :, :] = 0.0
        p[0, 1, :, VISUAL_SINK] = 0.5  # head 1: image mass only on the visual sink -> share 0
        p[0, 1, :, 9] = 0.5
        patterns = [p] * 4
    return build_trace(patterns=patterns, resid=resid, embeddings=hidden(9), tokens=[TOKENS], segments=[SEGMENTS],
                       causal=True, family="llava")


def test_sink_score_formula():
    x = np.random.default_rng(0).normal(size=(3, D))
    expected = np.abs(x[:, [1, 2]]).max(-1) / np.sqrt((x**2).mean(-1) + 1e-6)
    np.testing.assert_allclose(sink_score(x, (1, 2)), expected)


def test_sinks_use_the_hidden_state_entering_each_layer(build_trace):
    result = visual_sinks(lvlm_trace(build_trace), sink_dims=(SINK_DIM,))
    assert result.layers == (2, 3)  # layers 0 and 1 are skipped, as in the code
    # layer 2 reads resid[1], layer 3 reads resid[2]: both carry the injected values
    for li in range(2):
        assert np.flatnonzero(result.is_sink[li, 0]).tolist() == [0, VISUAL_SINK]
        assert np.flatnonzero(result.is_visual_sink[li, 0]).tolist() == [VISUAL_SINK]
    x = lvlm_trace(build_trace).resid_in(2).numpy()[0, VISUAL_SINK].astype(float)
    assert result.phi[0, 0, VISUAL_SINK] == pytest.approx(abs(x[SINK_DIM]) / np.sqrt((x**2).mean() + 1e-6), rel=1e-5)


def test_sink_dims_are_detected_from_massive_activations(build_trace):
    result = visual_sinks(lvlm_trace(build_trace))
    assert result.sink_dims == (SINK_DIM,) and result.dims_source == "massive"
    assert result.is_visual_sink[0, 0, VISUAL_SINK]


def test_image_centric_heads(build_trace):
    result = visual_sinks(lvlm_trace(build_trace), sink_dims=(SINK_DIM,))
    assert result.head_layers == (2,)  # the last layer is excluded (except_last_layer=1)
    sel = result.selected[0, 0]  # (H, Q)
    after_image = [7, 8, 9]
    assert np.flatnonzero(sel[0]).tolist() == after_image
    assert not sel[1].any()
    assert np.flatnonzero(sel[2]).tolist() == after_image
    np.testing.assert_allclose(result.image_mass[0, 0, 2, 7], 4 / N)
    np.testing.assert_allclose(result.nonsink_share[0, 0, 2, 7], 0.75)
    heads = result.heads_frame()
    assert heads["head"].tolist() == [0, 2] and heads["n_queries"].tolist() == [3, 3]


def test_rho_and_image_mass_thresholds(build_trace):
    trace = lvlm_trace(build_trace)
    assert not visual_sinks(trace, sink_dims=(SINK_DIM,), rho=0.8).selected[0, 0, 2].any()
    assert not visual_sinks(trace, sink_dims=(SINK_DIM,), min_image_mass=0.45).selected[0, 0, 2].any()
    assert visual_sinks(trace, sink_dims=(SINK_DIM,), queries="all").selected[0, 0, 0].sum() == N


def test_no_visual_sink_means_no_heads(build_trace):
    result = visual_sinks(lvlm_trace(build_trace), sink_dims=(SINK_DIM + 1,))
    assert not result.is_sink.any() and not result.selected.any()


def test_without_patterns_only_sinks(build_trace):
    trace = lvlm_trace(build_trace, with_patterns=False)
    result = visual_sinks(trace, sink_dims=(SINK_DIM,))
    assert result.head_layers == () and result.selected.shape[0] == 0
    with pytest.raises(ValueError, match=r"Capture\(pattern=True\)"):
        visual_sinks(trace, sink_dims=(SINK_DIM,), select_heads=True)


def test_missing_resid_and_tables(build_trace):
    with pytest.raises(ValueError, match=r"Capture\(resid=True\)"):
        visual_sinks(build_trace(patterns=[np.full((1, 1, 2, 2), 0.5)]))
    result = visual_sinks(lvlm_trace(build_trace), sink_dims=(SINK_DIM,))
    frame = result.to_frame()
    assert frame["visual"].tolist() == [False, True, False, True]
    json.dumps(result.to_dict())
