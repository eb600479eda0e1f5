"""zoo.load: the packaged MiniLM, local checkpoints, and clear errors."""

import pytest
import torch

from attnlab.zoo import load


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


def test_unknown_name_lists_what_is_supported():
    with pytest.raises(ValueError, match=r"Unknown model 'gpt-17'.*minilm.*Supported architectures: .*llava"):
        load("gpt-17")


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="No directory"):
        load(str(tmp_path / "nope"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ValueError, match="Architecture 't5' .* not supported; supported: .*gpt2"):
        load(str(tmp_path))
