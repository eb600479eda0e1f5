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


@pytest.mark.skipif(not card("toy-llava"), reason="toy-llava checkpoint not present")
def test_vhd_on_toy_llava_finds_vision_aware_heads():
    from attnlab.interventions.vhr import text_only_inputs
    from attnlab.hooks import attach
    from attnlab.hooks.inputs import tokenizer_of
    from attnlab.probes.vhd import head_divergence
    from attnlab.zoo import load

    model, proc, spec = load("toy-llava")
    image = world_images(1, start=5700)[0]
    prompt = "Is there a red circle in the image?"
    with_image = capture_trace(model, proc, spec, Capture(head_out=True), [prompt], [image])
    with torch.no_grad(), attach(model, Capture(head_out=True), tokenizer=tokenizer_of(proc)) as rec:
        model(**text_only_inputs(proc, prompt))
    result = head_divergence(with_image, rec.trace())
    vhd = result.vhd[:, 0]  # (L, H)
    assert vhd.shape == (spec.n_layers, spec.n_heads) and (vhd >= 0).all()
    # The image changes what heads write: every layer has a head whose output moves, and heads differ.
    assert (vhd.max(axis=1) > 0).all() and vhd.std() > 0
