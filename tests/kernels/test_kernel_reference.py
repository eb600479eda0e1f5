"""The eager and blockwise-torch paths against a float64 textbook oracle, a hand-computed example and invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import (CASES, PLAN_KINDS, Case, assert_matches, check_hand_example, hand_example, make_inputs,
                          textbook_attention)

from attnlab.kernels import reference
from attnlab.kernels.api import attention


@pytest.mark.parametrize("impl", ["eager", "torch", "torch-1-head", "torch-key-tiles"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_textbook(case: Case, impl: str, monkeypatch):
    q, k, v, kw = make_inputs(case)
    want_out, want_stats = textbook_attention(q, k, v, **kw)
    # block_q=3: several ragged row blocks; torch-1-head: each block holds one head (how long inputs run);
    # torch-key-tiles: rows over more than 4 keys go in ragged tiles of 4, merged (how blocks over 8k keys run)
    heads = 1 if impl == "torch-1-head" else None
    if impl == "torch-key-tiles":
        monkeypatch.setattr(reference, "KEY_TILE", 4)
    out, st = attention(q, k, v, impl=impl.split("-")[0], block_q=3, block_heads=heads, **kw)
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
    block_heads=st.sampled_from([None, 1, 3]), key_tile=st.sampled_from([1, 3, 8192]),
    key_mask=st.sampled_from([None, "random", "empty_batch"]), attn_mask=st.sampled_from([None, "random", "rows"]),
    plan=st.sampled_from(PLAN_KINDS), seed=st.integers(0, 2**31 - 1),
)
def test_blockwise_torch_matches_eager(b, hkv, group, n_q, n_k, d, causal, block_q, block_heads, key_tile, key_mask,
                                       attn_mask, plan, seed):
    case = Case("h", b=b, h=hkv * group, hkv=hkv, q=n_q, k=n_k, d=d, causal=causal, key_mask=key_mask,
                attn_mask=attn_mask, plan=plan, seed=seed)
    q, k, v, kw = make_inputs(case)
    want_out, want = attention(q, k, v, impl="eager", **kw)
    with pytest.MonkeyPatch.context() as patch:  # rows wider than key_tile go in merged key tiles
        patch.setattr(reference, "KEY_TILE", key_tile)
        out, got = attention(q, k, v, impl="torch", block_q=block_q, block_heads=block_heads, **kw)
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


@settings(max_examples=200, deadline=None)
@given(n_q=st.integers(1, 40), n_k=st.integers(1, 40), causal=st.booleans(), window=st.sampled_from([None, 1, 3, 9]),
       r0=st.integers(0, 39), rows=st.integers(1, 16))
def test_visible_keys_is_the_span_of_the_positional_mask(n_q, n_k, causal, window, r0, rows):
    """The block's key span is exactly the columns some of its rows may see: nothing visible is cut, nothing
    invisible is computed."""
    from attnlab.kernels.reference import positional_mask, visible_keys

    window = window if causal else None
    r0 = min(r0, n_q - 1)
    r1 = min(n_q, r0 + rows)
    ok = positional_mask(r0, r1, 0, n_k, n_q, n_k, causal, window, torch.device("cpu"))  # (q, K)
    # brute force from the textbook rule: query i at position i + K - Q sees j <= pos, j > pos - window
    pos = torch.arange(r0, r1)[:, None] + n_k - n_q
    j = torch.arange(n_k)[None, :]
    want = (j <= pos if causal else torch.ones_like(j <= pos)) & ((j > pos - window) if window else True)
    assert torch.equal(ok, want)
    lo, hi = visible_keys(r0, r1, n_q, n_k, causal, window)
    seen = want.any(0).nonzero()
    if len(seen) == 0:
        assert hi <= lo
    else:
        assert (lo, hi) == (int(seen[0]), int(seen[-1]) + 1)


@pytest.mark.parametrize("causal, window, want_columns", [
    (False, None, 4 * 16 * 64),  # every block of 16 rows sees every key
    (True, None, 16 * (16 + 32 + 48 + 64)),  # causal: block b computes keys up to its last row
    (True, 8, 16 * (16 + 23 + 23 + 23)),  # window 8: the 16 block keys plus the 7 before the block
])
def test_torch_path_computes_only_visible_key_blocks(monkeypatch, causal, window, want_columns):
    from attnlab.kernels import reference

    computed = []
    original = reference.block_scores

    def spy(c, r0, r1, lo, hi):
        computed.append((r1 - r0) * (hi - lo))
        return original(c, r0, r1, lo, hi)

    monkeypatch.setattr(reference, "block_scores", spy)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    out, st_ = attention(q, k, v, causal=causal, window=window, stats=("entropy", "received"), impl="torch",
                         block_q=16)
    assert sum(computed) == want_columns
    want_out, want = textbook_attention(q, k, v, causal=causal, key_mask=None, attn_mask=None, scale=None, plan=None,
                                        key_sets={}, query_sets={}, stats=("entropy", "received"), window=window)
    assert_matches(out, st_.as_dict(), want_out, want, "float32", "spy")


@pytest.mark.parametrize("impl", ["eager", "torch"])
def test_keys_padded_in_every_batch_row_are_never_read(impl: str):
    """NaN keys and values where every batch row has padding: reading them would turn the outputs NaN."""
    case = Case("pad", key_mask="left_pad", plan="reweight_target", q=50, k=70, received_queries=True, seed=31)
    q, k, v, kw = make_inputs(case)
    want_out, want = textbook_attention(q, k, v, **kw)
    k, v = k.clone(), v.clone()
    k[:, :, :20], v[:, :, :20] = float("nan"), float("nan")  # batch row 0 pads 20 keys, row 1 pads 37
    out, got = attention(q, k, v, impl=impl, block_q=16, **kw)
    assert_matches(out, got.as_dict(), want_out, want, "float32", f"nan padding/{impl}")


@settings(max_examples=40, deadline=None)
@given(n_q=st.integers(1, 12), n_k=st.integers(1, 12), causal=st.booleans(), window=st.sampled_from([None, 1, 2, 5]),
       softcap=st.sampled_from([None, 0.5, 3.0]), bias=st.sampled_from([None, "alibi", "t5", "t5_inf"]),
       plan=st.sampled_from(PLAN_KINDS), sets=st.sampled_from(["random", "per_head"]), block_q=st.integers(1, 5),
       block_heads=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31 - 1))
def test_score_terms_match_textbook(n_q, n_k, causal, window, softcap, bias, plan, sets, block_q, block_heads, seed):
    """Windows, soft-capping, biases and per-head key sets on both paths, against the float64 textbook."""
    case = Case("h", h=4, hkv=2, q=n_q, k=n_k, d=6, causal=causal or window is not None, window=window,
                softcap=softcap, bias=bias, plan=plan, sets=sets, seed=seed)
    q, k, v, kw = make_inputs(case)
    want_out, want = textbook_attention(q, k, v, **kw)
    for impl in ("eager", "torch"):
        out, got = attention(q, k, v, impl=impl, block_q=block_q, block_heads=block_heads, **kw)
        assert_matches(out, got.as_dict(), want_out, want, "float32", f"{impl} vs textbook")


GRAD_CASES = [Case("grad_plain", causal=True, key_mask="left_pad", q=40, k=40),
              Case("grad_terms", h=4, hkv=2, causal=True, window=5, softcap=3.0, bias="t5", plan="reweight_target",
                   sets="per_head"),
              Case("grad_masked_rows", h=4, hkv=2, causal=True, window=5, bias="t5_inf", plan="combo")]


@pytest.mark.parametrize("impl", ["eager", "torch"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.name)
def test_gradients_match_textbook(case: Case, impl: str):
    """A pass that builds a graph (circuit gradients, a user's backward) differentiates like the textbook.

    Gradients of a random linear function of the output (and of the logsumexp, except where a -inf bias
    empties a row: the textbook's ``log 0`` sends NaN through the bias there) with respect to q, k, v and the bias, against
    autograd through the float64 textbook.
    """
    q, k, v, kw = make_inputs(case)
    leaves = [q, k, v] + ([kw["bias"]] if "bias" in kw else [])
    for t in leaves:
        t.requires_grad_(True)
    want_out, want = textbook_attention(q, k, v, **kw)
    out, st = attention(q, k, v, impl=impl, block_q=7, **kw)
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_lse = torch.randn(st.lse.shape, generator=gen, dtype=torch.float64)
    with_lse = case.bias != "t5_inf"

    def loss(o, lse):  # rows that see no key have lse -inf in both: left out
        kept = torch.where(torch.isfinite(lse), lse.double() * w_lse, 0.0).sum()
        return (o.double() * w_out).sum() + (kept if with_lse else 0.0)

    want_grads = torch.autograd.grad(loss(want_out, want["lse"]), leaves)
    got_grads = torch.autograd.grad(loss(out, st.lse), leaves)
    for name, g, w in zip("qkvb", got_grads, want_grads):
        w = torch.where(torch.isfinite(w), w, 0.0).double()  # a -inf bias entry: no gradient in either
        assert torch.allclose(g.double(), w, atol=2e-5, rtol=1e-4), (name, (g.double() - w).abs().max())


def test_softmax_row_stats_equal_the_textbook_and_zero_dead_rows():
    from attnlab.kernels.reference import softmax_row_stats

    gen = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64) * 4
    s[0, 1, 2] = torch.finfo(torch.float64).min  # a row that sees no key
    top = s.amax(-1)
    dead = top <= torch.finfo(torch.float64).min / 2
    p = torch.softmax(s, -1).masked_fill(dead[..., None], 0.0)
    lse, entropy = softmax_row_stats(top, p.amax(-1), dead, torch.linalg.vecdot(p, s - top[..., None]))
    want_lse = torch.logsumexp(s, -1)
    want_entropy = -(p * p.log()).nan_to_num().sum(-1)  # textbook -sum p log p
    live = ~dead
    torch.testing.assert_close(lse[live], want_lse[live], rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy[live], want_entropy[live], rtol=0, atol=1e-12)
    assert lse[0, 1, 2] == float("-inf") and entropy[0, 1, 2] == 0
    assert softmax_row_stats(top, p.amax(-1), dead, None)[1] is None


@pytest.mark.parametrize("n_rows", [3, 200])  # small maps: one matmul; large: a matrix-vector product per set
def test_pattern_masses_equal_masked_sums(n_rows):
    from attnlab.kernels.reference import MV_MIN_ELEMENTS, pattern_stats

    gen = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(2, 3, n_rows, 100, generator=gen), -1)
    sets = {"a": torch.rand(2, 100, generator=gen) > 0.5, "first": torch.zeros(2, 100, dtype=torch.bool),
            "per_head": torch.rand(2, 3, 100, generator=gen) > 0.7}
    sets["first"][:, 0] = True
    shared = {k: v for k, v in sets.items() if v.dim() == 2}
    for given in (shared, sets):  # shared sets alone take the matrix-vector route on the large map
        got = pattern_stats(p, ("mass",), given)
        for name, mask in given.items():
            m = mask[:, None, None, :] if mask.dim() == 2 else mask[:, :, None, :]
            want = (p.double() * m).sum(-1)  # hand masked sum, float64
            torch.testing.assert_close(got[f"mass.{name}"].double(), want, rtol=0, atol=1e-6)
    assert (n_rows * 100 >= MV_MIN_ELEMENTS) == (n_rows == 200)


@pytest.mark.parametrize("impl", ["eager", "torch"])
@pytest.mark.parametrize("pad", ["left_pad", "empty_batch"])
def test_padding_given_as_attn_mask_equals_the_key_mask(impl: str, pad: str):
    """HF models pass padding as a [B, 1, Q, K] mask, the same for every query; the kernels take it as a key mask
    (added to the scores, keys no row sees skipped): the same output and statistics as the key mask itself and the
    textbook, with and without causality."""
    for causal in (False, True):
        case = Case("pad", key_mask=pad, plan="reweight_target", causal=causal, q=30, k=30, seed=33)
        q, k, v, kw = make_inputs(case)
        want_out, want = textbook_attention(q, k, v, **kw)
        as_mask = {**kw, "key_mask": None,
                   "attn_mask": kw["key_mask"][:, None, None, :].expand(-1, 1, q.shape[2], -1)}  # (B, 1, Q, K)
        out, got = attention(q, k, v, impl=impl, block_q=7, **as_mask)
        assert_matches(out, got.as_dict(), want_out, want, "float32", f"attn_mask padding/{impl}/{causal}")


def test_key_tiled_rows_hold_scores_for_one_tile_only(monkeypatch):
    """Past KEY_TILE keys the scores are computed a tile at a time, so their buffer holds one tile; the weights'
    buffer holds every key the block sees (their column sums need the final normaliser)."""
    monkeypatch.setattr(reference, "KEY_TILE", 4)
    q, k, v = (torch.randn(1, 2, 10, 3, generator=torch.Generator().manual_seed(s)) for s in range(3))
    c = reference._Call(q, k, v, causal=False, window=None, key_mask=None, attn_mask=None, scale=None, softcap=None,
                        bias=None, layer_plan=None, key_sets={}, query_sets={}, stats=("lse",),
                        received_queries=None, want_pattern=False)
    reference.attention_rows(c, 0, 5)
    assert c._buffers[0].numel() == 1 * 2 * 5 * 4 and c._buffers[1].numel() == 1 * 2 * 5 * 10
