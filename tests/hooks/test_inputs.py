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


def test_load_audio_reads_pcm_wav_channels_and_widths_as_floats(tmp_path):
    import numpy as np
    from scipy.io import wavfile

    from attnlab.hooks.inputs import load_audio

    left = np.array([0, 16384, -16384, 32767], dtype=np.int16)
    right = np.array([0, -16384, 16384, -32768], dtype=np.int16)
    wavfile.write(tmp_path / "stereo.wav", 8000, np.stack([left, right], axis=1))
    wavfile.write(tmp_path / "u8.wav", 8000, np.array([128, 255, 0, 192], dtype=np.uint8))
    stereo, u8 = load_audio([tmp_path / "stereo.wav", tmp_path / "u8.wav"], 8000)
    np.testing.assert_allclose(stereo, (left.astype(float) + right) / 2 / 32768, atol=1e-7)  # channels averaged
    np.testing.assert_allclose(u8, [0, 127 / 128, -1, 0.5], atol=1e-7)  # 8-bit PCM is unsigned around 128
    with pytest.raises(ValueError, match="does not exist"):
        load_audio([tmp_path / "missing.wav"], 8000)
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="not a PCM .wav"):
        load_audio([tmp_path / "text.wav"], 8000)
