"""Model inputs from the CLI's texts and images: an LVLM's text-only pass (the second run VHD compares against)."""

from __future__ import annotations

import pytest
import torch

from attnlab.hooks.inputs import prepare_inputs
from attnlab.zoo import load
from attnlab.zoo.tiny import save_tiny


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load(str(save_tiny("llava", tmp_path_factory.mktemp("llava") / "ckpt", image_size=32, patch=8)))


def test_lvlm_without_images_runs_its_language_model_on_the_prompts_alone(llava):
    model, proc, spec = llava
    texts = ["is there a cat ?", "a dog"]
    inputs = prepare_inputs(proc, spec, texts, [])
    expected = proc.tokenizer(texts, return_tensors="pt", padding=True)
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    assert spec.image_token_id not in inputs["input_ids"].tolist()[0]
    with torch.no_grad():
        model(**inputs)  # a LLaVA runs without pixel_values


def test_lvlm_prompt_naming_an_image_needs_one(llava):
    _, proc, spec = llava
    with pytest.raises(ValueError, match=r"holds <image> but no --image was given"):
        prepare_inputs(proc, spec, ["<image> is there a cat ?"], [])
