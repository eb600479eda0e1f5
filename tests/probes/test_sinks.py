"""Attention sinks: injected sinks, ACT's column mean by explicit loops, both input paths, categories."""

import json

import numpy as np
import pytest

from attnlab.core.trace import Segment
from attnlab.probes.sinks import sink_tokens


def sink_head(n: int, weight: float) -> np.ndarray:
    """Causal ``[n, n]``: every row puts ``weight`` on token 0 and spreads the rest over the others it sees."""
    a = np.zeros((n, n))
    a[0, 0] = 1.0
    for i in range(1, n):
        a[i, 0] = weight
        a[i, 1 : i + 1] = (1 - weight) / i
    return a


def uniform_causal(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def act_scores(a: np.ndarray) -> np.ndarray:
    """ACT's column mean with loops: sum over the queries i >= j, divided by their number."""
    n = a.shape[0]
    return np.array([sum(a[i, j] for i in range(j, n)) / (n - j) for j in range(n)])


N = 20


@pytest.fixture
def sink_trace(build_trace):
    pattern = np.stack([sink_head(N, 0.6), uniform_causal(N), np.eye(N)])[None]  # (1, 3, N, N)
    return build_trace(patterns=[pattern, pattern], causal=True, family="llama")


def test_scores_follow_acts_column_mean(sink_trace):
    result = sink_tokens(sink_trace)
    np.testing.assert_allclose(result.scores[0, 0, 0], act_scores(sink_head(N, 0.6)), atol=1e-6)
    np.testing.assert_allclose(result.scores[0, 0, 1], act_scores(uniform_causal(N)), atol=1e-6)
    np.testing.assert_allclose(result.scores[0, 0, 2], 1 / (N - np.arange(N)), atol=1e-6)


def test_injected_sink_is_found_with_acts_threshold(sink_trace):
    result = sink_tokens(sink_trace, rule="act")
    # head 0: only token 0 (score (1 + 0.6 * 19) / 20 = 0.62)
    assert np.flatnonzero(result.is_sink[0, 0, 0]).tolist() == [0]
    # head 1 (uniform): causal masking alone lifts the early columns, (H_20 - H_j) / (20 - j) > 0.1 for j < 4
    assert np.flatnonzero(result.is_sink[0, 0, 1]).tolist() == np.flatnonzero(act_scores(uniform_causal(N)) > 0.1).tolist()
    assert np.flatnonzero(result.is_sink[0, 0, 1]).tolist() == [0, 1, 2, 3]
    # head 2 (self-attention): token j scores 1/(N - j) > 0.1 for the last 9 positions
    assert np.flatnonzero(result.is_sink[0, 0, 2]).tolist() == list(range(N - 9, N))
    assert result.scores[0, 0, 0, 0] == pytest.approx((1 + 0.6 * 19) / 20, abs=1e-6)
    assert result.mass[0, 0, 0, 0] == pytest.approx((1 + 0.6 * 19) / 20, abs=1e-6)


def test_default_rule_asks_for_five_times_uniform_on_short_inputs(sink_trace):
    result = sink_tokens(sink_trace)  # N = 20 real tokens: cutoff max(0.1, 5 / 20) = 0.25
    assert result.rule == "act_relative" and result.threshold == 0.1 and result.alpha == 5.0
    assert np.flatnonzero(result.is_sink[0, 0, 0]).tolist() == [0]  # 0.62
    assert not result.is_sink[0, 0, 1].any()  # uniform: the largest score is H_20 / 20 = 0.18
    assert np.flatnonzero(result.is_sink[0, 0, 2]).tolist() == [17, 18, 19]  # self-attention 1 / (20 - j) > 0.25
    with pytest.raises(ValueError, match="act_relative"):
        sink_tokens(sink_trace, rule="ACT")


def test_default_rule_is_acts_rule_on_long_inputs(build_trace):
    n = 64  # 5 / 64 < 0.1: the released threshold decides
    pattern = np.stack([sink_head(n, 0.3), uniform_causal(n)])[None]  # (1, 2, n, n)
    trace = build_trace(patterns=[pattern], causal=True)
    np.testing.assert_array_equal(sink_tokens(trace).is_sink, sink_tokens(trace, rule="act").is_sink)
    assert sink_tokens(trace).is_sink[0, 0, 0, 0]


def test_min_queries_ignores_keys_seen_by_few_queries(sink_trace):
    result = sink_tokens(sink_trace, min_queries=11)
    assert not result.is_sink[0, 0, 2].any()


def test_hidden_drops_the_first_detected_sink_per_head(sink_trace):
    result = sink_tokens(sink_trace, hidden=True, rule="act")
    assert not result.is_sink[0, 0, 0].any()
    assert np.flatnonzero(result.is_sink[0, 0, 2]).tolist() == list(range(N - 8, N))


def test_relative_rule(sink_trace):
    result = sink_tokens(sink_trace, rule="relative", alpha=2.0)
    scores = act_scores(uniform_causal(N))
    assert np.flatnonzero(result.is_sink[0, 0, 1]).tolist() == np.flatnonzero(scores > 2.0 / N).tolist()


def test_received_statistic_gives_the_same_scores(build_trace, sink_trace):
    pattern = sink_trace.layers[0].pattern.numpy()
    received = pattern.sum(axis=-2)  # (B, H, K), the kernel's definition
    from_stats = sink_tokens(build_trace(received=[received], causal=True))
    assert from_stats.source == "received"
    np.testing.assert_allclose(from_stats.scores[0], sink_tokens(sink_trace).scores[0], atol=1e-6)
    np.testing.assert_array_equal(from_stats.is_sink[0], sink_tokens(sink_trace).is_sink[0])


def test_bidirectional_divides_by_all_queries(build_trace):
    a = np.full((4, 4), 0.05)
    a[:, 2] = 0.85
    result = sink_tokens(build_trace(patterns=[a[None, None]]), rule="act")
    np.testing.assert_allclose(result.scores[0, 0, 0], [0.05, 0.05, 0.85, 0.05], atol=1e-6)
    assert np.flatnonzero(result.is_sink[0, 0, 0]).tolist() == [2]


def test_padding_queries_are_ignored_in_the_pattern_path(build_trace):
    a = np.full((1, 1, 5, 5), 0.0)
    a[0, 0, :4, :4] = 0.25
    a[0, 0, 4, :4] = [1.0, 0, 0, 0]  # a pad row that would make token 0 a sink
    result = sink_tokens(build_trace(patterns=[a], token_mask=[[True] * 4 + [False]]))
    np.testing.assert_allclose(result.scores[0, 0, 0], [0.25, 0.25, 0.25, 0.25, 0.0], atol=1e-6)
    assert not result.is_sink[0, 0, 0, 4]


def test_token_categories(build_trace):
    tokens = [["<s>", "Ġthe", "Ġ,", "[IMG]", "[IMG]", "<|im_end|>", "\n", "cat"]]
    segs = [[Segment("text", 0, 3), Segment("image", 3, 5, grid=(1, 2)), Segment("text", 5, 8)]]
    pattern = np.full((1, 1, 8, 8), 1 / 8)
    result = sink_tokens(build_trace(patterns=[pattern], tokens=tokens, segments=segs))
    assert result.categories[0] == ["initial", "other", "punctuation", "image", "image", "special", "punctuation", "other"]


def test_tables_and_json(sink_trace):
    result = sink_tokens(sink_trace)
    frame = result.to_frame()
    assert {"layer", "head", "position", "token", "category", "score", "mass"} <= set(frame.columns)
    assert len(frame) == int(result.is_sink.sum())
    summary = result.token_summary()
    first = summary[summary.position == 0].iloc[0]
    # default rule at 20 tokens (cutoff 5/20): token 0 is a sink of the sink head only, in both layers
    assert first.category == "initial" and first.n_heads == 2 and first.n_layers == 2
    assert result.sink_mass.shape == (2, 1, 3)
    json.dumps(result.to_dict())


def test_missing_attention_names_both_capture_options(build_trace):
    with pytest.raises(ValueError, match=r"Capture\(pattern=True\) or Capture\(stats=True\)"):
        sink_tokens(build_trace(resid=[np.zeros((1, 3, 4))]))
