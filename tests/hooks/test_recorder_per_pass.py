"""Recorder work that depends on the pass alone (key sets, real query rows) is done once per pass, not per layer.

Oracles: the eager pattern captured beside the statistics (itself checked against HF eager in test_hf.py),
summed over key sets built here from the token mask; and the row-sum identity of softmax.
"""

import torch

from attnlab.core.capture import Capture
from attnlab.core.trace import Trace
from attnlab.hooks import attach
from attnlab.hooks.inputs import prepare_inputs
from attnlab.zoo import load

TEXTS = ["the cat sat on the mat while the dog slept .", "the dog"]


def test_key_sets_are_built_once_per_pass_and_match_the_pattern(tiny_dir, monkeypatch):
    model, tok, spec = load(str(tiny_dir("gpt2")))
    assert spec.n_layers >= 2  # otherwise once per pass and once per layer cannot be told apart
    inputs = prepare_inputs(tok, spec, TEXTS)
    calls = []
    original = Trace.key_set
    monkeypatch.setattr(Trace, "key_set", lambda self, kind: calls.append(kind) or original(self, kind))
    capture = Capture(stats=True, pattern=True)
    with torch.no_grad(), attach(model, capture, tokenizer=tok) as rec:
        model(**inputs)
    assert sorted(calls) == sorted(capture.key_sets)  # one call per kind, whatever the depth
    monkeypatch.setattr(Trace, "key_set", original)
    trace = rec.trace()
    mask = trace.token_mask  # (B, N)
    first = torch.zeros_like(mask)
    first[torch.arange(mask.shape[0]), mask.int().argmax(-1)] = True  # first real token of each item
    rows = mask[:, None, :]  # (B, 1, Q) real query rows
    for layer in range(spec.n_layers):
        pattern, stats = trace.layer(layer).pattern, trace.layer(layer).stats  # (B, H, Q, K)
        want_first = (pattern * first[:, None, None, :]).sum(-1)  # (B, H, Q)
        torch.testing.assert_close(stats["mass.first"], want_first, atol=1e-5, rtol=1e-5)
        want_received = (pattern * rows[..., None]).sum(-2)  # (B, H, K) over real queries only
        torch.testing.assert_close(stats["received"], want_received, atol=1e-5, rtol=1e-5)


def test_decoding_passes_fit_the_cached_sets_to_the_growing_keys(tiny_dir):
    """Each decoding pass has one more key: the cached prompt sets are refitted (generated tokens are text)."""
    model, tok, spec = load(str(tiny_dir("llama")))
    inputs = prepare_inputs(tok, spec, TEXTS[:1])
    prompt = inputs["input_ids"][0]  # (N_prompt,)
    with torch.no_grad(), attach(model, Capture(stats=True, pattern=True), tokenizer=tok) as rec:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    traces = rec.traces()
    assert len(traces) == 3
    special = torch.tensor([int(t) in set(tok.all_special_ids) for t in prompt])  # (N_prompt,)
    assert special.any() and not special.all()  # BOS: text and special sets differ
    for step, trace in enumerate(traces[1:], start=1):
        text = torch.cat([~special, torch.ones(step, dtype=torch.bool)])  # generated keys are text
        for layer in range(spec.n_layers):
            pattern, stats = trace.layer(layer).pattern, trace.layer(layer).stats  # (1, H, 1, K)
            assert pattern.shape[-1] == len(prompt) + step  # keys grew by one per step
            torch.testing.assert_close(stats["mass.text"], (pattern * text).sum(-1), atol=1e-5, rtol=1e-5)
            # a decoding row is one real query whose weights sum to one
            torch.testing.assert_close(stats["received"].sum(-1), torch.ones(stats["received"].shape[:2]),
                                       atol=1e-5, rtol=0)


def test_later_passes_of_a_steering_only_generation_give_their_tokens_when_asked(tiny_dir):
    """Steering without capturing computes a pass's token strings and segments only if they are read: read, they are
    those of the pass's own tokens (the prompt's at prefill, each decoding step's after it)."""
    from attnlab.hooks.segments import Deferred, text_segments, text_tokens
    from attnlab.kernels.plan import LayerPlan, Plan

    model, tok, spec = load(str(tiny_dir("gpt2")))
    inputs = prepare_inputs(tok, spec, TEXTS[:1])
    plan = Plan({0: LayerPlan(head_scale=(0.5,) * spec.n_heads)})
    with torch.no_grad(), attach(model, plan=plan, tokenizer=tok) as rec:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    passes = rec.stacks[rec.main].passes
    assert len(passes) == 3
    assert all(isinstance(p.tokens, Deferred) and p.tokens._items is None for p in passes)  # a head scale reads none
    assert all(isinstance(p.segments, Deferred) and p.segments._items is None for p in passes)
    assert list(passes[0].tokens) == text_tokens(inputs["input_ids"], tok)
    assert list(passes[0].segments) == text_segments(inputs["input_ids"], inputs["attention_mask"].bool(),
                                                     set(tok.all_special_ids))
    assert all(isinstance(p.tokens, Deferred) and p.tokens._items is None for p in passes[1:])
    new = out[:, inputs["input_ids"].shape[1]:]
    for step, p in enumerate(passes[1:]):
        ids = new[:, step:step + 1]
        assert list(p.tokens) == text_tokens(ids, tok)
        assert list(p.segments) == text_segments(ids, torch.ones_like(ids, dtype=torch.bool), set(tok.all_special_ids))


def test_a_key_set_function_gets_each_planned_layers_input_and_nothing_is_held_after(tiny_dir):
    """The hidden state entering a planned layer reaches the key-set function at that layer (the block's own input,
    as HF's hidden_states report it) and is not kept once read; unplanned layers' inputs are never kept."""
    from attnlab.kernels.plan import LayerPlan, Plan, Reweight

    model, tok, spec = load(str(tiny_dir("gpt2")))
    inputs = prepare_inputs(tok, spec, TEXTS)
    plan = Plan({1: LayerPlan(reweight=Reweight("first", 0.5))})
    seen = {}

    def key_sets(layer, hidden, static, **_):
        seen[layer] = hidden
        return {}

    with torch.no_grad(), attach(model, plan=plan, tokenizer=tok, key_set_fn=key_sets) as rec:
        out = model(**inputs, output_hidden_states=True)
        assert rec.stacks[rec.main].block_input == {}
    assert list(seen) == [1]
    torch.testing.assert_close(seen[1], out.hidden_states[1])
