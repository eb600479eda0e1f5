"""toy-llava-deep: deep enough for the interventions' rules, and still hallucinating co-occurring partners.

Oracles: fresh greedy answers on the held-out split (the card's numbers reproduce within binomial noise), the
toy world's planted pairs (absent partners draw more false "yes" than other absent objects), and the papers'
layer rules written out by hand for 8 layers.
"""

import pytest

from attnlab.evals.answer import generate_answers
from attnlab.evals.pope import parse_pope_answer
from attnlab.interventions.var import var_layers
from attnlab.probes.vhd import vhr_layers
from attnlab.zoo import load
from attnlab.zoo.registry import CHECKPOINTS, card
from attnlab.recipes.toy_llava import partner_false_yes
from attnlab.zoo.toy_llava import DEEP_CONFIG, recorded_world

NAME = "toy-llava-deep"
QUESTIONS_PER_SPLIT = 60
TOLERANCE = 0.08  # two binomial standard errors of 60 answers at 90 % accuracy


@pytest.fixture(scope="module")
def facts():
    data = card(NAME)
    assert data, f"no card.json in {CHECKPOINTS / NAME}; train with `attnlab zoo train {NAME}`"
    return data


def test_card_architecture_budget_and_hallucination(facts):
    arch, metrics = facts["architecture"], facts["metrics"]
    assert (arch["text_layers"], arch["text_heads"]) == (DEEP_CONFIG.text_layers, DEEP_CONFIG.text_heads) == (8, 8)
    assert facts["trainer"] == "attnlab.recipes.toy_llava:train_deep" and facts["steps"] == DEEP_CONFIG.steps
    assert facts["train_time_s"] < 30 * 60  # the training budget on this machine
    assert sum(f.stat().st_size for f in (CHECKPOINTS / NAME).iterdir()) < 12 * 2**20
    assert metrics["pope_random_accuracy"] >= 0.85
    assert metrics["pope_adversarial_accuracy"] < metrics["pope_random_accuracy"] - 0.02  # leans on the prior
    assert metrics["pope_adversarial_absent_partner_false_yes"] > metrics["pope_adversarial_other_absent_false_yes"]
    assert {"chair_s", "chair_i", "caption_recall"} <= set(metrics)


def test_the_rules_select_proper_subsets_at_this_depth(facts):
    layers = facts["architecture"]["text_layers"]
    assert vhr_layers(layers) == (1, 4, 5, 6, 7) and var_layers(layers) == (1, 2, 3, 4, 5, 6)


def test_held_out_answers_keep_the_card(facts):
    model, proc, spec = load(NAME)
    assert spec.n_layers == 8 and spec.n_heads == 8
    world = recorded_world(facts, "test")
    images = {s.image_id: s.image for s in world.scenes}
    accuracy = {}
    for split in ("random", "adversarial"):
        questions = world.pope[split][:QUESTIONS_PER_SPLIT]
        answers = generate_answers(model, proc, spec, [images[q["image_id"]] for q in questions],
                                   [q["text"] for q in questions], max_new_tokens=3)
        assert set(answers) <= {"Yes", "No"}
        accuracy[split] = sum(parse_pope_answer(a) == q["label"] for a, q in zip(answers, questions)) / len(questions)
        if split == "adversarial":
            rates = partner_false_yes(world, questions, answers)
            assert rates["absent_partner_false_yes"] > rates["other_absent_false_yes"]
    assert accuracy["random"] >= facts["metrics"]["pope_random_accuracy"] - TOLERANCE
    assert accuracy["adversarial"] >= facts["metrics"]["pope_adversarial_accuracy"] - TOLERANCE
