"""VHD, T-VHD and VHR head selection by hand, and the checks on mismatched Traces."""

import json

import numpy as np
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.vhd import head_divergence, vhr_heads, vhr_layers

IMG_TOKENS = ["<s>", "<im>", "<im>", "<im>", "<im>", "Describe", "it"]
TXT_TOKENS = ["<s>", "Describe", "it"]
IMG_SEGS = [Segment("special", 0, 1), Segment("image", 1, 5, grid=(2, 2)), Segment("text", 5, 7)]
TXT_SEGS = [Segment("special", 0, 1), Segment("text", 1, 3)]


def pair(build_trace, last_img, last_txt, *, n_heads=3, pad_text=0):
    """Traces whose last-token head outputs are ``last_img`` / ``last_txt`` ``[L, H, d]``; other positions random."""
    rng = np.random.default_rng(0)
    n_layers, _, d = np.shape(last_img)
    img = [rng.normal(size=(1, n_heads, 7, d)) for _ in range(n_layers)]
    txt = [rng.normal(size=(1, n_heads, 3 + pad_text, d)) for _ in range(n_layers)]
    for i in range(n_layers):
        img[i][0, :, -1] = last_img[i]
        txt[i][0, :, 2] = last_txt[i]  # position 2 = "it"; any right padding follows it
    mask = [[True] * 3 + [False] * pad_text]
    with_image = build_trace(head_out=img, tokens=[IMG_TOKENS], segments=[IMG_SEGS], causal=True, family="llava")
    text_only = build_trace(head_out=txt, tokens=[TXT_TOKENS + ["<pad>"] * pad_text], segments=[TXT_SEGS],
                            token_mask=mask, causal=True, family="llava")
    return with_image, text_only


LAST_IMG = [[[3, 4], [1, 1], [0, 0]], [[0, 2], [0, 0], [5, 0]]]
LAST_TXT = [[[0, 0], [0, 0], [0, 0]], [[0, 0], [1, 1], [2, 4]]]


def test_vhd_by_hand(build_trace):
    result = head_divergence(*pair(build_trace, LAST_IMG, LAST_TXT))
    # layer 0: |(3,4)| = 5, |(1,1)| = sqrt 2, 0; layer 1: |(0,2)| = 2, |(-1,-1)| = sqrt 2, |(3,-4)| = 5
    np.testing.assert_allclose(result.vhd[:, 0], [[5, np.sqrt(2), 0], [2, np.sqrt(2), 5]], atol=1e-6)
    np.testing.assert_allclose(result.text_norm_sq[:, 0], [[0, 0, 0], [0, 2, 20]], atol=1e-6)
    assert result.positions == (6,) and result.text_positions == (2,) and result.tokens == ["it"]
    assert result.ranking(0) == {0: (0, 1, 2), 1: (2, 0, 1)}


def test_t_vhd_sums_the_top_k_of_each_layer(build_trace):
    trace, other = pair(build_trace, LAST_IMG, LAST_TXT)
    assert head_divergence(trace, other, top_k=1).t_vhd[0] == pytest.approx(5 + 5, abs=1e-6)
    assert head_divergence(trace, other, top_k=2).t_vhd[0] == pytest.approx(5 + np.sqrt(2) + 5 + 2, abs=1e-6)
    assert head_divergence(trace, other).top_k == 1  # n_heads // 2


def test_alignment_from_the_end_with_padding(build_trace):
    result = head_divergence(*pair(build_trace, LAST_IMG, LAST_TXT, pad_text=2))
    assert result.text_positions == (2,)
    np.testing.assert_allclose(result.vhd[0, 0, 0], 5, atol=1e-6)


def test_vhr_selection_by_hand(build_trace):
    # one layer, 4 heads: VHD (1, 2, 3, 10); head 3 is an outlier only if its text-only norm is one too
    img = [[[1, 0], [2, 0], [3, 0], [10, 0]]]
    txt_outlier = [[[0, 0], [0, 0], [0, 0], [0, 0]]]
    trace, other = pair(build_trace, img, txt_outlier, n_heads=4)
    other.layers[0].head_out[0, :, 2] = 0
    # TA = |text|^2: make head 3's text-only output large -> (1, 1, 1, 10) passes mean + std only for head 3
    other.layers[0].head_out[0, :, 2, 1] = other.layers[0].head_out.new_tensor([1, 1, 1, np.sqrt(10)])
    trace.layers[0].head_out[0, :, -1, 1] = other.layers[0].head_out[0, :, 2, 1]  # keep VHD = (1, 2, 3, 10)
    result = head_divergence(trace, other)
    np.testing.assert_allclose(result.vhd[0, 0], [1, 2, 3, 10], atol=1e-5)
    sel = vhr_heads(result)
    # head 3 zeroed (10 > 4 + 4.08 and TA 10 > 3.25 + 4.5); VHD (1, 2, 3, 0) has median 1.5 -> heads 1 and 2
    assert sel.outliers[0] == {0: (3,)} and sel.heads[0] == {0: (1, 2)}
    # with equal text-only norms nothing is an outlier: median 2.5 -> heads 2 and 3
    other.layers[0].head_out[0, :, 2, 1] = 1.0
    trace.layers[0].head_out[0, :, -1, 1] = 1.0
    sel = vhr_heads(head_divergence(trace, other))
    assert sel.outliers[0] == {0: ()} and sel.heads[0] == {0: (2, 3)}
    assert set(sel.to_frame().columns) == {"batch", "layer", "head", "selected", "outlier"}


def test_vhr_layers():
    assert vhr_layers(32) == (1, *range(18, 32))
    assert vhr_layers(32, "instructblip") == tuple(range(14, 32))
    with pytest.raises(ValueError, match="llava"):
        vhr_layers(32, "other")


def test_missing_head_out_names_the_capture_option(build_trace):
    trace, other = pair(build_trace, LAST_IMG, LAST_TXT)
    bare = build_trace(resid=[np.zeros((1, 3, 4))], tokens=[TXT_TOKENS], segments=[TXT_SEGS])
    with pytest.raises(ValueError, match=r"Capture\(head_out=True\)"):
        head_divergence(trace, bare)


def test_mismatched_traces_are_refused(build_trace):
    trace, other = pair(build_trace, LAST_IMG, LAST_TXT)
    with pytest.raises(ValueError, match="WITH the image first"):
        head_divergence(other, trace)
    with pytest.raises(ValueError, match="image tokens removed"):
        head_divergence(trace, trace)
    with pytest.raises(ValueError, match="negative position"):
        head_divergence(trace, other, position=2)
    four_heads, _ = pair(build_trace, [[[0, 0]] * 4] * 2, [[[0, 0]] * 4] * 2, n_heads=4)
    with pytest.raises(ValueError, match="models with"):
        head_divergence(four_heads, other)
    other.tokens[0][2] = "that"
    with pytest.raises(ValueError, match="'it'.*'that'"):
        head_divergence(trace, other)


def test_tables_and_json(build_trace):
    result = head_divergence(*pair(build_trace, LAST_IMG, LAST_TXT))
    frame = result.to_frame()
    assert len(frame) == 6 and frame.loc[(frame["layer"] == 1) & (frame["head"] == 2), "rank"].item() == 0
    json.dumps(result.to_dict())
    json.dumps(vhr_heads(result).to_dict())
