"""toy-llava: the committed checkpoint loads offline, answers deterministically, keeps its card's POPE
accuracy on held-out scenes, and its Traces mark the image; retraining is reproducible (slow)."""

import json

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.evals.answer import generate_answers
from attnlab.evals.pope import parse_pope_answer
from attnlab.hooks import attach
from attnlab.zoo import load
from attnlab.zoo.llava_data import CAPTION_PROMPT, PromptCache, encode_rows, pixel_values, sample_row
from attnlab.zoo.registry import CHECKPOINTS, card
from attnlab.recipes.toy_llava import partner_false_yes, train_toy_llava
from attnlab.zoo.toy_llava import ToyLlavaConfig, recorded_world

PATH = CHECKPOINTS / "toy-llava"
QUESTIONS_PER_SPLIT = 60
#: Binomial standard error of 60 answers at 90 % accuracy is about 0.04; two of them.
TOLERANCE = 0.08


@pytest.fixture(scope="module")
def toy_llava():
    return load("toy-llava")


@pytest.fixture(scope="module")
def facts():
    data = card("toy-llava")
    assert data, f"no card.json in {PATH}; train with `attnlab zoo train toy-llava`"
    return data


@pytest.fixture(scope="module")
def test_world(facts):
    world = recorded_world(facts, "test")
    start, stop = facts["data"]["ranges"]["test"]
    assert (world.scenes[0].index, world.scenes[-1].index) == (start, stop - 1)
    return world


def test_card_records_metrics_and_disjoint_ranges(facts):
    assert {"metrics", "architecture", "data", "steps", "seed", "wall_time_s", "threads"} <= set(facts)
    assert all(isinstance(v, float) for v in facts["metrics"].values())
    assert facts["data"]["ranges"] == {k: [r.start, r.stop] for k, r in ToyLlavaConfig().ranges().items()}
    spans = sorted(tuple(r) for r in facts["data"]["ranges"].values())
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert facts["metrics"]["pope_random_accuracy"] >= 0.85
    assert facts["metrics"]["pope_adversarial_accuracy"] < facts["metrics"]["pope_random_accuracy"] - 0.02
    assert sum(f.stat().st_size for f in PATH.iterdir()) < 12 * 2**20


