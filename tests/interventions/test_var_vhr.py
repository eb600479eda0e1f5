"""VAR and VHR plans against their papers' formulas on hand-built inputs."""

import numpy as np
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta
from attnlab.interventions.var import SINK_SET, TARGET_SET, SinkSets, scaled_tau, var_plan
from attnlab.kernels.api import attention
from attnlab.probes.vhd import head_divergence, vhr_heads


def var_by_hand(p, sinks, image, keep, rho, min_mass):
    """VAR's redistribution written out row by row (numpy), from the paper's/code's description."""
    out = p.copy()
    nonsink = image & ~sinks
    for idx in np.ndindex(p.shape[:-1]):
        row = p[idx]
        img = row[image].sum()
        share = row[nonsink].sum() / img if img > 0 else 0.0
        if img < min_mass or share < rho or not (sinks & image).any():
            continue
        budget = (1 - keep) * row[sinks].sum()
        new = row.copy()
        new[sinks] *= keep
        new[nonsink] += budget * row[nonsink] / row[nonsink].sum()
        out[idx] = new
    return out


def test_var_plan_matches_formula():
    g = torch.Generator().manual_seed(0)
    n, d = 9, 4
    image = torch.zeros(1, n, dtype=torch.bool)
    image[0, 2:7] = True
    sinks = torch.zeros(1, n, dtype=torch.bool)
    sinks[0, [0, 3]] = True  # a text sink (BOS) and a visual sink
    q, k, v = (torch.randn(1, 3, n, d, generator=g) * 2 for _ in range(3))
    plan = var_plan(6, keep_fraction=0.6, rho=0.5, min_image_mass=0.2, skip_layers=2, except_last_layer=1)
    lp = plan.for_layer(2)
    assert sorted(plan.layers) == [2, 3, 4] and plan.for_layer(1) is None and plan.for_layer(5) is None
    sets = {"image": image, SINK_SET: sinks, TARGET_SET: image & ~sinks}
    after = {"after_image": torch.ones(1, n, dtype=torch.bool)}
    _, base = attention(q, k, v, key_sets=sets, impl="eager", return_pattern=True)
    _, moved = attention(q, k, v, plan=lp, key_sets=sets, query_sets=after, impl="eager", return_pattern=True)
    expect = var_by_hand(base.pattern.double().numpy()[0], sinks[0].numpy(), image[0].numpy(), 0.6, 0.5, 0.2)
    assert np.allclose(moved.pattern.double().numpy()[0], expect, atol=1e-6)
    assert not np.allclose(expect, base.pattern.numpy()[0])  # some rows really moved


def test_sink_sets_use_hidden_state_entering_layer_and_cache_for_decoding():
    hidden = torch.ones(1, 5, 16)
    hidden[0, 0, 3] = 40.0  # BOS: massive in dim 3
    hidden[0, 2, 3] = 40.0  # an image token, too
    image = torch.tensor([[False, True, True, True, False]])
    fn = SinkSets(sink_dims=(3,), tau=3.0)
    sets = fn(2, hidden, {"image": image})
    assert sets[SINK_SET].tolist() == [[True, False, True, False, False]]
    assert sets[TARGET_SET].tolist() == [[False, True, False, True, False]]
    again = fn(2, torch.ones(1, 1, 16), {"image": image})  # a decoding step reuses the prefill sinks
    assert torch.equal(again[SINK_SET], sets[SINK_SET])
    no_visual = SinkSets(sink_dims=(3,), tau=3.0)(4, hidden[:, [0, 1, 3, 4]], {"image": image[:, [0, 1, 3, 4]]})
    assert not no_visual[SINK_SET].any()  # a layer without a visual sink gets no redistribution


def test_scaled_tau_keeps_papers_fraction():
    assert scaled_tau(4096) == 20.0 and scaled_tau(8192) == 20.0
    assert abs(scaled_tau(128) - 20 * (128 / 4096) ** 0.5) < 1e-12


def _trace(head_out, image: bool):
    n_layers, _, n_heads, n, _ = head_out.shape  # (L, B, H, N, d_head)
    segs = ([Segment("image", 0, 2)] if image else []) + [Segment("text", 2 if image else 0, n)]
    layers = {i: LayerRecord(head_out=head_out[i]) for i in range(n_layers)}
    meta = TraceMeta("m", "llava", n_layers, n_heads, 2, 8, True, captured=("head_out",))
    toks = (["<image>"] * 2 if image else []) + [f"t{i}" for i in range(n - (2 if image else 0))]
    return Trace([toks], [segs], layers, meta, torch.ones(1, n, dtype=torch.bool))


def test_vhr_selection_matches_algorithm_by_hand():
    rng = np.random.default_rng(0)
    n_layers, n_heads = 2, 6
    text = torch.tensor(rng.normal(size=(n_layers, 1, n_heads, 3, 2)), dtype=torch.float32)
    delta = torch.zeros_like(text)
    vhd = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 3.0], [1.0, 0.9, 0.1, 0.2, 0.3, 0.4]])
    delta[:, 0, :, -1, 0] = torch.tensor(vhd, dtype=torch.float32)
    text[0, 0, 5, -1] = torch.tensor([9.0, 9.0])  # head 0.5: VHD and text norm both above mean+std -> outlier
    img = torch.cat([torch.zeros(n_layers, 1, n_heads, 2, 2), text + delta], dim=3)
    result = head_divergence(_trace(img, True), _trace(text, False))
    assert np.allclose(result.vhd[:, 0], vhd, atol=1e-6)
    chosen = vhr_heads(result).heads[0]
    for layer in range(n_layers):
        v = vhd[layer].copy()
        ta = (text[layer, 0, :, -1] ** 2).sum(-1).numpy()
        v[(v > v.mean() + v.std(ddof=1)) & (ta > ta.mean() + ta.std(ddof=1))] = 0
        assert set(chosen[layer]) == set(np.nonzero(v > np.median(v))[0].tolist()), layer
    assert 5 not in chosen[0]


