"""The compiled CPU kernel for reweighted rows (``kernels/cpu_rows.c``) against the float64 textbook and the torch
ops it replaces, and its fallbacks: no compiler, a failing compiler, the kill switch, calls it declines."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import assert_matches, textbook_attention

from attnlab.kernels import cpu_rows, fused
from attnlab.kernels.plan import Gate, LayerPlan, Reweight
from attnlab.kernels.reference import MASKED


def test_the_kernel_builds_on_this_machine():
    """CI and the development machines have a C compiler: here the kernel must build, or every other test in this
    file and the fused route's would pass on the torch ops alone."""
    assert cpu_rows.enabled(), "the CPU kernel did not build (see the RuntimeWarning it gave)"


def _inputs(b, h, r, n_k, d, dv, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, r, d, generator=gen)
    k = torch.randn(b, h, n_k, d, generator=gen)
    v = torch.randn(b, h, n_k, dv, generator=gen)
    return q, k, v, gen


def _sets(b, h, n_k, per_head, gen):
    """A sink set of about two keys, an image span and its part without the sinks; per item or per head."""
    shape = (b, h, n_k) if per_head else (b, n_k)
    sink = torch.rand(shape, generator=gen) < 2.0 / max(n_k, 1)
    image = torch.zeros(shape, dtype=torch.bool)
    image[..., n_k // 5: max(n_k // 5 + 1, 4 * n_k // 5)] = True
    return {"sink": sink, "image": image, "image_nonsink": image & ~sink}


def _check(q, k, v, *, mask, rw, sets, q_rows, scale=None, into=False):
    """The kernel's rows against the textbook (same plan, masks as it takes them) and against the torch ops; ``into``:
    written into a head slice of a wider token-major output, which keeps its other entries."""
    b, h, r, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    attn_mask = bias = None
    if mask is not None and mask.is_floating_point():
        bias = mask
    elif mask is not None:
        attn_mask = mask
    queries = {} if q_rows is None else {"rows": q_rows}
    plan_rw = rw if q_rows is None else Reweight(rw.source, rw.factor, rw.target, "rows", rw.gate)
    want, _ = textbook_attention(q, k, v, causal=False, key_mask=None, attn_mask=attn_mask, scale=scale,
                                 plan=LayerPlan(reweight=plan_rw), key_sets=sets, query_sets=queries, stats=(),
                                 bias=bias)
    kernel_mask = None if mask is None else (mask.clamp_min(MASKED) if mask.is_floating_point() else mask)
    wide = dest = None
    if into:  # [B, r, H + 2, dv] token-major, the rows going to heads 1 .. H
        wide = torch.full((b, r, h + 2, v.shape[-1]), float("nan"))
        dest = wide.transpose(1, 2)[:, 1:h + 1]
    got = cpu_rows.reweighted_rows(q, k, v, kernel_mask, scale, rw, sets, q_rows, out=dest)
    assert got is not None, "the kernel declined a call it should take"
    if into:
        assert got.data_ptr() == dest.data_ptr() and got.stride() == dest.stride()  # written in place, not copied
        assert wide[:, :, [0, h + 1]].isnan().all()  # the heads around it untouched
    assert_matches(got, {}, want, {}, "float32", "cpu kernel vs textbook")
    with pytest.MonkeyPatch.context() as mp:  # the torch ops the kernel replaces
        mp.setenv("ATTNLAB_CPU_KERNEL", "0")
        ops = fused._reweighted(q, k, v, kernel_mask, scale, rw, sets, q_rows)
        if into:  # the torch ops write into a destination too
            dest = torch.full_like(wide, float("nan")).transpose(1, 2)[:, 1:h + 1]
            assert fused._reweighted(q, k, v, kernel_mask, scale, rw, sets, q_rows, out=dest) is dest
            torch.testing.assert_close(dest, ops, equal_nan=True)
    dead = (want.abs().sum(-1, keepdim=True) == 0) & (got.abs().sum(-1, keepdim=True) == 0)
    torch.testing.assert_close(got, ops.masked_fill(dead, 0.0), atol=2e-5, rtol=2e-4)  # torch: dead rows are means
    return got


@settings(max_examples=120, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 4), r=st.integers(1, 6), n_k=st.integers(1, 40),
       d=st.sampled_from([5, 16, 32]), dv=st.sampled_from([3, 16, 20]),
       mask=st.sampled_from([None, "keys", "rows", "heads", "terms"]), per_head=st.booleans(),
       target=st.sampled_from([None, "image_nonsink"]), gate=st.sampled_from([None, "within", "part"]),
       rows=st.booleans(), factor=st.sampled_from([0.0, 0.4, "per_head"]),
       layout=st.sampled_from(["whole", "sliced", "tokens"]), into=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_kernel_matches_textbook_and_torch_ops(b, h, r, n_k, d, dv, mask, per_head, target, gate, rows, factor,
                                               layout, into, seed):
    """Random shapes (one row, through the transpose-and-add tree, and several rows, through each head's keys
    transposed once; keys below, at and past the 16-key blocks and tiles; head sizes that are and are not multiples of
    16), every mask form the fused route passes (bool per key, per row with dead rows, per head; float
    terms with masked pairs), per-item and per-head sets, every gate form, row sets and per-head factors; queries, keys
    and values whole, as head and batch slices of wider tensors (ACT's calibrated heads) or as ``[B, N, H, d]``
    projections seen as ``[B, H, N, d]`` (a Hugging Face layer's values at prefill), the last two read without a copy;
    the rows returned new or written into a view of a wider output (ACT's heads of torch's output)."""
    q, k, v, gen = _inputs(b, h, r, n_k, d, dv, seed)
    if layout == "sliced":  # the same values, as every other item and the last h of 2h heads of wider tensors
        q, k, v = (torch.randn(2 * b, 2 * h, *t.shape[2:], generator=gen).index_put_(
            (torch.arange(0, 2 * b, 2)[:, None], torch.arange(h, 2 * h)[None, :]), t)[::2, h:] for t in (q, k, v))
        assert k.storage_offset() > 0  # views into the wider tensors
    if layout == "tokens":  # the same values, stored token-major: rows of one head are h * d apart
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert h == 1 or n_k == 1 or not k.is_contiguous()
    if layout != "whole":
        assert all(cpu_rows._rows_contiguous(t) is t for t in (q, k, v))  # read in place
    sets = _sets(b, h, n_k, per_head, gen)
    masks = {
        None: None,
        "keys": torch.rand(b, 1, 1, n_k, generator=gen) < 0.8,
        "rows": torch.rand(b, 1, r, n_k, generator=gen) < 0.6,  # some rows see nothing
        "heads": torch.rand(1, h, r, n_k, generator=gen) < 0.7,
        "terms": torch.where(torch.rand(b, h, r, n_k, generator=gen) < 0.8,
                             torch.randn(b, h, r, n_k, generator=gen), float("-inf")),
    }
    gates = {None: None, "within": Gate("image", 0.1), "part": Gate("image", 0.05, "image_nonsink", 0.3)}
    factors = tuple(torch.rand(h, generator=gen).mul(1.5).tolist()) if factor == "per_head" else factor
    rw = Reweight("sink", factors, target=target, gate=gates[gate])
    q_rows = torch.rand(b, r, generator=gen) < 0.6 if rows else None
    _check(q, k, v, mask=masks[mask], rw=rw, sets=sets, q_rows=q_rows, into=into)


def test_a_decoding_batch_at_the_eval_size():
    """The shape the eval decodes (32 items x 8 heads, one row, d = 16, past two 16-key blocks) with padding and
    wide scores (scale 1 on unit queries: rows far from uniform, weights down to e^-60), VAR's plan and gate."""
    q, k, v, gen = _inputs(32, 8, 1, 70, 16, 16, seed=7)
    keys = torch.ones(32, 70, dtype=torch.bool)
    keys[:10, :6] = False  # left padding
    sets = _sets(32, 8, 70, False, gen)
    rw = Reweight("sink", 0.6, target="image_nonsink", gate=Gate("image", 0.02, "image_nonsink", 0.5))
    got = _check(q * 4, k, v, mask=keys[:, None, None, :], rw=rw, sets=sets, q_rows=None, scale=1.0)
    plain = torch.nn.functional.scaled_dot_product_attention(q * 4, k, v, attn_mask=keys[:, None, None, :], scale=1.0)
    assert (got - plain).abs().amax() > 1e-3  # the plan acted


def test_a_prefill_batch_at_the_eval_size():
    """VAR at prefill on the eval's shape: the 9 rows after the image of 32 items x 8 heads, d = 16, causal and left
    padded, with scores so wide that many keys fall past the kernel's floor for expf (87 below the row's largest: its
    weight is 0, where the textbook's is under 1e-38)."""
    q, k, v, gen = _inputs(32, 8, 9, 70, 16, 16, seed=11)
    keys = torch.ones(32, 70, dtype=torch.bool)
    keys[:10, :6] = False  # left padding
    causal = torch.ones(9, 70, dtype=torch.bool).tril(70 - 9)  # the prompt's last 9 rows
    mask = keys[:, None, None, :] & causal[None, None]  # (B, 1, 9, K)
    sets = _sets(32, 8, 70, False, gen)
    rw = Reweight("sink", 0.6, target="image_nonsink", gate=Gate("image", 0.02, "image_nonsink", 0.5))
    scores = (q * 8) @ k.transpose(-1, -2)
    spread = scores.amax(-1) - scores.masked_fill(~mask, float("inf")).amin(-1)
    assert (spread > 87).float().mean() > 0.5  # most rows reach past the floor
    got = _check(q * 8, k, v, mask=mask, rw=rw, sets=sets, q_rows=None, scale=1.0)
    plain = torch.nn.functional.scaled_dot_product_attention(q * 8, k, v, attn_mask=mask, scale=1.0)
    assert (got - plain).abs().amax() > 1e-3  # the plan acted


def test_a_hand_example():
    """One query over four keys with p = (0.1, 0.2, 0.3, 0.4), S = {0}, T = {0, 1, 2}, a = 0.5: m_S = 0.1,
    m_T\\S = 0.5, so the weights become (0.05, 0.22, 0.33, 0.4) (v = identity reads them out)."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q, k, v = torch.ones(1, 1, 1, 1), p.log().reshape(1, 1, 4, 1), torch.eye(4).reshape(1, 1, 4, 4)
    sets = {"S": torch.tensor([[True, False, False, False]]), "T": torch.tensor([[True, True, True, False]])}
    got = cpu_rows.reweighted_rows(q, k, v, None, 1.0, Reweight("S", 0.5, target="T"), sets, None)
    torch.testing.assert_close(got[0, 0, 0], torch.tensor([0.05, 0.22, 0.33, 0.4]))


def test_calls_it_declines_return_none():
    """Gradients, other dtypes, more work than one thread wins on, and the kill switch leave the call to torch's
    ops."""
    q, k, v, gen = _inputs(2, 2, 1, 8, 16, 16, seed=1)
    sets = _sets(2, 2, 8, False, gen)
    rw = Reweight("sink", 0.5)
    assert cpu_rows.reweighted_rows(q, k, v, None, 0.25, rw, sets, None) is not None
    assert cpu_rows.reweighted_rows(q.requires_grad_(), k, v, None, 0.25, rw, sets, None) is None
    assert cpu_rows.reweighted_rows(q.detach().double(), k.double(), v.double(), None, 0.25, rw, sets, None) is None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_rows, "MAX_WORK", 2 * 2 * 1 * 8 * 32 - 1)  # one multiply-add less than this call's
        assert cpu_rows.reweighted_rows(q.detach(), k, v, None, 0.25, rw, sets, None) is None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CPU_KERNEL", "0")
        assert not cpu_rows.enabled()
        assert cpu_rows.reweighted_rows(q.detach(), k, v, None, 0.25, rw, sets, None) is None


@pytest.mark.parametrize("compiler, said", [("attnlab-no-such-cc", "no C compiler"), ("false", "did not compile")])
def test_without_a_working_compiler_the_torch_ops_answer(compiler, said, monkeypatch):
    """No compiler, or one that fails: one warning that names the cause, and the fused route's answer unchanged."""
    q, k, v, gen = _inputs(2, 3, 1, 20, 16, 16, seed=2)
    sets = _sets(2, 3, 20, False, gen)
    rw = Reweight("sink", 0.3, target="image_nonsink")
    compiled = fused._reweighted(q, k, v, None, 0.25, rw, sets, None)
    monkeypatch.setenv("CC", compiler)
    cpu_rows._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cpu_rows.enabled()
            fallback = fused._reweighted(q, k, v, None, 0.25, rw, sets, None)
        assert [str(w.message) for w in caught if said in str(w.message)], [str(w.message) for w in caught]
    finally:
        cpu_rows._library.cache_clear()  # the next caller builds with the real compiler again
    torch.testing.assert_close(fallback, compiled, atol=2e-5, rtol=2e-4)