def test_loads_offline_with_plain_transformers():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(PATH, local_files_only=True)
    proc = AutoProcessor.from_pretrained(PATH, local_files_only=True)
    inputs = proc(images=[np.full((64, 64, 3), 96, np.uint8)], text=["<image> Describe the image."],
                  return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(proc.tokenizer)


def test_generation_is_deterministic(toy_llava, test_world):
    model, proc, spec = toy_llava
    assert spec.family == "llava" and spec.image_token_id == model.config.image_token_id
    images = [s.image for s in test_world.scenes[:4]]
    first = generate_answers(model, proc, spec, images, [CAPTION_PROMPT] * 4, max_new_tokens=28)
    again = generate_answers(model, proc, spec, images[::-1], [CAPTION_PROMPT] * 4, max_new_tokens=28)
    assert first == again[::-1]
    assert all(t.endswith(".") for t in first)


def test_held_out_pope_accuracy_keeps_the_card(toy_llava, test_world, facts):
    model, proc, spec = toy_llava
    images = {s.image_id: s.image for s in test_world.scenes}
    accuracy = {}
    for split in ("random", "popular", "adversarial"):
        questions = test_world.pope[split][:QUESTIONS_PER_SPLIT]
        answers = generate_answers(model, proc, spec, [images[q["image_id"]] for q in questions],
                                   [q["text"] for q in questions], max_new_tokens=3)
        assert set(answers) <= {"Yes", "No"}
        hits = [parse_pope_answer(a) == q["label"] for a, q in zip(answers, questions)]
        accuracy[split] = sum(hits) / len(hits)
    assert accuracy["random"] >= facts["metrics"]["pope_random_accuracy"] - TOLERANCE
    assert accuracy["adversarial"] >= facts["metrics"]["pope_adversarial_accuracy"] - TOLERANCE


def test_partner_false_yes_separates_absent_mates(test_world):
    mate = {"red circle": "blue square", "yellow star": "cyan moon", "pink heart": "white ring",
            "brown arrow": "green triangle"}
    mate |= {b: a for a, b in mate.items()}
    present = {s.image_id: s.names for s in test_world.scenes}
    questions = test_world.pope["adversarial"]
    mates_asked = [any(f" {mate.get(n)} in" in q["text"] for n in present[q["image_id"]]) and q["label"] == "no"
                   for q in questions]
    assert 0 < sum(mates_asked) < sum(q["label"] == "no" for q in questions)
    rates = partner_false_yes(test_world, questions, ["Yes" if m else "No, there is not." for m in mates_asked])
    assert rates == {"absent_partner_false_yes": 1.0, "other_absent_false_yes": 0.0}


def test_packed_training_rows_equal_single_turn_examples(toy_llava, test_world):
    model, proc, _ = toy_llava
    scenes = test_world.scenes[:1]
    rng = np.random.default_rng(0)
    rows = [sample_row(s, test_world.config, ToyLlavaConfig().mix, rng) for s in scenes]
    cache = PromptCache(proc)
    batch = encode_rows(rows, cache)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], pixel_values=pixel_values(proc, scenes)).logits
        at_row = [len(cache.prefix)] * len(rows)
        for b, (scene, row) in enumerate(zip(scenes, rows)):
            for prompt, answer in row:
                enc = proc(images=[scene.image], text=[f"<image> {prompt} {answer}"], return_tensors="pt")
                single = model(**enc).logits[0, len(cache.prefix):]  # (n, V): the segment without <eos>
                torch.testing.assert_close(packed[b, at_row[b]:at_row[b] + len(single)], single,
                                           atol=1e-4, rtol=1e-4)
                at_row[b] += len(single) + 1


def test_capture_during_generation_marks_the_image(toy_llava, test_world):
    model, proc, _ = toy_llava
    inputs = proc(images=[test_world.scenes[0].image], text=["<image> Is there a red circle in the image?"],
                  return_tensors="pt")
    with torch.no_grad(), attach(model, Capture(stats=True), tokenizer=proc.tokenizer) as rec:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    trace = rec.trace()
    images = [s for s in trace.segments[0] if s.kind == "image"]
    assert len(images) == 1 and images[0].grid == (8, 8) and images[0].length == 64
    assert trace.tokens[0][images[0].start] == "<image>" and trace.tokens[0][images[0].start - 1] == "<bos>"
    assert trace.vision is not None and trace.vision.meta.family == "clip_vision_model"
    assert [(s.kind, s.grid) for s in trace.vision.segments[0]] == [("special", None), ("image", (8, 8))]


@pytest.mark.slow
def test_short_retraining_is_reproducible(tmp_path):
    config = ToyLlavaConfig(world_images=80, steps=4, batch_size=4, warmup=2, eval_batch=32)
    cards = [train_toy_llava(tmp_path / name, config, seed=3, progress=False) for name in ("a", "b")]
    for name in ("a", "b"):
        assert {"card.json", "README.md", "config.json", "model.safetensors"} <= {p.name for p in (tmp_path / name).iterdir()}
    # json text compares NaN (no partner question among 4 test scenes) equal to itself
    assert json.dumps(cards[0]["metrics"]) == json.dumps(cards[1]["metrics"])
    assert cards[0]["final_loss"] == cards[1]["final_loss"]
    weights = [load(str(tmp_path / name))[0].state_dict() for name in ("a", "b")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert json.loads((tmp_path / "a" / "card.json").read_text())["data"]["ranges"] == {
        "train": [0, 72], "calibration": [72, 76], "test": [76, 80]}
