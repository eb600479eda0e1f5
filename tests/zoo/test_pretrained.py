"""Loading is quiet: no transformers LOAD REPORT table, one plain line only when weights are missing."""

from __future__ import annotations

import logging

import torch
import transformers as tf

from attnlab.zoo import load
from attnlab.zoo.pretrained import load_pretrained


def _tiny_llama_config() -> tf.LlamaConfig:
    return tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def test_zoo_loads_print_nothing(capfd):
    load("toy-vit")  # a backbone loaded from a classifier checkpoint: unused head weights
    load("minilm")
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "\x1b[" not in out + err, err[-500:]
    assert "Loading weights" not in err


def test_missing_weights_are_named_in_one_plain_line(tmp_path, caplog, capfd):
    torch.manual_seed(0)
    base = tf.LlamaModel(_tiny_llama_config())  # no lm_head: a LLaMA checkpoint without its head
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="attnlab.zoo.pretrained"):
        model = load_pretrained(tf.LlamaForCausalLM, tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.name == "attnlab.zoo.pretrained"]
    assert len(lines) == 1 and "lm_head.weight" in lines[0] and "randomly initialised" in lines[0]
    assert "\n" not in lines[0]
    _, err = capfd.readouterr()
    assert "LOAD REPORT" not in err
    # the weights that were present did load: the backbone equals the saved one
    torch.testing.assert_close(model.model.embed_tokens.weight, base.embed_tokens.weight)
    assert not model.training
