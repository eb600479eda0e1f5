"""ACT on toy-gpt's IOI task: the search keeps exactly the heads that beat the plain model on calibration.

References: the zoo's own batched IOI evaluator (no hooks) for the baseline, and the sink probe
(:func:`attnlab.probes.sinks.sink_tokens`, a separate numpy implementation of the detection) for which heads
have hidden sinks: a head with none on every calibration prompt gets an empty sink set, so its ACT trial
must score exactly the baseline, and a head with some must move the score.

Measured (8 calibration prompts of 14-16 tokens): at the default cutoff (score > max(0.1, 5/N)) only head 2.1
has a hidden sink on some prompt and no head beats the baseline; the released rule (score > 0.1) flags 4-8
ordinary tokens in every head, so every trial moves the score.
"""

import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.zoo.registry import card

N_CALIBRATION, CALIBRATION_SEED, N_TEST, TEST_SEED = 8, 101, 8, 202


@pytest.fixture(scope="module")
def toy_gpt():
    from attnlab.zoo import load

    if not card("toy-gpt"):
        pytest.fail("toy-gpt checkpoint missing: `attnlab zoo train toy-gpt`")
    return load("toy-gpt")


def heads_with_hidden_sinks(model, tok, layers, rule) -> set[str]:
    """``layer.head`` names the sink probe finds a hidden sink in, on any calibration prompt."""
    from attnlab.probes.sinks import sink_tokens
    from attnlab.zoo.toy_gpt import heldout_ioi_prompts

    found = set()
    for p in heldout_ioi_prompts(N_CALIBRATION, seed=CALIBRATION_SEED):
        with torch.no_grad(), attach(model, Capture(stats=True), tokenizer=tok) as rec:
            model(**tok([p.text], return_tensors="pt"))
        result = sink_tokens(rec.trace(), rule=rule, hidden=True, layers=layers)
        for li, layer in enumerate(result.layers):
            found |= {f"{layer}.{h}" for h in range(result.is_sink.shape[2]) if result.is_sink[li, 0, h].any()}
    return found


@pytest.mark.parametrize("rule", ["act_relative", "act"])
def test_act_on_toy_gpt_ioi(toy_gpt, rule):
    from attnlab.interventions.act_text import act_on_ioi
    from attnlab.zoo.toy_gpt import heldout_ioi_prompts, ioi_logit_diffs

    model, tok, spec = toy_gpt
    result = act_on_ioi(model, tok, n_calibration=N_CALIBRATION, n_test=N_TEST, calibration_seed=CALIBRATION_SEED,
                        test_seed=TEST_SEED, rule=rule)
    search = result["search"]
    base = search["baseline_score"]
    assert search["rule"] == rule
    better = {h for h, s in search["head_scores"].items() if s > base}
    assert set(result["heads"]) == better
    assert len(search["head_scores"]) == (spec.n_layers - 2) * spec.n_heads
    with torch.no_grad():
        reference = ioi_logit_diffs(model, tok, heldout_ioi_prompts(N_TEST, seed=TEST_SEED))  # batched, no hooks
    assert result["baseline"]["mean_logit_diff"] == pytest.approx(reference.mean().item(), abs=1e-4)
    assert result["baseline"]["accuracy"] == pytest.approx((reference > 0).float().mean().item())
    with_sinks = heads_with_hidden_sinks(model, tok, search["layers"], rule)
    for head, score in search["head_scores"].items():
        if head in with_sinks:
            assert abs(score - base) > 1e-6, head
        else:
            assert score == pytest.approx(base, abs=1e-5), head
    if rule == "act":  # the released rule flags ordinary tokens in every head of these short prompts
        assert with_sinks == set(search["head_scores"])
    if not result["heads"]:
        assert result["act"] == result["baseline"]
