"""Attention rollout against hand-computed values and invariances."""

import json

import numpy as np
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.residual_attention import discard_lowest, residual_augment
from attnlab.probes.rollout import attention_rollout, joint_attention


def _heads(*mats):
    """``[1, H, N, N]`` from per-head matrices."""
    return np.stack([np.asarray(m, dtype=float) for m in mats])[None]


SWAP = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
UNIFORM = [[1 / 3] * 3] * 3


def test_two_layer_rollout_matches_hand_computation(build_trace):
    # A0 = 0.5*SWAP + 0.5*I = [[.5,.5,0],[.5,.5,0],[0,0,1]]; A1 = 0.5*U + 0.5*I has 2/3 on the diagonal, 1/6 off it.
    # Row 0 of A1 @ A0 = 2/3*[.5,.5,0] + 1/6*[.5,.5,0] + 1/6*[0,0,1] = [5/12, 5/12, 1/6].
    trace = build_trace(patterns=[_heads(SWAP, SWAP), _heads(UNIFORM, UNIFORM)])
    result = attention_rollout(trace)
    assert result.positions == (0,)
    np.testing.assert_allclose(result.layer_relevance[0, 0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(result.relevance[0], [5 / 12, 5 / 12, 1 / 6], atol=1e-12)


def test_mean_fusion_averages_heads_before_the_residual(build_trace):
    # mean of SWAP and I is [[.5,.5,0],[.5,.5,0],[0,0,1]]; +I and halved: [[.75,.25,0],[.25,.75,0],[0,0,1]].
    trace = build_trace(patterns=[_heads(SWAP, np.eye(3))])
    np.testing.assert_allclose(attention_rollout(trace).relevance[0], [0.75, 0.25, 0.0], atol=1e-12)


def test_max_and_min_fusion(build_trace):
    eye, swap = np.eye(2), [[0, 1], [1, 0]]
    trace = build_trace(patterns=[_heads(eye, swap)])
    # max -> all ones; 0.5*ones + 0.5*I = [[1, .5], [.5, 1]]; row-normalised [2/3, 1/3].
    np.testing.assert_allclose(attention_rollout(trace, head_fusion="max").relevance[0], [2 / 3, 1 / 3], atol=1e-12)
    # min -> zeros; 0.5*I row-normalised = I.
    np.testing.assert_allclose(attention_rollout(trace, head_fusion="min").relevance[0], [1.0, 0.0], atol=1e-12)


def test_discard_protects_only_the_first_entry_and_skips_it():
    fused = np.array([[0.05, 0.95], [0.5, 0.5]])
    # the single lowest entry is (0, 0): protected, and nothing else is dropped in its place
    np.testing.assert_array_equal(discard_lowest(fused, 0.25), fused)
    fused = np.array([[0.9, 0.1], [0.3, 0.7]])
    np.testing.assert_array_equal(discard_lowest(fused, 0.25), [[0.9, 0.0], [0.3, 0.7]])
    np.testing.assert_array_equal(discard_lowest(fused, 0.5), [[0.9, 0.0], [0.0, 0.7]])


def test_row_normalisation_versus_vit_explain_broadcasting():
    fused = np.array([[0.9, 0.0], [0.3, 0.7]])
    # a = (fused + I) / 2 = [[.95, 0], [.15, .85]], row sums [.95, 1.0]
    np.testing.assert_allclose(residual_augment(fused, "row"), [[1.0, 0.0], [0.15, 0.85]], atol=1e-12)
    # vit-explain divides entry (i, j) by the sum of row j
    np.testing.assert_allclose(residual_augment(fused, "vit-explain"), [[1.0, 0.0], [0.15 / 0.95, 0.85]], atol=1e-12)


def test_discard_ratio_through_the_probe(build_trace):
    trace = build_trace(patterns=[_heads([[0.9, 0.1], [0.3, 0.7]])])
    rel = attention_rollout(trace, discard_ratio=0.25, position=-1).relevance[0]
    np.testing.assert_allclose(rel, [0.15, 0.85], atol=1e-12)
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(trace, discard_ratio=1.0)


def test_joint_attention_is_the_ordered_product(patterns_for):
    rng = np.random.default_rng(3)
    mats = rng.random((4, 5, 5))
    joint = joint_attention(mats)
    np.testing.assert_allclose(joint[-1], mats[3] @ mats[2] @ mats[1] @ mats[0], atol=1e-12)


def test_rows_stay_stochastic_and_default_positions(build_trace, patterns_for):
    pats = patterns_for(3, 2, 4, 6, causal=True, seed=1)
    trace = build_trace(patterns=pats, causal=True)
    result = attention_rollout(trace)
    assert result.positions == (5, 5)
    np.testing.assert_allclose(result.relevance.sum(-1), 1.0, atol=1e-12)
    assert attention_rollout(build_trace(patterns=pats, causal=False)).positions == (0, 0)


def test_causal_rollout_favours_early_tokens_and_receptive_field_fixes_uniform(build_trace, row_softmax):
    n = 6
    uniform = row_softmax(np.zeros((1, 2, n, n)), causal=True)
    trace = build_trace(patterns=[uniform] * 3, causal=True)
    raw = attention_rollout(trace).relevance[0]
    assert raw[0] > raw[1] > raw[-2]
    fixed = attention_rollout(trace, receptive_field=True)
    np.testing.assert_allclose(fixed.relevance[0], np.full(n, 1 / n), atol=1e-12)
    np.testing.assert_allclose(fixed.layer_relevance[:, 0], 1 / n, atol=1e-12)


def test_padding_matches_the_unpadded_item(build_trace, patterns_for, row_softmax):
    n = 5
    pats = patterns_for(2, 1, 2, n, causal=True, seed=4)
    alone = attention_rollout(build_trace(patterns=pats, causal=True)).relevance[0]
    # the same item left-padded by two positions in a batch of one
    padded = []
    for p in pats:
        big = np.zeros((1, 2, n + 2, n + 2))
        big[:, :, 2:, 2:] = p
        padded.append(big)
    mask = np.array([[False, False] + [True] * n])
    result = attention_rollout(build_trace(patterns=padded, causal=True, token_mask=mask))
    assert result.positions == (n + 1,)
    np.testing.assert_allclose(result.relevance[0, 2:], alone, atol=1e-12)
    assert (result.relevance[0, :2] == 0).all()


def test_image_relevance_on_the_patch_grid(build_trace, patterns_for):
    segs = [Segment("special", 0, 1, label="[CLS]"), Segment("image", 1, 7, grid=(2, 3))]
    trace = build_trace(patterns=patterns_for(2, 1, 2, 7, seed=5), segments=[segs])
    result = attention_rollout(trace)
    (grid,) = result.grids(0)
    assert grid.values.shape == (2, 3)
    np.testing.assert_allclose(grid.values, result.relevance[0, 1:7].reshape(2, 3))


def test_missing_pattern_names_the_capture_option(build_trace):
    trace = build_trace(resid=[np.zeros((1, 3, 4))])
    with pytest.raises(ValueError, match=r"Capture\(pattern=True\)"):
        attention_rollout(trace)


def test_missing_layer_names_the_capture_option(build_trace, patterns_for):
    trace = build_trace(patterns=patterns_for(1, 1, 1, 3), n_layers=2)
    with pytest.raises(ValueError, match=r"layer 1.*Capture\(pattern=True"):
        attention_rollout(trace)


def test_result_tables(build_trace, patterns_for):
    result = attention_rollout(build_trace(patterns=patterns_for(2, 1, 2, 4)))
    frame = result.to_frame()
    assert list(frame.columns) == ["batch", "output_position", "position", "token", "relevance"]
    assert len(frame) == 4
    data = json.loads(json.dumps(result.to_dict()))
    assert data["probe"] == "rollout" and len(data["relevance"][0]) == 4
