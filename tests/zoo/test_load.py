"""zoo.load: the packaged MiniLM, local checkpoints, and clear errors."""

import pytest
import torch

from attnlab.zoo import load
from attnlab.zoo.load import modality_of


def test_minilm_loads_offline_and_embeds(minilm):
    model, tok, spec = minilm
    assert (spec.family, spec.n_layers, spec.n_heads, spec.causal) == ("bert", 6, 12, False)
    enc = tok(["A man is eating food.", "A man is eating a meal.", "The stock market fell."],
              return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # A known property of the pretrained sentence encoder: paraphrases sit closer than unrelated sentences.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


@pytest.mark.parametrize("family", ["gpt2", "vit", "llava"])
def test_local_directory_loads(family, tiny_dir):
    model, proc, spec = load(str(tiny_dir(family)))
    assert spec.family == family and spec.n_layers == 2 and proc is not None


def test_unknown_name_points_to_the_models_doc():
    with pytest.raises(ValueError, match=r"Unknown model 'gpt-17'.*minilm.*docs/models.md lists the architectures"):
        load("gpt-17")


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="No directory"):
        load(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load(str(tmp_path))


def test_custom_code_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mygpt", "architectures": ["MyGPTForCausalLM"]}')
    with pytest.raises(ValueError, match="'MyGPTForCausalLM', which is not a transformers class .*trust_remote_code"):
        load(str(tmp_path))


def test_checkpoint_without_weights(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir("gpt2") / "config.json").read_text())
    with pytest.raises(ValueError, match=f"Could not load the weights in {tmp_path}"):
        load(str(tmp_path))


@pytest.mark.parametrize("config, modality", [
    ({"model_type": "gpt2", "vocab_size": 10}, "text"),
    ({"model_type": "deit", "patch_size": 16, "image_size": 224}, "vision"),
    ({"model_type": "clip", "text_config": {}, "vision_config": {}}, "text-image"),
    ({"model_type": "llava", "text_config": {}, "vision_config": {}, "image_token_id": 32000}, "vision-language"),
    ({"model_type": "paligemma", "text_config": {}, "vision_config": {}, "image_token_index": 257152}, "vision-language"),
])
def test_modality_from_config(config, modality):
    assert modality_of(config) == modality
