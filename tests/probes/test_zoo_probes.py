"""Probes on the zoo's trained models: register artifacts on toy-vit(-reg) and VHD on toy-llava."""

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks.inputs import capture_trace
from attnlab.zoo.registry import card


def world_images(n, start):
    from attnlab.zoo.world import generate_world

    return [s.image for s in generate_world(n, seed=0, start=start).scenes]


@pytest.mark.skipif(not (card("toy-vit") and card("toy-vit-reg")), reason="toy-vit checkpoints not present")
def test_register_probe_on_toy_vits_reports_no_artifacts():
    """At this scale neither ViT grows high-norm outliers (Darcet et al. see them only in large ViTs)."""
    from attnlab.probes.registers import high_norm_tokens
    from attnlab.zoo import load

    images = world_images(8, start=9000)
    for name in ("toy-vit", "toy-vit-reg"):
        model, proc, spec = load(name)
        trace = capture_trace(model, proc, spec, Capture(resid=True), [], images)
        result = high_norm_tokens(trace)
        last = result.norms[-1][result.patch_mask]
        assert last.max() / np.median(last) < 5, name  # no token an order of magnitude above the bulk
        assert result.is_artifact[-1].mean() < 0.05, name
        if name == "toy-vit-reg":
            assert result.register_mask.sum() == 4 * len(images)


def test_register_probe_finds_planted_high_norm_tokens():
    """The positive control beside 'no artifacts': three patch tokens whose residual is scaled x25 at the output of
    toy-vit's second block (Darcet et al.'s artifacts appear mid-network) are flagged from that layer on,
    by the same detector at its defaults; at the last layer, where the clean model has none, they are exactly what
    is flagged. (Earlier layers of the clean model hold a small second norm mode at about 1.5x the median, which
    the detector also reports.)"""
    from attnlab.hooks.hf_stacks import main_stack
    from attnlab.probes.registers import high_norm_tokens
    from attnlab.zoo import load

    model, proc, spec = load("toy-vit")
    images = world_images(4, start=9000)
    planted_layer = 1
    blocks = model.get_submodule(main_stack(model).prefix)
    clean = capture_trace(model, proc, spec, Capture(resid=True), [], images)
    patches = np.flatnonzero(clean.key_set("image")[0].numpy())
    planted = patches[[3, 20, 41]]

    def plant(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (B, N, d)
        hidden = hidden.clone()
        hidden[:, planted] *= 25.0
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = blocks[planted_layer].register_forward_hook(plant)
    try:
        trace = capture_trace(model, proc, spec, Capture(resid=True), [], images)
    finally:
        handle.remove()
    result, before = high_norm_tokens(trace), high_norm_tokens(clean)
    expected = np.zeros((len(images), trace.n_tokens), dtype=bool)
    expected[:, planted] = True
    for li, layer in enumerate(result.layers):
        if layer >= planted_layer:  # flagged from the planting layer on, in every image
            assert result.is_artifact[li][expected].all(), layer
    # the last layer, where the clean model has no artifacts (the test above): exactly the planted tokens
    assert not before.is_artifact[-1].any()
    assert (result.is_artifact[-1] == expected).all()


def o_proj_inputs(model, inputs) -> list[torch.Tensor]:
    """Per language-model layer, the input of its attention output projection at the last token ``[H * d_head]``,
    read with plain forward pre-hooks on a model attnlab does not touch (Hugging Face's own attention)."""
    mods = [m for n, m in model.named_modules() if n.startswith("model.language_model.") and n.endswith("o_proj")]
    seen = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0, -1].detach())) for m in mods]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.skipif(not card("toy-llava"), reason="toy-llava checkpoint not present")
def test_vhd_on_toy_llava_finds_vision_aware_heads():
    from attnlab.hooks import attach
    from attnlab.hooks.inputs import on_model_device, prepare_inputs, tokenizer_of
    from attnlab.interventions.vhr import text_only_inputs
    from attnlab.probes.vhd import head_divergence
    from attnlab.zoo import load

    model, proc, spec = load("toy-llava")
    image = world_images(1, start=5700)[0]
    prompt = "Is there a red circle in the image?"
    with_image = capture_trace(model, proc, spec, Capture(head_out=True), [prompt], [image])
    with torch.no_grad(), attach(model, Capture(head_out=True), tokenizer=tokenizer_of(proc)) as rec:
        model(**text_only_inputs(proc, spec, [prompt]))
    result = head_divergence(with_image, rec.trace())
    vhd = result.vhd[:, 0]  # (L, H)
    # Oracle: He et al.'s Eq. 4 on the head outputs Hugging Face's own attention computes (o_proj inputs).
    img = o_proj_inputs(model, on_model_device(prepare_inputs(proc, spec, [prompt], [image]), model))
    txt = o_proj_inputs(model, text_only_inputs(proc, spec, [prompt]))
    ref = np.stack([(a - b).view(spec.n_heads, -1).norm(dim=-1).numpy() for a, b in zip(img, txt)])  # (L, H)
    assert vhd.shape == ref.shape == (spec.n_layers, spec.n_heads)
    np.testing.assert_allclose(vhd, ref, rtol=1e-4, atol=1e-4)
    # Vision-aware heads stand out in every layer: measured top / median VHD = 9.2 / 5.0, 12.3 / 3.4, 3.3 / 0.18
    # (layers 2, 1, 0) on this image and prompt; head 0.0 barely moves (7.5e-5).
    assert (vhd.max(axis=1) > 1.5 * np.median(vhd, axis=1)).all(), vhd
