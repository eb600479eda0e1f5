"""toy-gpt: the shipped checkpoint loads offline, copies repeated sequences, solves held-out IOI,
runs under TransformerLens and under attnlab capture.

Oracles: the entropy of uniform random tokens (no model predicts the first copy better), the Hugging
Face forward pass (for TransformerBridge and capture), and eager attention's defining properties
(rows sum to one, nothing attends to the future). Evaluation samples use a seed the card did not use.
"""

import math
from pathlib import Path

import pytest
import torch

from attnlab.zoo import load
from attnlab.zoo.registry import card, trainer
from attnlab.zoo.toy_gpt import (HELDOUT_TEMPLATES, INDUCTION_WORDS, TRAIN_TEMPLATES, heldout_ioi_prompts,
                                 induction_losses, ioi_logit_diffs, name_pairs)

TEST_SEED = 123  # the card's evaluation used seed 0: these samples are fresh


@pytest.fixture(scope="module")
def toy_gpt():
    return load("toy-gpt")


@pytest.fixture(scope="module")
def gpt_card():
    facts = card("toy-gpt")
    assert facts, "zoo/checkpoints/toy-gpt/card.json is missing; train it with `attnlab zoo train toy-gpt`"
    return facts


def test_loads_offline_with_spec_and_is_deterministic(toy_gpt, gpt_card):
    model, tok, spec = toy_gpt
    assert (spec.family, spec.causal) == ("gpt2", True)
    assert (spec.n_layers, spec.n_heads) == (gpt_card["architecture"]["n_layer"], gpt_card["architecture"]["n_head"])
    enc = tok("When Mary and John went to the store , John gave a drink to", return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"][0].tolist()
    with torch.no_grad():
        a, b = model(**enc).logits, model(**enc).logits
    assert torch.equal(a, b)


def test_card_and_model_card_are_complete(gpt_card):
    for key in ("metrics", "architecture", "data", "steps", "seed", "wall_time_s", "threads"):
        assert key in gpt_card
    assert all(isinstance(v, float) for v in gpt_card["metrics"].values())
    readme = (Path(gpt_card["path"]) / "README.md").read_text()
    for word in ("Architecture", "Data", "Training", "Metrics", "wall_time_s", "seed"):
        assert word in readme


def test_heldout_name_pairs_and_templates_are_unseen():
    train, held = name_pairs()
    assert held and not set(train) & set(held)
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    for p in heldout_ioi_prompts(64, seed=TEST_SEED):
        assert tuple(sorted((p.io, p.s))) in {tuple(sorted(q)) for q in held}
        assert p.text.split().count(p.s) == 2 and p.text.split().count(p.io) == 1


def test_second_copy_loss_far_below_first(toy_gpt, gpt_card):
    model, tok, _ = toy_gpt
    res = induction_losses(model, tok, n=64, length=15, seed=TEST_SEED)
    # No predictor beats the entropy of uniform tokens on the first copy (up to sampling noise).
    assert res["first"] > math.log(len(INDUCTION_WORDS)) - 0.15
    assert res["ratio"] <= gpt_card["thresholds"]["induction_loss_ratio_max"]


def test_ioi_logit_difference_positive_on_heldout_pairs(toy_gpt, gpt_card):
    model, tok, _ = toy_gpt
    diffs = ioi_logit_diffs(model, tok, heldout_ioi_prompts(128, seed=TEST_SEED))
    assert (diffs > 0).float().mean() >= gpt_card["thresholds"]["ioi_positive_fraction_min"]


def test_ioi_logit_diff_matches_a_manual_forward(toy_gpt):
    model, tok, _ = toy_gpt
    p = heldout_ioi_prompts(2, seed=TEST_SEED)[0]
    ids = tok(p.text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = model(ids).logits[0, -1]
    expected = last[tok.convert_tokens_to_ids(p.io)] - last[tok.convert_tokens_to_ids(p.s)]
    assert ioi_logit_diffs(model, tok, [p])[0].item() == pytest.approx(expected.item(), abs=1e-4)


def test_transformer_bridge_matches_hf_logits(toy_gpt):
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    model, tok, spec = toy_gpt
    bridge = bridge_mod.TransformerBridge.boot_transformers(spec.path, device="cpu")
    ids = tok("Alice and Bob went to the park . Bob passed a ball to", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf = model(ids).logits
        tl = bridge(ids)
    assert tl.shape == hf.shape
    torch.testing.assert_close(tl, hf, atol=1e-4, rtol=0)


def test_plain_transformers_loads_it_offline(gpt_card):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = gpt_card["path"]
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    base = AutoModel.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert type(lm).__name__ == "GPT2LMHeadModel" and type(base).__name__ == "GPT2Model"
    assert tok("Mary")["input_ids"] == [tok.bos_token_id, tok.convert_tokens_to_ids("Mary")]


def test_capture_records_causal_patterns_without_changing_logits(toy_gpt):
    from attnlab.core.capture import Capture
    from attnlab.hooks import attach

    model, tok, spec = toy_gpt
    enc = tok("When Kate and Paul went to the beach , Paul gave a gift to", return_tensors="pt")
    with torch.no_grad():
        plain = model(**enc).logits
        with attach(model, Capture(pattern=True), tokenizer=tok) as rec:
            captured = model(**enc).logits
    trace = rec.trace()
    n = enc["input_ids"].shape[1]
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=0)
    for layer in range(spec.n_layers):
        pattern = trace.layer(layer).pattern  # (B, H, Q, K)
        assert pattern.shape == (1, spec.n_heads, n, n)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(1, spec.n_heads, n))
        assert pattern.triu(1).abs().max() == 0


def test_checkpoint_is_small(gpt_card):
    assert gpt_card["checkpoint_bytes"] < 4_000_000


@pytest.mark.slow
def test_training_runs_end_to_end_and_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from attnlab.zoo.toy_gpt import ToyGPTConfig
    from attnlab.zoo.training import Schedule

    config = ToyGPTConfig(n_layer=2, d_model=32, d_mlp=64, batch_size=8, ioi_batch_size=4,
                          schedule=Schedule(steps=4, warmup=2), eval_sequences=8, eval_prompts=8)
    train = trainer("toy-gpt")
    first = train(tmp_path / "a", seed=1, progress=False, config=config)
    second = train(tmp_path / "b", seed=1, progress=False, config=config)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "card.json", "README.md"):
        assert (tmp_path / "a" / name).exists()
    assert first["metrics"] == second["metrics"] and first["steps"] == 4
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    model, _, spec = load(str(tmp_path / "a"))
    assert spec.n_layers == 2
