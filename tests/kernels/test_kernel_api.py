"""``attention()``'s input checks: bad input fails early with a message that names the cause and the fix."""

from __future__ import annotations

import pytest
import torch

from attnlab.kernels.api import (GEMM_ROWS, REGROUP_MIN_KEYS, attention, default_block_q, default_blocks,
                                 resolve_impl, working_bytes)
from attnlab.kernels.plan import Gate, LayerPlan, Plan, Reweight


def _qkv(b=1, h=2, n_q=5, n_k=6, d=4, hkv=None):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, n_q, d, generator=gen), torch.randn(b, hkv or h, n_k, d, generator=gen),
            torch.randn(b, hkv or h, n_k, d, generator=gen))


SINK = {"sink": torch.tensor([[True, False, False, False, False, False]])}

BAD_CALLS = [
    ("q 3-d", lambda q, k, v: attention(q[0], k, v), ValueError, r"must be \[B, H, N, d\]"),
    ("k/v keys", lambda q, k, v: attention(q, k, v[:, :, :3]), ValueError, "k and v must share"),
    ("head dim", lambda q, k, v: attention(q, k[..., :3], v), ValueError, "must share batch and head dim"),
    ("gqa", lambda q, k, v: attention(q[:, :1].expand(1, 3, 5, 4), k, v), ValueError, "multiple of key/value heads"),
    ("int q", lambda q, k, v: attention(q.long(), k, v), ValueError, "floating point"),
    ("empty", lambda q, k, v: attention(q[:, :, :0], k, v), ValueError, "at least one query"),
    ("key_mask shape", lambda q, k, v: attention(q, k, v, key_mask=torch.ones(1, 5, dtype=torch.bool)),
     ValueError, r"key_mask must be \[1, 6\]"),
    ("float attn_mask", lambda q, k, v: attention(q, k, v, attn_mask=torch.zeros(1, 1, 5, 6)),
     ValueError, "pass `mask == 0`"),
    ("attn_mask heads", lambda q, k, v: attention(q, k, v, attn_mask=torch.ones(1, 3, 5, 6, dtype=torch.bool)),
     ValueError, r"attn_mask must be \[1\|1, 1\|2, 5, 6\]"),
    ("key set shape", lambda q, k, v: attention(q, k, v, key_sets={"s": torch.ones(2, 6, dtype=torch.bool)}),
     ValueError, "key set 's' must be"),
    ("query set shape", lambda q, k, v: attention(q, k, v, query_sets={"r": torch.ones(1, 6, dtype=torch.bool)}),
     ValueError, "query set 'r' must be"),
    ("stat", lambda q, k, v: attention(q, k, v, stats=("entropy", "kurtosis")), ValueError, "Unknown attention stat"),
    ("impl", lambda q, k, v: attention(q, k, v, impl="cuda"), ValueError, "Unknown attention impl"),
    ("pattern", lambda q, k, v: attention(q, k, v, impl="torch", return_pattern=True), ValueError, "needs impl='eager'"),
    ("block_q", lambda q, k, v: attention(q, k, v, block_q=0), ValueError, "block_q must be a positive int"),
    ("block_heads", lambda q, k, v: attention(q, k, v, block_q=2, block_heads=True), ValueError,
     "block_heads must be a positive int"),
    ("model plan", lambda q, k, v: attention(q, k, v, plan=Plan({0: LayerPlan(head_scale=(0.0, 1.0))})),
     TypeError, r"plan.for_layer\(layer_index\)"),
    ("head_scale", lambda q, k, v: attention(q, k, v, plan=LayerPlan(head_scale=(1.0,))), ValueError,
     "head_scale has 1 values for 2 query heads"),
    ("factor length", lambda q, k, v: attention(q, k, v, plan=LayerPlan(reweight=Reweight("sink", (0.5,))),
                                                key_sets=SINK), ValueError, "1 values for 2 heads"),
    ("negative factor", lambda q, k, v: attention(q, k, v, plan=LayerPlan(reweight=Reweight("sink", -1.0)),
                                                  key_sets=SINK), ValueError, "must be >= 0"),
    ("missing set", lambda q, k, v: attention(q, k, v, plan=LayerPlan(reweight=Reweight("sink", 0.5, gate=Gate(
        "image"))), key_sets=SINK), ValueError, r"key sets \['image'\] that were not passed"),
    ("window type", lambda q, k, v: attention(q, k, v, causal=True, window=2.5), ValueError,
     "window must be a positive int"),
    ("window zero", lambda q, k, v: attention(q, k, v, causal=True, window=0), ValueError,
     "window must be a positive int"),
    ("window without causal", lambda q, k, v: attention(q, k, v, window=3), ValueError, "window needs causal=True"),
    ("softcap type", lambda q, k, v: attention(q, k, v, softcap="50"), TypeError, "softcap must be a float"),
    ("softcap sign", lambda q, k, v: attention(q, k, v, softcap=-1.0), ValueError, "positive and finite"),
    ("softcap inf", lambda q, k, v: attention(q, k, v, softcap=float("inf")), ValueError, "positive and finite"),
    ("bias list", lambda q, k, v: attention(q, k, v, bias=[[0.0]]), TypeError, "bias must be a float tensor"),
    ("bias bool", lambda q, k, v: attention(q, k, v, bias=torch.ones(1, 2, 5, 6, dtype=torch.bool)), ValueError,
     "For a boolean mask of allowed pairs pass attn_mask"),
    ("bias shape", lambda q, k, v: attention(q, k, v, bias=torch.zeros(2, 5, 6)), ValueError,
     r"bias must be \[1\|1, 1\|2, 5, 6\]; got \(2, 5, 6\). Expand"),
    ("bias heads", lambda q, k, v: attention(q, k, v, bias=torch.zeros(1, 3, 5, 6)), ValueError,
     r"bias must be \[1\|1, 1\|2, 5, 6\]"),
    ("missing query set", lambda q, k, v: attention(q, k, v, plan=LayerPlan(reweight=Reweight(
        "sink", 0.5, queries="late")), key_sets=SINK), ValueError, "query set 'late', not passed"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_with_a_helpful_message(call, error, match):
    with pytest.raises(error, match=match):
        call(*_qkv())


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    assert resolve_impl("auto", torch.device("cuda")) == "triton"


def test_broadcast_masks_and_integer_masks_are_accepted():
    q, k, v = _qkv(b=2)
    mask = torch.ones(1, 1, 5, 6, dtype=torch.long)  # integer 0/1, batch and heads broadcast
    mask[..., 0] = 0
    out, st = attention(q, k, v, attn_mask=mask, stats=("received",), impl="torch")
    assert out.shape == (2, 2, 5, 4) and torch.equal(st.received[..., 0], torch.zeros(2, 2))


def test_per_head_key_sets_match_each_head_alone():
    """A [B, H, K] source set reweights each head as a [B, K] set would for that head alone."""
    from attnlab.kernels.plan import LayerPlan, Reweight

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    per_head = torch.rand(2, 3, 6, generator=g) > 0.6
    plan = LayerPlan(reweight=Reweight("s", 0.3))
    for impl in ("eager", "torch"):
        out, st = attention(q, k, v, causal=True, plan=plan, key_sets={"s": per_head}, stats=("entropy", "mass"),
                            impl=impl)
        for h in range(3):
            ref, rst = attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], causal=True,
                                 plan=LayerPlan(reweight=Reweight("s", 0.3)), key_sets={"s": per_head[:, h]},
                                 stats=("entropy", "mass"), impl="eager")
            assert torch.allclose(out[:, h:h + 1], ref, atol=1e-6)
            assert torch.allclose(st.entropy[:, h:h + 1], rst.entropy, atol=1e-6)
            assert torch.allclose(st.mass["s"][:, h:h + 1], rst.mass["s"], atol=1e-6)


