"""Real-model check: the pretrained MiniLM parks attention on special tokens (Clark et al. 2019).

In BERT-base Clark et al. found heads attending to [SEP]/[CLS]; in all-MiniLM-L6-v2 the sink is [CLS].
The probe must recover that: [CLS] is a sink in most heads and the special tokens absorb several times
their uniform share of attention in the middle layers.
"""

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.probes.sinks import sink_tokens

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, they said in 2017.",
    "Paris is the capital of France and its largest city.",
    "She sold the old car because it kept breaking down on the highway.",
]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_minilm_sinks_are_special_tokens(minilm, sentence):
    model, tok, _ = minilm
    with torch.no_grad(), attach(model, Capture(pattern=True, stats=True), tokenizer=tok) as rec:
        model(**tok([sentence], return_tensors="pt"))
    trace = rec.trace()
    result = sink_tokens(trace, rule="relative", alpha=3.0)
    frame = result.to_frame()
    n_heads = trace.meta.n_layers * trace.meta.n_heads
    cls_heads = int((frame["token"] == "[CLS]").sum())
    assert cls_heads >= 0.75 * n_heads  # [CLS] is a sink in most of the 72 heads
    top = result.token_summary().sort_values("n_heads", ascending=False).iloc[0]
    assert top["token"] == "[CLS]" and top["category"] == "initial" and top["mean_mass"] > 0.4
    n = len(trace.tokens[0])
    uniform = 2 / n
    special = np.array([trace.layer(i).stats["mass.special"][0].mean().item() for i in range(1, 5)])
    assert (special > 3 * uniform).all(), (special, uniform)
