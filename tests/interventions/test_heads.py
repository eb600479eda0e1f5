"""Head specs and masking plans, checked against hand-written expectations and a real forward."""

import pytest
import torch

from attnlab.hooks import attach
from attnlab.interventions import mask_plan, parse_heads


def test_parse_forms():
    assert parse_heads("1.2", 3, 4) == [(1, 2)]
    assert parse_heads("0", 3, 2) == [(0, 0), (0, 1)]
    assert parse_heads("0-1.1", 3, 2) == [(0, 1), (1, 1)]
    assert parse_heads("*.0", 2, 2) == [(0, 0), (1, 0)]
    assert parse_heads("2.*, 2.1", 3, 2) == [(2, 0), (2, 1)]


@pytest.mark.parametrize("spec,msg", [("5.0", "layer 5, outside the model's layers 0..2"),
                                      ("1.9", "head 9, outside the model's heads 0..3"),
                                      ("a.b", "Bad head spec item 'a.b'"), ("", "Empty head spec")])
def test_parse_errors(spec, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_heads(spec, 3, 4)


def test_mask_plan_zeroes_head_output(tiny_dir):
    from attnlab.zoo import load

    model, tok, spec = load(str(tiny_dir("gpt2")))
    inputs = tok(["the cat sat on the mat ."], return_tensors="pt")
    attn = model.transformer.h[1].attn
    seen = {}
    hook = attn.c_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach().clone()))
    try:
        with torch.no_grad(), attach(model, plan=mask_plan("1.2", spec.n_layers, spec.n_heads)):
            model(**inputs)
    finally:
        hook.remove()
    z = seen["z"].view(1, -1, spec.n_heads, 32 // spec.n_heads)  # (B, N, H, d_head)
    assert z[:, :, 2].abs().max() == 0
    assert (z[:, :, [0, 1, 3]].abs().amax(dim=(0, 1, 3)) > 0).all()


def test_mask_plan_takes_the_model_a_trace_or_the_counts(tiny_dir):
    """``mask_plan("1.2", model)`` bounds the spec by the model's own layers and heads (2 layers, 4 heads)."""
    from attnlab.core.capture import Capture
    from attnlab.zoo import load

    model, tok, spec = load(str(tiny_dir("llama")))
    with torch.no_grad(), attach(model, Capture(stats=True), tokenizer=tok) as rec:
        model(**tok(["the cat"], return_tensors="pt"))
    expected = {1: (1.0, 1.0, 0.0, 1.0)}
    for target in (model, rec.trace(), spec):
        plan = mask_plan("1.2", target)
        assert {i: lp.head_scale for i, lp in plan.layers.items()} == expected
    assert mask_plan("1.2", 2, 4).layers[1].head_scale == expected[1]
    with pytest.raises(ValueError, match="head 4, outside the model's heads 0..3"):
        mask_plan("0.4", model)
    with pytest.raises(TypeError, match="drop n_heads"):
        mask_plan("0.1", model, 4)
    with pytest.raises(TypeError, match="Cannot tell layers and heads of a str"):
        mask_plan("0.1", "llama")
