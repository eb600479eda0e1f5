"""Qwen2-VL (Wang et al., 2024): a packed vision tower with a variable number of patches per image, a patch merger,
and a decoder with multimodal RoPE, on a tiny random checkpoint saved to disk and loaded back.

Oracles: Hugging Face's eager attention (``output_attentions`` for the decoder; for the vision tower, which returns
no weights, transformers' own ``eager_attention_forward`` registered under another name records them per image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.capture import Capture
from attnlab.core.runs import Run
from attnlab.hooks import attach
from attnlab.hooks.inputs import prepare_inputs, tokenizer_of
from attnlab.zoo import load
from attnlab.zoo.tiny import save_tiny

SIZES = [(32, 48), (32, 32)]  # (height, width): 4x6 and 4x4 patches of 8 pixels, 6 and 4 image tokens after merging


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    path = save_tiny("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl") / "ckpt")
    return path, load(str(path))


def _inputs(loaded, texts, images):
    _, proc, spec = loaded
    return prepare_inputs(proc, spec, texts, images)


def _eager_patterns(path, model_cls, inputs) -> tuple[tuple, list[torch.Tensor]]:
    """``(decoder attentions per layer, vision weights per (layer, image) in call order)`` from HF eager."""
    from transformers import AttentionInterface
    from transformers.models.qwen2_vl.modeling_qwen2_vl import eager_attention_forward

    calls: list[torch.Tensor] = []

    def recording_eager(module, q, k, v, attention_mask=None, **kwargs):
        out, weights = eager_attention_forward(module, q, k, v, attention_mask, **kwargs)
        if type(module).__name__ == "VisionAttention":
            calls.append(weights[0])  # (H, n, n): one image
        return out, weights

    AttentionInterface.register("attnlab_test_recording_eager", recording_eager)
    eager = model_cls.from_pretrained(path, attn_implementation="eager").eval()
    eager.model.visual.config._attn_implementation_internal = "attnlab_test_recording_eager"
    with torch.no_grad():
        out = eager(**inputs, output_attentions=True)
    return out.attentions, calls


def test_processor_expands_each_image_to_its_merged_patch_count(qwen):
    _, loaded = qwen
    _, proc, _ = loaded
    inputs = _inputs(loaded, ["is there a cat ?", "a dog"], [picture(0, SIZES[0]), picture(1, SIZES[1])])
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 4]]
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [6, 4]  # 24 / 4 and 16 / 4 patches
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_id).long())
    with pytest.raises(ValueError, match="image slots"):
        proc(text=["<image> a <image> b"], images=[picture(0, SIZES[0])])


def test_capture_equals_hf_eager_on_both_stacks_and_leaves_logits_unchanged(qwen):
    path, loaded = qwen
    model, proc, _ = loaded
    inputs = _inputs(loaded, ["is there a cat ?", "a dog"], [picture(0, SIZES[0]), picture(1, SIZES[1])])
    with torch.no_grad():
        base = model(**inputs).logits
        with attach(model, Capture(pattern=True, stats=True, resid=True), tokenizer=tokenizer_of(proc)) as rec:
            captured = model(**inputs).logits
    trace = rec.trace()
    live = trace.token_mask
    assert (captured - base).abs()[live].max() <= 1e-5
    decoder, vision = _eager_patterns(path, type(model), inputs)
    for layer, ref in enumerate(decoder):
        pattern = trace.layer(layer).pattern
        rows = live[:, None, :, None].expand_as(pattern)
        assert (pattern[rows] - ref[rows]).abs().max() <= 1e-5
    image_seg = [next(s for s in segs if s.kind == "image") for segs in trace.segments]
    assert [s.end - s.start for s in image_seg] == [6, 4]  # the variable image token counts, as segments
    assert [s.grid for s in image_seg] == [(2, 3), (2, 2)]  # each image's merged grid, from image_grid_thw
    # the vision Trace: one item per image, padded to the larger; each image attends within itself only
    vt = trace.vision
    assert vt.token_mask.sum(1).tolist() == [24, 16] and vt.meta.n_layers == 2 and vt.meta.d_model == 32
    assert len(vision) == 2 * 2
    for layer in range(2):
        for item, n in enumerate((24, 16)):
            pattern = vt.layer(layer).pattern[item]  # (H, n_max, n_max)
            torch.testing.assert_close(pattern[:, :n, :n], vision[2 * layer + item], rtol=0, atol=1e-5)
            if n < vt.n_tokens:  # no weight on the padded keys
                assert pattern[:, :n, n:].abs().max() == 0
            assert vt.layer(layer).resid.shape == (2, 24, 32)


def test_vision_tokens_name_each_patch_in_the_mergers_order(qwen):
    _, loaded = qwen
    model, proc, _ = loaded
    with torch.no_grad(), attach(model, Capture(pattern=True), tokenizer=tokenizer_of(proc)) as rec:
        model(**_inputs(loaded, ["a dog"], [picture(1, SIZES[1])]))
    tokens = rec.trace().vision.tokens[0]
    # 2x2 windows in raster order, each window's patches in raster order (the merger's grouping)
    assert tokens[:8] == ["patch(0,0)", "patch(0,1)", "patch(1,0)", "patch(1,1)",
                          "patch(0,2)", "patch(0,3)", "patch(1,2)", "patch(1,3)"]
    assert sorted(tokens) == sorted(f"patch({r},{c})" for r in range(4) for c in range(4))


def test_an_image_in_a_batch_gives_what_it_gives_alone(qwen):
    _, loaded = qwen
    model, proc, _ = loaded

    def capture(texts, images):
        with torch.no_grad(), attach(model, Capture(pattern=True, stats=True), tokenizer=tokenizer_of(proc)) as rec:
            model(**_inputs(loaded, texts, images))
        return rec.trace()

    batch = capture(["is there a cat ?", "a dog"], [picture(0, SIZES[0]), picture(1, SIZES[1])])
    alone = capture(["a dog"], [picture(1, SIZES[1])])
    for layer in range(2):
        torch.testing.assert_close(batch.vision.layer(layer).pattern[1, :, :16, :16],
                                   alone.vision.layer(layer).pattern[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(batch.vision.layer(layer).stats["entropy"][1, :, :16],
                                   alone.vision.layer(layer).stats["entropy"][0], rtol=0, atol=1e-5)
        n = int(alone.token_mask.sum())  # the decoder: the shorter prompt, right-padded in the batch
        real = batch.token_mask[1]
        torch.testing.assert_close(batch.layer(layer).pattern[1][:, real][:, :, real],
                                   alone.layer(layer).pattern[0][:, :n, :n], rtol=0, atol=1e-5)


def test_cli_captures_a_local_qwen2_vl_checkpoint(qwen, tmp_path):
    path, loaded = qwen
    image_file = tmp_path / "img.png"
    picture(0, SIZES[0]).save(image_file)
    result = CliRunner().invoke(app, ["capture", "--model", str(path), "--text", "is there a cat ?", "--image",
                                      str(image_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    run = Run.open(tmp_path / "run")
    trace = run.trace("main")
    decoder, _ = _eager_patterns(path, type(loaded[0]), _inputs(loaded, ["is there a cat ?"],
                                                               [picture(0, SIZES[0])]))
    for layer, ref in enumerate(decoder):
        torch.testing.assert_close(trace.layer(layer).pattern, ref, rtol=0, atol=1e-5)
    assert trace.vision is not None and trace.vision.tokens[0][0] == "patch(0,0)"
