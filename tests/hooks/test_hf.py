"""HF backend: captured patterns equal HF eager ``output_attentions``; capture leaves outputs unchanged."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.hooks.inputs import prepare_inputs, tokenizer_of
from attnlab.hooks.segments import text_segments
from attnlab.kernels.plan import LayerPlan, Plan
from attnlab.zoo import load

FAMILIES = ["gpt2", "llama", "bert", "vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "llava"]
TEXTS = ["the cat sat on the mat .", "the dog"]


def image(seed=0):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (32, 32, 3), dtype=np.uint8))


def inputs_for(spec, proc):
    if spec.modality == "text":
        return prepare_inputs(proc, spec, TEXTS)
    if spec.modality == "vision":
        return prepare_inputs(proc, spec, [], [image(0), image(1)])
    return prepare_inputs(proc, spec, ["is there a cat ?"], [image(0)])


def eager_attentions(path, model_cls, inputs):
    eager = model_cls.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(**inputs, output_attentions=True)
    return out.attentions


def main_output(out):
    return out.logits if "logits" in out else out.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_pattern_matches_hf_eager_and_outputs_unchanged(family, tiny_dir):
    model, proc, spec = load(str(tiny_dir(family)))
    inputs = inputs_for(spec, proc)
    with torch.no_grad():
        base = main_output(model(**inputs))
        with attach(model, Capture(pattern=True, stats=True), tokenizer=tokenizer_of(proc)) as rec:
            captured = main_output(model(**inputs))
    trace = rec.trace()
    live = trace.token_mask if base.dim() == 3 and base.shape[1] == trace.n_tokens else None
    diff = (captured - base).abs()
    assert (diff[live] if live is not None else diff).max() < 1e-5
    reference = eager_attentions(spec.path, type(model), inputs)
    assert len(reference) == spec.n_layers == len(trace.layers)
    for i, ref in enumerate(reference):
        pattern = trace.layer(i).pattern
        rows = trace.token_mask[:, None, :, None].expand_as(pattern)  # padded query rows carry no meaning
        assert torch.allclose(pattern[rows], ref[rows], atol=1e-5), f"layer {i}"
        real = pattern.sum(-1)[trace.token_mask[:, None, :].expand(-1, pattern.shape[1], -1)]
        assert torch.allclose(real, torch.ones_like(real), atol=1e-5)
        if spec.causal:
            assert pattern.triu(1).abs().max() == 0


def test_padding_mask_is_applied(tiny_dir):
    """A custom attention name loses masks unless its mask function is registered: padded keys get zero."""
    model, tok, spec = load(str(tiny_dir("bert")))
    inputs = prepare_inputs(tok, spec, TEXTS)
    with torch.no_grad(), attach(model, Capture(pattern=True), tokenizer=tok) as rec:
        model(**inputs)
    pattern = rec.trace().layer(0).pattern
    pad_keys = ~inputs["attention_mask"][1].bool()
    assert pad_keys.any()
    assert pattern[1, :, :, pad_keys].abs().max() == 0


def test_stats_match_pattern(tiny_dir):
    model, tok, spec = load(str(tiny_dir("gpt2")))
    with torch.no_grad(), attach(model, Capture(pattern=True, stats=True), tokenizer=tok) as rec:
        model(**prepare_inputs(tok, spec, TEXTS[:1]))
    layer = rec.trace().layer(1)
    p = layer.pattern.double()
    entropy = -(p * torch.where(p > 0, p.log(), 0)).sum(-1)
    assert torch.allclose(layer.stats["entropy"].double(), entropy, atol=1e-5)
    assert torch.allclose(layer.stats["received"].double(), p.sum(-2), atol=1e-5)
    assert torch.allclose(layer.stats["mass.first"].double(), p[..., 0], atol=1e-6)


def test_restores_model_on_exception(tiny_dir):
    model, tok, spec = load(str(tiny_dir("gpt2")))
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with attach(model, Capture(pattern=True), tokenizer=tok):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    assert not any(hasattr(m, "_attnlab_site") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_segments_mark_special_and_image_tokens(tiny_dir, minilm):
    model, tok, spec = minilm
    with torch.no_grad(), attach(model, Capture(stats=True), tokenizer=tok) as rec:
        model(**prepare_inputs(tok, spec, ["Attention is all you need."]))
    trace = rec.trace()
    kinds = {(s.kind, trace.tokens[0][s.start]) for s in trace.segments[0] if s.kind == "special"}
    assert kinds == {("special", "[CLS]"), ("special", "[SEP]")}
    model, proc, spec = load(str(tiny_dir("llava")))
    inputs = prepare_inputs(proc, spec, ["is there a cat ?"], [image()])
    with torch.no_grad(), attach(model, Capture(stats=True), tokenizer=proc.tokenizer) as rec:
        model(**inputs)
    trace = rec.trace()
    images = [s for s in trace.segments[0] if s.kind == "image"]
    n_image_tokens = int((inputs["input_ids"][0] == spec.image_token_id).sum())
    assert len(images) == 1 and images[0].length == n_image_tokens and images[0].grid == (4, 4)
    assert trace.vision is not None and trace.vision.meta.family == "clip_vision_model"
    assert [s.kind for s in trace.vision.segments[0]] == ["special", "image"]


def test_identity_plan_and_head_mask_in_generation(tiny_dir):
    model, tok, spec = load(str(tiny_dir("llama")))
    inputs = prepare_inputs(tok, spec, TEXTS[:1])
    with torch.no_grad():
        base = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        with attach(model, Capture(stats=True), Plan({0: LayerPlan(head_scale=(1.0,) * 4)}), tokenizer=tok) as rec:
            same = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        logits = model(**inputs).logits
        with attach(model, plan=Plan({1: LayerPlan(head_scale=(0.0, 1.0, 1.0, 1.0))})):
            masked = model(**inputs).logits
    assert torch.equal(base, same)
    assert len(rec.traces()) == 5 and rec.traces()[1].layer(0).stats["lse"].shape[-1] == 1
    assert (masked - logits).abs().max() > 1e-4


def test_over_budget_fails_before_forward(minilm):
    model, tok, spec = minilm
    with pytest.raises(ValueError, match="over the budget"):
        with attach(model, Capture(pattern=True, budget_bytes=1024), tokenizer=tok):
            model(**prepare_inputs(tok, spec, ["A sentence long enough to exceed a tiny budget."]))



@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_received_counts_real_queries_only_in_a_padded_batch(family, tiny_dir, minilm):
    """A short item padded in a batch receives exactly what it receives alone: padding rows add nothing."""
    from attnlab.hooks.inputs import capture_trace

    model, proc, spec = minilm if family == "bert" else load(str(tiny_dir("gpt2")))
    texts = ["a cat sat on the mat while the dog slept by the door", "a cat"]
    batch = capture_trace(model, proc, spec, Capture(stats=True), texts)
    alone = capture_trace(model, proc, spec, Capture(stats=True), texts[1:])
    real = batch.token_mask[1]  # (N,) the short item's real tokens in the padded batch
    assert not real.all()  # the short item really is padded
    for layer, rec in alone.layers.items():
        got = batch.layers[layer].stats["received"][1][:, real]  # (H, n_real)
        torch.testing.assert_close(got, rec.stats["received"][0], atol=2e-5, rtol=1e-4)
        # every real query row sums to one, so the total is the number of real tokens
        torch.testing.assert_close(batch.layers[layer].stats["received"][1].sum(-1),
                                   torch.full((got.shape[0],), float(real.sum())), atol=1e-4, rtol=0)


def test_attention_that_bypasses_attnlab_raises_instead_of_an_empty_trace(monkeypatch):
    """BLOOM computes attention inside its module; without its adapter it is refused at attach time, and with the
    attach-time check fooled as well its own attention records nothing: the forward call must fail."""
    import transformers as tf

    from attnlab.hooks import hf_stacks, module_adapters

    torch.manual_seed(0)
    model = tf.BloomForCausalLM(tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4)).eval()
    monkeypatch.setattr(module_adapters, "ADAPTERS", {})
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.self_attention' \(BloomAttention\): it adds ALiBi"):
        with attach(model, Capture(pattern=True)):
            pass
    monkeypatch.setattr(hf_stacks, "routes_through_interface", lambda cls: True)
    with pytest.raises(RuntimeError, match="No attention layer of the 'main' stack reached attnlab's attention"):
        with torch.no_grad(), attach(model, Capture(pattern=True, stats=True)):
            model(input_ids=torch.tensor([[5, 6, 7]]))


def test_config_of_reads_instance_configs_and_class_properties():
    """attach switches the attention implementation of every config a model's modules hold: a Hugging Face module's
    own ``config`` attribute, and one a class serves through a property; a module without one gives ``None``."""
    from transformers import LlamaConfig

    from attnlab.hooks.hf import _config_of

    cfg = LlamaConfig()
    plain = torch.nn.Linear(2, 2)
    held = torch.nn.Module()
    held.config = cfg

    class Served(torch.nn.Module):
        @property
        def config(self):
            return cfg

    assert _config_of(held) is cfg
    assert _config_of(Served()) is cfg
    assert _config_of(plain) is None


def test_each_layer_checks_its_first_call_and_decoding_steps_skip_the_checks(tiny_dir, monkeypatch):
    """attention()'s input checks run on the first call of each planned layer (a plan naming a key set nobody
    supplies fails there, naming it); the decoding steps after it rebuild the same inputs and skip them."""
    from attnlab.hooks import recorder
    from attnlab.kernels.api import attention, run_attention
    from attnlab.kernels.plan import Reweight

    model, tok, spec = load(str(tiny_dir("llama")))
    inputs = prepare_inputs(tok, spec, TEXTS[:1])
    with torch.no_grad(), pytest.raises(ValueError, match=r"key sets \['nowhere'\] that were not passed"):
        with attach(model, plan=Plan({1: LayerPlan(reweight=Reweight("nowhere", 0.5))}), tokenizer=tok):
            model(**inputs)
    checked, unchecked = [], []
    monkeypatch.setattr(recorder, "attention", lambda *a, **k: checked.append(1) or attention(*a, **k))
    monkeypatch.setattr(recorder, "run_attention", lambda *a, **k: unchecked.append(1) or run_attention(*a, **k))
    plan = Plan({0: LayerPlan(head_scale=(0.5, 1.0, 1.0, 1.0)), 1: LayerPlan(head_scale=(1.0, 0.0, 1.0, 1.0))})
    with torch.no_grad(), attach(model, plan=plan, tokenizer=tok):
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert len(checked) == 2 and len(unchecked) == 2 * 3  # two layers: a prefill each, then 3 decoding steps



def test_blocks_are_hooked_only_where_their_hidden_states_are_read(tiny_dir):
    """A hook on a block sends every call of it down torch's slow path: attach hooks a block's input only for a
    key-set function or the residual stream, its output only for the residual stream, and removes them after."""
    model, tok, spec = load(str(tiny_dir("llama")))
    blocks = list(model.model.layers)
    plan = Plan({0: LayerPlan(head_scale=(0.5, 1.0, 1.0, 1.0))})

    def hooks():
        return [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in blocks]

    with attach(model, plan=plan, tokenizer=tok):
        assert hooks() == [(0, 0)] * len(blocks)
    with attach(model, plan=plan, tokenizer=tok, key_set_fn=lambda *a, **k: {}):
        assert hooks() == [(1, 0)] * len(blocks)

    class FromAttention:  # a key-set function that says it reads no hidden state (as ACT's sinks do)
        reads_hidden = False
        seen = []

        def __call__(self, layer, hidden, static, **kwargs):
            self.seen.append((hidden, kwargs["n_queries"]))
            return {}

    fn = FromAttention()
    prompts = prepare_inputs(tok, spec, TEXTS[:2])
    with torch.no_grad(), attach(model, plan=plan, tokenizer=tok, key_set_fn=fn):
        assert hooks() == [(0, 0)] * len(blocks)
        model.generate(**prompts, max_new_tokens=3, do_sample=False)
    n_prompt = prompts["input_ids"].shape[1]
    assert fn.seen == [(None, n_prompt), (None, 1), (None, 1)]  # layer 0's prefill, then two decoding steps
    inputs = prepare_inputs(tok, spec, TEXTS[:1])
    with attach(model, Capture(resid=True), tokenizer=tok) as rec:
        assert hooks() == [(1, 1)] * len(blocks)
        with torch.no_grad():
            model(**inputs)
    assert hooks() == [(0, 0)] * len(blocks)
    with torch.no_grad():  # (transformers hooks the blocks itself to hand back hidden states)
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # (L + 1) x (B, N, d)
    torch.testing.assert_close(rec.trace().resid_in(1), hidden[1])  # the hooks still read what they are for


def test_steering_makes_segments_only_when_a_key_set_reads_them(tiny_dir, monkeypatch):
    """A generation that only steers attention defers the prompt's segments: a plan whose sets come from the segments
    (``text``) makes them once for the whole generation, with the same result as made eagerly; a plan that reads none
    (a head scale, ACT's per-head sinks) never makes them."""
    from attnlab.hooks import hf
    from attnlab.kernels.plan import Reweight

    model, tok, spec = load(str(tiny_dir("llama")))
    inputs = prepare_inputs(tok, spec, TEXTS)
    made = []
    monkeypatch.setattr(hf, "text_segments", lambda *a, **k: made.append(1) or text_segments(*a, **k))

    def generate(plan):
        made.clear()
        with torch.no_grad(), attach(model, plan=plan, tokenizer=tok) as rec:
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        return out, rec

    _, rec = generate(Plan({0: LayerPlan(head_scale=(0.5, 1.0, 1.0, 1.0))}))
    assert made == []
    _, rec = generate(Plan({1: LayerPlan(reweight=Reweight("text", 0.5))}))
    assert made == [1]
    with torch.no_grad(), attach(model, Capture(stats=("lse",)), tokenizer=tok) as captured:
        model(**inputs)
    assert list(rec.traces()[0].segments) == captured.trace().segments  # what the eager capture makes