def _o_proj_z(model, inputs, scale: dict, record: dict) -> torch.Tensor:
    """The language model's logits with hand-written o_proj pre-hooks (independent of attnlab's Edits): heads in
    ``scale`` (``{layer: [H] factors}``) multiplied before W_O, ``record`` filled with ``{layer: z [N, H, d]}``."""
    layers = model.get_decoder().layers
    n_heads = model.get_decoder().config.num_attention_heads
    handles = []
    for i, layer in enumerate(layers):
        def pre(_m, args, i=i):
            z = args[0].view(*args[0].shape[:-1], n_heads, -1)  # (1, N, H, d)
            if i in scale:
                z = z * scale[i][None, None, :, None]
            record[i] = z[0].detach().clone()
            return (z.reshape(args[0].shape),)
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        for h in handles:
            h.remove()


def test_vhr_chooses_heads_layer_by_layer_inside_the_image_pass():
    """He et al. 2025, Algorithm 1, done the slow way: one image pass per reinforced layer, each with the heads
    chosen so far scaled, then the layer's VHD at the last token against the text-only pass. attnlab does it in
    one pass (vhr_reinforced); it must choose the same heads and give the same logits, and its heads rerun through
    the fused kernel's head-scaling Plan (vhr_plan) must give them too."""
    from PIL import Image

    from attnlab.hooks import attach
    from attnlab.hooks.inputs import prepare_inputs
    from attnlab.interventions.vhr import text_only_inputs, vhr_plan, vhr_reinforced
    from attnlab.probes.vhd import vhr_layer_heads, vhr_layers
    from attnlab.zoo import load

    model, processor, spec = load("toy-llava-deep")
    image = Image.new("RGB", (64, 64), (40, 160, 60))
    prompt = "<image>\nIs there a red square in the image? Answer yes or no."
    inputs = prepare_inputs(processor, spec, [prompt], [image])
    layers = vhr_layers(spec.n_layers)
    assert layers == (1, 4, 5, 6, 7)  # a proper subset of the 8 layers
    text: dict = {}
    _o_proj_z(model, text_only_inputs(processor, spec, [prompt]), {}, text)
    scale, want = {}, {}
    for layer in layers:
        seen: dict = {}
        _o_proj_z(model, inputs, scale, seen)
        vhd = (seen[layer][-1] - text[layer][-1]).norm(dim=-1).numpy()
        want[layer] = vhr_layer_heads(vhd, text[layer][-1].pow(2).sum(-1).numpy())[0]
        scale[layer] = torch.ones(spec.n_heads)
        scale[layer][list(want[layer])] = 2.0
    want_logits = _o_proj_z(model, inputs, scale, {})

    with torch.no_grad(), vhr_reinforced(model, processor, spec, [prompt], inputs) as chosen:
        got_logits = model(**inputs).logits
    assert {layer: c["heads"] for layer, c in chosen[0].items()} == want
    assert all(0 < len(h) < spec.n_heads for h in want.values())
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    plan, picked = vhr_plan(model, processor, spec, image, prompt)
    assert picked["heads"] == want
    with torch.no_grad(), attach(model, plan=plan):
        torch.testing.assert_close(model(**inputs).logits, want_logits, rtol=1e-4, atol=1e-4)
    seen = {}
    plain = _o_proj_z(model, inputs, {}, seen)
    assert (plain - want_logits).abs().max() > 1e-2  # the reinforcement changes the output (positive control)
    once = {layer: vhr_layer_heads((seen[layer][-1] - text[layer][-1]).norm(dim=-1).numpy(),
                                   text[layer][-1].pow(2).sum(-1).numpy())[0] for layer in layers}
    assert once != want  # on this input the order matters: one unreinforced pass picks other heads (layer 6)


def test_vhr_in_a_padded_batch_gives_each_input_its_heads_and_answer_alone():
    """The eval answers in batches: prompts of different lengths padded together (left for the image pass, right for
    the batched text-only pass) must give each input the heads and the answer it gets alone."""
    from PIL import Image

    from attnlab.evals.answer import generate_answers
    from attnlab.interventions.vhr import VHRMethod
    from attnlab.zoo import load

    model, processor, spec = load("toy-llava-deep")
    images = [Image.new("RGB", (64, 64), c) for c in ((40, 160, 60), (200, 30, 30), (20, 20, 220))]
    prompts = ["<image>\nIs there a red square in the image? Answer yes or no.",
               "<image>\nIs there a circle?",
               "<image>\nPlease describe this image in detail."]
    batched, alone = VHRMethod(model, processor, spec), VHRMethod(model, processor, spec)
    together = generate_answers(model, processor, spec, images, prompts, max_new_tokens=4, batch_size=3,
                                **batched.steering_for(images, prompts))
    one_by_one = [generate_answers(model, processor, spec, [im], [p], max_new_tokens=4,
                                   **alone.steering_for([im], [p]))[0] for im, p in zip(images, prompts)]
    assert together == one_by_one
    assert len(alone.chosen) == 3 and batched.chosen == alone.chosen
    assert len({str(heads) for heads in alone.chosen.values()}) > 1  # the inputs differ in their heads
