"""The torch path's fused route (calls that ask for no statistic): torch's fused kernel with the plan applied around
it, against the float64 textbook, the eager path and hand-built cases that pick each of its branches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import CASES, PLAN_KINDS, Case, assert_matches, make_inputs, textbook_attention

from attnlab.kernels import api, fused
from attnlab.kernels.api import attention
from attnlab.kernels.plan import Gate, LayerPlan, Reweight


def _no_stats(kw: dict) -> dict:
    """The call's arguments with no statistic asked (the fused route's condition)."""
    return {**{n: x for n, x in kw.items() if n != "received_queries"}, "stats": ()}


@pytest.mark.parametrize("case", [c for c in CASES if c.softcap is None], ids=lambda c: c.name)
def test_fused_route_matches_textbook(case: Case, monkeypatch):
    """Every shared case (GQA, masks with dead rows, windows, biases with -inf entries, per-head sets, every plan,
    half precision) through the fused route, which must be the route taken: the blockwise path is made to fail."""
    q, k, v, kw = make_inputs(case)
    want_out, _ = textbook_attention(q, k, v, **kw)
    monkeypatch.setattr(api, "reference_attention", lambda *a, **k: pytest.fail("took the blockwise path"))
    out, st_ = attention(q, k, v, impl="torch", **_no_stats(kw))
    assert out.dtype == q.dtype and st_.as_dict() == {} and st_.pattern is None
    assert_matches(out, {}, want_out, {}, case.dtype, f"{case.name}/fused")


def test_statistics_soft_caps_and_blocks_take_the_blockwise_path(monkeypatch):
    """A statistic, a returned pattern, a soft cap or explicit blocks leave the fused route alone."""
    q, k, v, kw = make_inputs(Case("x", plan="reweight"))
    monkeypatch.setattr(api, "fused_attention", lambda *a, **k: pytest.fail("took the fused route"))
    attention(q, k, v, impl="torch", **{**_no_stats(kw), "stats": ("lse",)})
    attention(q, k, v, impl="torch", block_q=3, **_no_stats(kw))
    attention(q, k, v, impl="torch", softcap=5.0, **_no_stats(kw))
    attention(q, k, v, impl="eager", return_pattern=True, **_no_stats(kw))


@settings(max_examples=80, deadline=None)
@given(b=st.integers(1, 3), hkv=st.integers(1, 2), group=st.integers(1, 3), n_q=st.integers(1, 12),
       n_k=st.integers(1, 12), causal=st.booleans(), window=st.sampled_from([None, 1, 4]),
       key_mask=st.sampled_from([None, "random", "empty_batch"]), attn_mask=st.sampled_from([None, "random", "rows"]),
       bias=st.sampled_from([None, "alibi", "t5_inf"]), plan=st.sampled_from(PLAN_KINDS),
       sets=st.sampled_from(["random", "per_head"]), seed=st.integers(0, 2**31 - 1))
def test_fused_route_matches_eager(b, hkv, group, n_q, n_k, causal, window, key_mask, attn_mask, bias, plan, sets,
                                   seed):
    case = Case("h", b=b, h=hkv * group, hkv=hkv, q=n_q, k=n_k, d=5, causal=causal or window is not None,
                window=window, key_mask=key_mask, attn_mask=attn_mask, bias=bias, plan=plan, sets=sets, seed=seed)
    q, k, v, kw = make_inputs(case)
    want, _ = attention(q, k, v, impl="eager", **kw)
    out, _ = attention(q, k, v, impl="torch", **_no_stats(kw))
    assert_matches(out, {}, want, {}, "float32", "fused vs eager")


def _decoding_inputs(heads: int = 4, batch: int = 3, n_q: int = 9, n_k: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q, 8, generator=gen)
    k, v = torch.randn(2, batch, heads, n_k, 8, generator=gen)
    sink = torch.zeros(batch, n_k, dtype=torch.bool)
    sink[:, 0] = True
    image = torch.zeros(batch, n_k, dtype=torch.bool)
    image[:, 2:12] = True
    late = torch.zeros(batch, n_q, dtype=torch.bool)
    late[0, -3:], late[1, -1:] = True, True  # item 2 reweights no row; items 0 and 1 different rows
    return q, k, v, {"sink": sink, "image": image}, {"late": late}


@pytest.mark.parametrize("factors", [(0.3, 0.3, 0.3, 0.3), (1.0, 0.2, 1.0, 0.0), (1.0, 0.3, 0.5, 1.0)])
@pytest.mark.parametrize("queries", [None, "late"])
def test_rows_and_heads_left_alone_come_from_the_plain_kernel(factors, queries):
    """A reweighting restricted to some rows (VAR at prefill) or some heads (ACT's calibrated heads) computes those
    explicitly and every other row and head with the fused kernel: the textbook holds on both, the untouched heads
    are the plan-free call's bit for bit, and the untouched rows equal it (the kernel computes them apart)."""
    q, k, v, sets, qsets = _decoding_inputs()
    plan = LayerPlan(reweight=Reweight("sink", factors, target="image", queries=queries,
                                       gate=Gate("image", 0.05)))
    kw = dict(causal=True, key_mask=None, attn_mask=None, scale=None, plan=plan, key_sets=sets, query_sets=qsets)
    want, _ = textbook_attention(q, k, v, **kw)
    out, _ = attention(q, k, v, impl="torch", **{**kw, "stats": ()})
    assert_matches(out, {}, want, {}, "float32", "subset")
    plain, _ = attention(q, k, v, impl="torch", causal=True)
    kept_heads = [h for h, f in enumerate(factors) if f == 1.0]
    torch.testing.assert_close(out[:, kept_heads], plain[:, kept_heads], rtol=0, atol=0)
    if queries:
        torch.testing.assert_close(out[:, :, :-3], plain[:, :, :-3])  # no item reweights these rows
        torch.testing.assert_close(out[2], plain[2])  # item 2 reweights none: computed explicitly, unchanged
        assert not torch.allclose(out[0, 1, -3:], plain[0, 1, -3:])  # the plan does act on the rows it holds


def test_dead_rows_give_zero_on_every_branch():
    """A row with nothing to attend to gives 0 whether it is reweighted, left to the plain kernel or masked by -inf
    bias entries (torch's kernel alone gives NaN or the mean of the values)."""
    q, k, v, sets, qsets = _decoding_inputs(n_q=4, n_k=6)
    attn_mask = torch.ones(3, 1, 4, 6, dtype=torch.bool)
    attn_mask[0, 0, 1] = False
    bias = torch.zeros(1, 4, 4, 6)
    bias[0, 2, 3] = float("-inf")
    plan = LayerPlan(reweight=Reweight("sink", (0.5, 1.0, 0.5, 1.0), target="image"))
    for kw in (dict(attn_mask=attn_mask), dict(attn_mask=attn_mask, plan=plan, key_sets=sets), dict(bias=bias),
               dict(bias=bias, plan=plan, key_sets=sets)):
        out, _ = attention(q, k, v, impl="torch", **kw)
        assert not out.isnan().any()
        if "attn_mask" in kw:
            assert out[0, :, 1].abs().max() == 0
        else:
            assert out[:, 2, 3].abs().max() == 0


def test_fused_route_propagates_gradients():
    """Circuit code differentiates through attention: the fused route's gradients equal the eager path's."""
    q, k, v, kw = make_inputs(Case("g", h=4, hkv=2, plan="combo", causal=True, sets="per_head", seed=3))
    grads = []
    for impl, extra in (("eager", {}), ("torch", {"stats": ()})):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, _ = attention(*leaves, impl=impl, **{**kw, **extra})
        out.square().sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_q, n_k, suffix", [(12, 12, True), (12, 12, False), (5, 12, True)])
def test_rows_after_the_image_split_from_the_rest(n_q, n_k, suffix):
    """VAR at prefill reweights every head on the rows after the image: the other rows go to the fused kernel alone
    (a smaller causal square when they are a prefix of one, else with their mask rows), matching the textbook."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 3, n_q, 8, generator=gen)
    k, v = torch.randn(2, 2, 3, n_k, 8, generator=gen)
    late = torch.zeros(2, n_q, dtype=torch.bool)
    if suffix:
        late[0, -3:], late[1, -2:] = True, True
    else:
        late[:, 1], late[1, 3] = True, True
    sets = {"sink": torch.zeros(2, n_k, dtype=torch.bool), "image": torch.zeros(2, n_k, dtype=torch.bool)}
    sets["sink"][:, 0], sets["image"][:, 1:4] = True, True
    plan = LayerPlan(reweight=Reweight("sink", 0.4, target="image", queries="late"))
    kw = dict(causal=True, key_mask=None, attn_mask=None, scale=None, plan=plan, key_sets=sets,
              query_sets={"late": late})
    want, _ = textbook_attention(q, k, v, **kw)
    out, _ = attention(q, k, v, impl="torch", **{**kw, "stats": ()})
    assert_matches(out, {}, want, {}, "float32", "split rows")
    plain, _ = attention(q, k, v, impl="torch", causal=True)
    assert (out - plain).abs().amax() > 1e-3  # the plan acts on its rows
    # written token-major, the layout a model's attention hands back ([B, Q, H, dv]), which then needs no copy
    assert out.transpose(1, 2).is_contiguous()
