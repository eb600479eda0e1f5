"""The recorder's preview for dynamic key sets (ACT's sinks) computes only the heads the plan reweights."""

from __future__ import annotations

import torch

from attnlab.hooks.recorder import _head_subset, _reweighted_heads
from attnlab.kernels.api import attention
from attnlab.kernels.plan import LayerPlan, Reweight


def test_reweighted_heads_are_those_with_a_factor_other_than_one():
    assert _reweighted_heads(LayerPlan(reweight=Reweight("s", (1.0, 0.4, 1.0, 0.0))), 4) == [1, 3]
    assert _reweighted_heads(LayerPlan(reweight=Reweight("s", 0.4)), 4) is None  # every head: no subset
    assert _reweighted_heads(LayerPlan(head_scale=(1.0, 0.0)), 2) is None and _reweighted_heads(None, 2) is None


def test_a_head_subset_attends_as_those_heads_do_in_the_whole_call():
    """Grouped-query attention (each kept query head keeps its own key/value head), a per-head mask and a per-head
    bias: the subset's received attention equals the whole call's on those heads."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 7, 4, generator=gen)
    k, v = torch.randn(2, 2, 3, 7, 4, generator=gen)  # 3 key/value heads for 6 query heads
    mask = torch.rand(2, 6, 7, 7, generator=gen) < 0.8
    mask[..., 0] = True
    terms = {"bias": torch.randn(1, 6, 7, 7, generator=gen)}
    heads = [1, 4, 5]
    _, whole = attention(q, k, v, causal=True, attn_mask=mask, stats=("received",), impl="torch", **terms)
    sq, sk, sv, smask, sterms = _head_subset(heads, q, k, v, mask, terms)
    assert sk.shape[1] == sv.shape[1] == 3 and smask.shape[1] == sterms["bias"].shape[1] == 3
    _, part = attention(sq, sk, sv, causal=True, attn_mask=smask, stats=("received",), impl="torch", **sterms)
    torch.testing.assert_close(part.received, whole.received[:, heads])
