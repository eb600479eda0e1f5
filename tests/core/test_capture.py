"""Capture options and the memory estimate, checked against hand-computed sizes."""

import pytest

from attnlab.core.capture import Capture, ModelShape

SHAPE = ModelShape(n_layers=4, n_heads=2, d_head=8, d_model=16)


def test_pattern_estimate_is_b_h_n_n_per_layer():
    cap = Capture(pattern=True)
    assert cap.estimate_bytes(SHAPE, batch=3, n_tokens=10) == 4 * (3 * 2 * 10 * 10) * 4


def test_estimate_counts_each_option():
    cap = Capture(qk=True, head_out=True, resid=True, layers=(0, -1))
    per_layer = 2 * 1 * 2 * 5 * 8 + 1 * 2 * 5 * 8 + 1 * 5 * 16
    assert cap.estimate_bytes(SHAPE, batch=1, n_tokens=5) == (2 * per_layer + 1 * 5 * 16) * 4


def test_stats_estimate_is_linear_in_tokens():
    cap = Capture(stats=True)
    small, big = cap.estimate_bytes(SHAPE, 1, 100), cap.estimate_bytes(SHAPE, 1, 200)
    assert big == 2 * small


def test_over_budget_fails_with_estimate_and_cheaper_option():
    cap = Capture(pattern=True, budget_bytes=1000)
    with pytest.raises(ValueError, match=r"needs about .* over the budget .*Capture\(pattern=False, stats=True\)"):
        cap.check_budget(SHAPE, batch=1, n_tokens=64)


def test_layers_resolve_and_reject_out_of_range():
    assert Capture(layers=(0, -1)).layer_indices(4) == (0, 3)
    with pytest.raises(ValueError, match="outside the model, which has layers 0..3"):
        Capture(layers=(7,)).layer_indices(4)


def test_parse_rejects_unknown_option():
    assert Capture.parse("pattern, qk").captured == ("pattern", "qk")
    with pytest.raises(ValueError, match="choose from pattern, stats, qk, head_out, resid"):
        Capture.parse("pattern,weights")