@pytest.mark.parametrize("heads, n, d_v", [(12, 512, 64), (12, 2048, 64), (12, 8192, 64), (12, 32768, 64),
                                          (12, 512, 32), (32, 4096, 128), (1, 8192, 64), (4, 4096, 64),
                                          (4, 2048, 64)])
def test_default_blocks_regroup_long_inputs_within_the_same_memory(heads, n, d_v):
    """Long inputs trade heads for rows (GEMMs of >= GEMM_ROWS rows) without a larger block than every head of
    default_block_q's rows; short inputs keep every head; working_bytes counts the blocks actually used."""
    rows_all = default_block_q(1, heads, n, n, d_v)
    rows, group = default_blocks(1, heads, n, n, d_v)
    assert group * rows <= heads * rows_all  # never more score elements per block than the memory bound allows
    if rows_all >= GEMM_ROWS or n < REGROUP_MIN_KEYS or heads == 1:
        assert (rows, group) == (rows_all, heads)
    else:
        assert rows >= GEMM_ROWS and group < heads
    tile = min(n, 8192)  # scores a key tile at a time past 8k keys (kernels.reference.KEY_TILE)
    assert working_bytes(1, heads, n, n, d_v) == 4 * (heads * n * d_v + group * min(n, rows) * (n + tile))
