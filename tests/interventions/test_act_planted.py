"""ACT on toy-gpt with a planted hidden sink: the positive control beside 'ACT's search kept no head'.

In one head of toy-gpt, the keys of two middle tokens are set to the mean of the later queries (scaled up), so
every later query attends to them: hidden sinks, away from the first token (Yu et al. 2024, §3). The same code must
find them (:class:`~attnlab.interventions.act.ACTSinks` at its defaults) and ACT's plan must calibrate as the paper
says: in the calibrated head the sinks keep ``beta`` of their attention and the rest goes to the other tokens in
proportion, row sums unchanged; the other heads of the layer stay as they were.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.interventions.act import ACTSinks, act_plan
from attnlab.zoo import load

LAYER, HEAD = 1, 2
TEXT = ("the cat sat on the mat and the dog sat on the rug while the bird sang in the tree and the fish swam "
        "in the pond")


@pytest.fixture(scope="module")
def planted():
    model, tok, spec = load("toy-gpt")
    inputs = tok(TEXT, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    positions = [n // 3, n // 2]
    d_head = model.config.n_embd // model.config.n_head
    c_attn = model.transformer.h[LAYER].attn.c_attn
    q_cols = slice(HEAD * d_head, (HEAD + 1) * d_head)
    k_cols = slice(model.config.n_embd + HEAD * d_head, model.config.n_embd + (HEAD + 1) * d_head)

    def plant(_module, _args, out):  # out: (B, N, 3 * d_model) = q | k | v
        out = out.clone()
        for p in positions:
            later = out[:, p + 1:, q_cols].mean(1)  # (B, d_head) the mean query that can see p
            out[:, p, k_cols] = 8.0 * later / later.norm(dim=-1, keepdim=True) * d_head ** 0.5
        return out

    @contextlib.contextmanager
    def planting():
        handle = c_attn.register_forward_hook(plant)
        try:
            yield
        finally:
            handle.remove()

    return model, tok, spec, inputs, positions, planting


def _pattern(model, tok, inputs, plan=None, key_set_fn=None):
    with torch.no_grad(), attach(model, Capture(pattern=True, layers=[LAYER]), plan, tokenizer=tok,
                                 key_set_fn=key_set_fn) as rec:
        model(**inputs)
    return rec.trace().layer(LAYER).pattern[0].double()  # (H, Q, K)


def test_act_finds_and_calibrates_the_planted_hidden_sinks(planted):
    model, tok, spec, inputs, positions, planting = planted
    clean = _pattern(model, tok, inputs)
    with planting():
        base = _pattern(model, tok, inputs)
        sinks = ACTSinks()
        steered = _pattern(model, tok, inputs, act_plan([(LAYER, HEAD)], spec.n_heads), sinks)
    later = positions[-1] + 1
    assert clean[HEAD, later:, positions].sum(-1).mean() < 0.3  # without the planting: no sink there
    assert base[HEAD, later:, positions].sum(-1).mean() > 0.6  # the planted keys soak the later queries
    found = sinks.cache[LAYER][0, HEAD]  # (K,) ACT's hidden sinks in that head, the first sink dropped
    assert found[positions[-1]], found.nonzero().flatten().tolist()
    sink = found.to(torch.bool)
    s0, s1 = base[HEAD][:, sink].sum(-1), steered[HEAD][:, sink].sum(-1)  # (Q,)
    rows = (s0 > 0) & (s0 < 1)  # rows that see a sink and something else
    assert rows.sum() > 5
    torch.testing.assert_close(s1[rows], 0.4 * s0[rows])  # beta = 0.4 of the sink attention kept
    torch.testing.assert_close(steered[HEAD].sum(-1), base[HEAD].sum(-1))  # rows still sum to one
    rest0, rest1 = base[HEAD][:, ~sink], steered[HEAD][:, ~sink]  # the others, scaled up in proportion
    ratio = rest1[rows] / rest0[rows].clamp_min(1e-30)
    scale = 1 + 0.6 * s0[rows] / (1 - s0[rows])
    seen = rest0[rows] > 1e-6  # ratios of float32 weights, where the weight is not vanishingly small
    torch.testing.assert_close(ratio[seen], scale[:, None].expand_as(ratio)[seen], rtol=1e-4, atol=0)
    others = [h for h in range(spec.n_heads) if h != HEAD]
    torch.testing.assert_close(steered[others], base[others])
