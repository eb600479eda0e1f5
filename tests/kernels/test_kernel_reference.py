"""The eager and blockwise-torch paths against a float64 textbook oracle, a hand-computed example and invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import (CASES, PLAN_KINDS, Case, assert_matches, check_hand_example, hand_example, make_inputs,
                          textbook_attention)

from attnlab.kernels.api import attention


@pytest.mark.parametrize("impl", ["eager", "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_textbook(case: Case, impl: str):
    q, k, v, kw = make_inputs(case)
    want_out, want_stats = textbook_attention(q, k, v, **kw)
    out, st = attention(q, k, v, impl=impl, block_q=3, **kw)  # block_q=3: several ragged row blocks
    assert out.dtype == q.dtype and out.shape == want_out.shape
    assert_matches(out, st.as_dict(), want_out, want_stats, case.dtype, f"{case.name}/{impl}")


@pytest.mark.parametrize("impl", ["eager", "torch"])
@pytest.mark.parametrize("plan", ["identity", "factor_one"])
def test_identity_plans_reproduce_baseline_exactly(impl: str, plan: str):
    q, k, v, kw = make_inputs(Case("x", plan=plan))
    base_out, base = attention(q, k, v, impl=impl, **{**kw, "plan": None})
    out, st = attention(q, k, v, impl=impl, **kw)
    assert torch.equal(out, base_out)
    for name, t in base.as_dict().items():
        assert torch.equal(st.as_dict()[name], t), name


@pytest.mark.parametrize("plan", [p for p in PLAN_KINDS if p])
def test_rows_sum_to_one_after_reweighting(plan: str):
    case = Case("x", plan=plan, causal=True, q=13, k=9, key_mask="empty_batch")
    q, k, v, kw = make_inputs(case)
    _, st = attention(q, k, v, impl="eager", return_pattern=True, **kw)
    sums = st.pattern.sum(-1)  # (B, H, Q)
    live = torch.isfinite(st.lse)
    torch.testing.assert_close(sums[live], torch.ones_like(sums[live]))
    assert torch.equal(sums[~live], torch.zeros_like(sums[~live]))  # fully masked rows stay empty
    assert (~live).any() and live.any()


@pytest.mark.parametrize("plan, changed", [("reweight_gate", "some"), ("reweight_queries", "some"),
                                           ("reweight", "all")])
def test_reweighting_touches_the_rows_it_should(plan: str, changed: str):
    q, k, v, kw = make_inputs(Case("x", plan=plan, key_mask=None, q=20, k=30, seed=3))
    _, base = attention(q, k, v, impl="eager", return_pattern=True, **{**kw, "plan": None})
    _, st = attention(q, k, v, impl="eager", return_pattern=True, **kw)
    row_changed = (st.pattern - base.pattern).abs().amax(-1) > 1e-6  # (B, H, Q)
    assert row_changed.all() if changed == "all" else (row_changed.any() and not row_changed.all())


@pytest.mark.parametrize("impl", ["eager", "torch"])
def test_reweighting_matches_hand_computation(impl: str):
    out, st = hand_example(impl)
    check_hand_example(out, st.as_dict())


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 2), hkv=st.integers(1, 2), group=st.integers(1, 2), n_q=st.integers(1, 17),
    n_k=st.integers(1, 17), d=st.integers(1, 9), causal=st.booleans(), block_q=st.integers(1, 8),
    key_mask=st.sampled_from([None, "random", "empty_batch"]), attn_mask=st.sampled_from([None, "random", "rows"]),
    plan=st.sampled_from(PLAN_KINDS), seed=st.integers(0, 2**31 - 1),
)
def test_blockwise_torch_matches_eager(b, hkv, group, n_q, n_k, d, causal, block_q, key_mask, attn_mask, plan, seed):
    case = Case("h", b=b, h=hkv * group, hkv=hkv, q=n_q, k=n_k, d=d, causal=causal, key_mask=key_mask,
                attn_mask=attn_mask, plan=plan, seed=seed)
    q, k, v, kw = make_inputs(case)
    want_out, want = attention(q, k, v, impl="eager", **kw)
    out, got = attention(q, k, v, impl="torch", block_q=block_q, **kw)
    assert_matches(out, got.as_dict(), want_out, want.as_dict(), "float32", "torch vs eager")


@settings(max_examples=25, deadline=None)
@given(n_q=st.integers(1, 9), n_k=st.integers(1, 9), causal=st.booleans(), plan=st.sampled_from(PLAN_KINDS),
       seed=st.integers(0, 2**31 - 1))
def test_eager_matches_textbook_on_random_shapes(n_q, n_k, causal, plan, seed):
    q, k, v, kw = make_inputs(Case("h", q=n_q, k=n_k, d=5, causal=causal, plan=plan, seed=seed))
    out, st_ = attention(q, k, v, impl="eager", **kw)
    assert_matches(out, st_.as_dict(), *textbook_attention(q, k, v, **kw), "float32", "eager vs textbook")


def test_requested_stats_only():
    q, k, v, kw = make_inputs(Case("x", plan="reweight"))
    _, st = attention(q, k, v, impl="torch", **{**kw, "stats": ("entropy", "mass")})
    assert st.lse is None and st.max is None and st.received is None
    assert st.entropy.shape == (2, 2, 7) and set(st.mass) == {"sink", "image", "image_core"}
