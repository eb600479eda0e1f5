"""Modules that compute attention inside (BLOOM) run attnlab's forward only inside ``attach``, and get their own
back afterwards, also when the block raises."""

import pytest
import torch
import transformers as tf

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.hooks.module_adapters import ADAPTERS


def _bloom():
    torch.manual_seed(0)
    cfg = tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    return tf.BloomForCausalLM(cfg).eval()


def test_bloom_runs_the_adapter_inside_attach_only():
    model = _bloom()
    attn = model.transformer.h[0].self_attention
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with attach(model, Capture(stats=True)) as rec:
            assert attn.forward.__func__ is ADAPTERS["bloom.BloomAttention"]
            model(input_ids=ids)
        assert "forward" not in attn.__dict__ and rec.trace().meta.causal
        with pytest.raises(RuntimeError, match="inside"):
            with attach(model, Capture(stats=True)):
                raise RuntimeError("inside")
        assert "forward" not in attn.__dict__
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
