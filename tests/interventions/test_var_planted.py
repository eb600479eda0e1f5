"""VAR on toy-llava with a planted visual sink: the positive control beside 'VAR changes nothing on toy-llava'.

toy-llava has no massive activations, so VAR finds no sink dimensions and runs as the identity. Here two image
tokens get massive values in two hidden dimensions at the output of the first decoder layer (the signature Kang et
al. 2025 and Sun et al. 2024 describe). The same code must then find those dimensions and tokens, and VAR must
move attention as the paper says: in the gated heads, the planted sinks keep ``keep_fraction`` of their mass and
the rest goes to the other image tokens, row sums unchanged; ungated rows and other layers stay as they were.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.hooks.inputs import tokenizer_of
from attnlab.interventions.var import SINK_SET, SinkSets, scaled_tau, var_layers, var_plan
from attnlab.probes.visual_sinks import visual_sinks

@pytest.fixture(scope="module")
def planted(planted_llava):
    """toy-llava with a planted visual sink (tests/conftest.py); the planted dimensions are ``planting.dims``."""
    return planted_llava


def _pass(model, proc, inputs, capture, plan=None, key_set_fn=None, extra=None):
    with torch.no_grad(), attach(model, capture, plan, tokenizer=tokenizer_of(proc), key_sets=extra or {},
                                 key_set_fn=key_set_fn) as rec:
        model(**inputs)
    return rec.trace()


def test_visual_sink_detector_finds_the_planted_dimensions_and_tokens(planted):
    from attnlab.probes.massive import massive_activations

    model, proc, spec, inputs, positions, planting = planted
    DIMS = planting.dims
    clean_dims = massive_activations(_pass(model, proc, inputs, Capture(resid=True))).dims
    with planting():
        trace = _pass(model, proc, inputs, Capture(resid=True, pattern=True))
    # dimensions from massive activations (Sun et al.'s rule); tau = 20 rescaled to the width as VAR does: with
    # two massive dimensions phi tops out at sqrt(d / 2) = 8 in toy-llava's 128 dimensions
    found = visual_sinks(trace, tau=scaled_tau(model.config.get_text_config().hidden_size))
    assert set(DIMS) <= set(found.sink_dims) and not set(DIMS) & set(clean_dims)
    for li, layer in enumerate(found.layers):
        if layer >= 1:  # the hidden state entering layer 1 onwards carries the planted values
            flagged = set(np.flatnonzero(found.is_visual_sink[li, 0]).tolist())
            assert set(positions.tolist()) <= flagged, (layer, flagged, found.phi[li, 0, positions])


def test_var_moves_sink_attention_to_the_other_image_tokens(planted):
    model, proc, spec, inputs, positions, planting = planted
    DIMS = planting.dims
    ids = inputs["input_ids"]
    is_image = ids == spec.image_token_id
    after = {"after_image": torch.arange(ids.shape[1])[None, :] > int(is_image[0].nonzero().max())}
    tau = scaled_tau(model.config.get_text_config().hidden_size)
    plan = var_plan(spec.n_layers)
    with planting():
        base = _pass(model, proc, inputs, Capture(pattern=True), extra=after)
        steered = _pass(model, proc, inputs, Capture(pattern=True), plan, SinkSets(DIMS, tau), after)
    layer = var_layers(spec.n_layers)[0]
    p0, p1 = base.layer(layer).pattern[0].double(), steered.layer(layer).pattern[0].double()  # (H, Q, K)
    image = is_image[0]
    sink = torch.zeros_like(image)
    sink[positions] = True
    nonsink = image & ~sink
    rows = after["after_image"][0]
    torch.testing.assert_close(p1.sum(-1), p0.sum(-1))  # rows still sum to what they did
    s0, s1 = p0[..., sink].sum(-1), p1[..., sink].sum(-1)  # (H, Q)
    moved = (s1 < s0 - 1e-9)
    assert moved.any(), "VAR moved no attention off the planted sinks"
    assert not moved[:, ~rows].any()  # only rows after the image
    keep = next(iter(plan.layers.values())).reweight.factor
    torch.testing.assert_close(s1[moved], keep * s0[moved])  # the sinks keep keep_fraction of their mass
    gained = p1[..., nonsink].sum(-1) - p0[..., nonsink].sum(-1)  # (H, Q)
    torch.testing.assert_close(gained[moved], (1 - keep) * s0[moved])  # ...and the rest goes to the image
    for other in base.layers:
        if other < min(plan.layers):  # layers before VAR's first see the same residual stream
            torch.testing.assert_close(steered.layer(other).pattern, base.layer(other).pattern)
