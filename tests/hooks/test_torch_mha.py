"""Plain torch backend: patched ``nn.MultiheadAttention`` layers must compute what torch computes.

Oracles: the unpatched modules themselves (``need_weights=True, average_attn_weights=False``), the
entropy formula on their weights, and a copy of the model whose out-projection ignores a head.
"""

import copy

import pytest
import torch
from torch import nn

from attnlab.core.capture import Capture
from attnlab.hooks import attach, backend_of
from attnlab.kernels.plan import LayerPlan, Plan

E, H, B, N = 16, 2, 3, 6


class TwoAttention(nn.Module):
    """Two residual self-attention layers: the first batch-first, the second sequence-first."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.MultiheadAttention(E, H, batch_first=True)
        self.second = nn.MultiheadAttention(E, H, batch_first=False)

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        x = x + self.first(x, x, x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False)[0]
        s = x.transpose(0, 1)  # (N, B, E)
        s = s + self.second(s, s, s, key_padding_mask=key_padding_mask, attn_mask=attn_mask)[0]
        return s.transpose(0, 1)  # (B, N, E)


def _model() -> TwoAttention:
    torch.manual_seed(0)
    return TwoAttention().eval()


def _inputs(kind: str) -> dict:
    x = torch.randn(B, N, E, generator=torch.Generator().manual_seed(1))
    if kind == "plain":
        return {"x": x}
    if kind == "padding":
        kpm = torch.zeros(B, N, dtype=torch.bool)
        kpm[1, -2:] = True  # True = ignore, in torch
        return {"x": x, "key_padding_mask": kpm}
    return {"x": x, "attn_mask": nn.Transformer.generate_square_subsequent_mask(N)}  # float 0 / -inf


def _torch_weights(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    """Per-head weights ``[B, H, N, N]`` of every attention layer, from the unpatched modules."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, a, kw: calls.append((mod, a, kw)), with_kwargs=True)
               for m in (model.first, model.second)]
    model(**inputs)
    for h in handles:
        h.remove()
    out = []
    for mod, args, kwargs in calls:
        w = mod(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})[1]
        out.append(w)
    return out


def test_plain_module_dispatches_to_torch_backend():
    assert backend_of(_model()) == "torch"


@pytest.mark.parametrize("kind", ["plain", "padding", "causal"])
def test_outputs_and_patterns_match_torch(kind):
    model, inputs = _model(), _inputs(kind)
    with torch.no_grad():
        base = model(**inputs)
        oracle = _torch_weights(model, inputs)
        with attach(model, Capture(pattern=True, stats=True)) as rec:
            out = model(**inputs)
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    trace = rec.trace()
    for layer, weights in enumerate(oracle):
        torch.testing.assert_close(trace.layer(layer).pattern, weights, atol=1e-5, rtol=0)
    assert trace.meta.family == "torch" and trace.meta.backend == "torch" and trace.meta.n_layers == 2
    assert trace.tokens[0] == [f"#{i}" for i in range(N)]
    if kind == "padding":
        assert trace.token_mask.equal(~inputs["key_padding_mask"])
        assert [s.kind for s in trace.segments[1]] == ["text", "pad"]
    else:
        assert trace.token_mask.all() and [s.kind for s in trace.segments[0]] == ["text"]


def test_stats_follow_torch_weights():
    model, inputs = _model(), _inputs("padding")
    with torch.no_grad():
        oracle = _torch_weights(model, inputs)
        with attach(model, Capture(stats=True)) as rec:
            model(**inputs)
    for layer, p in enumerate(oracle):
        stats = rec.trace().layer(layer).stats
        assert {"lse", "entropy", "max", "received", "mass.first", "mass.text"} <= stats.keys()
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        torch.testing.assert_close(stats["entropy"], entropy, atol=1e-5, rtol=0)
        torch.testing.assert_close(stats["mass.first"], p[..., 0], atol=1e-5, rtol=0)
        real_queries = ~inputs["key_padding_mask"]  # (B, N): padding rows add nothing to what keys receive
        torch.testing.assert_close(stats["received"], (p * real_queries[:, None, :, None]).sum(2), atol=1e-5, rtol=0)


def test_head_mask_plan_zeroes_that_heads_contribution():
    model, inputs = _model(), _inputs("causal")
    manual = copy.deepcopy(model)
    with torch.no_grad():
        manual.first.out_proj.weight[:, : E // H] = 0  # head 0's columns of the output projection
        want = manual(**inputs)
        base = model(**inputs)
        with attach(model, plan=Plan({0: LayerPlan(head_scale=(0.0, 1.0))})):
            got = model(**inputs)
    assert (got - base).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [{"add_bias_kv": True}, {"add_zero_attn": True}, {"kdim": 5, "vdim": 7}])
@pytest.mark.parametrize("average", [True, False])
def test_module_options_and_returned_weights(options, average):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **options).eval()
    q = torch.randn(N, B, E)
    k = torch.randn(N + 1, B, options.get("kdim", E))
    v = torch.randn(N + 1, B, options.get("vdim", E))
    kpm = torch.zeros(B, N + 1, dtype=torch.bool)
    kpm[0, -1] = True
    with torch.no_grad():
        want, want_w = mha(q, k, v, key_padding_mask=kpm, average_attn_weights=average)
        with attach(mha, Capture(stats=True)):
            got, got_w = mha(q, k, v, key_padding_mask=kpm, average_attn_weights=average)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=0)


def test_unbatched_and_is_causal_without_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H).eval()
    x = torch.randn(N, E)
    mask = nn.Transformer.generate_square_subsequent_mask(N).bool()  # True = not allowed
    with torch.no_grad():
        want = mha(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]
        with attach(mha, Capture(pattern=True)) as rec:
            got, weights = mha(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert rec.trace().layer(0).pattern.shape == (1, H, N, N)
    assert rec.trace().layer(0).pattern[0, :, 0, 1:].abs().max() == 0


def test_encoder_fast_path_is_routed_and_restored():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, 32, batch_first=True), 2,
                                enable_nested_tensor=False).eval()
    x = torch.randn(B, N, E)
    with torch.no_grad():
        base = enc(x)
        with attach(enc, Capture(stats=True)) as rec:
            out = enc(x)
            assert not torch.backends.mha.get_fastpath_enabled()
    assert torch.backends.mha.get_fastpath_enabled()
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    assert sorted(rec.trace().layers) == [0, 1]


def test_original_forward_restored_after_errors():
    model = _model()
    with pytest.raises(RuntimeError, match="boom"):
        with attach(model, Capture(stats=True)):
            assert "forward" in model.first.__dict__
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="additive attention biases"):
        with attach(model, Capture(stats=True)):
            model(torch.randn(B, N, E), attn_mask=torch.full((N, N), 0.5))
    assert "forward" not in model.first.__dict__ and "forward" not in model.second.__dict__
    assert not model._forward_pre_hooks


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="No nn.MultiheadAttention"):
        with attach(nn.Linear(2, 2), Capture(stats=True)):
            pass
    mha = nn.MultiheadAttention(E, H, dropout=0.1).train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        with attach(mha, Capture(stats=True)):
            mha(torch.randn(N, B, E), torch.randn(N, B, E), torch.randn(N, B, E))
