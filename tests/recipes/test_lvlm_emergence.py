"""The emergence numbers of the toy LVLM cards: reproducible, and the same detectors fire on a planted control."""

from __future__ import annotations

import json

import pytest

from attnlab.recipes.lvlm_emergence import N_PROMPTS, emergence_findings, measure_emergence
from attnlab.zoo.registry import card
from attnlab.zoo.toy_llava import recorded_world

RED_CIRCLE = "Is there a red circle in the image?"


@pytest.mark.parametrize("name", ["toy-llava", "toy-llava-deep"])
def test_the_card_reports_what_the_detectors_find(name):
    from attnlab.zoo import load

    facts = card(name)
    assert facts, f"{name} not trained; run `attnlab zoo train {name}`"
    model, proc, spec = load(name)
    world = recorded_world(facts, split="test")
    images = {s.image_id: s.image for s in world.scenes}
    questions = world.pope["random"][:N_PROMPTS]
    found = measure_emergence(model, proc, spec, [images[q["image_id"]] for q in questions],
                              [q["text"] for q in questions])
    stored = {k: v for k, v in facts["emergence"].items() if k != "findings"}
    assert _close(json.loads(json.dumps(found)), stored), (found, stored)
    assert facts["emergence"]["findings"] == emergence_findings(name, found)


def _close(a, b, tol=1e-4) -> bool:
    """Nested equality with a float tolerance (the pass may run on another BLAS)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return a == b


def test_a_planted_visual_sink_is_reported(planted_llava):
    """toy-llava's "no massive activations, no visual sinks" beside the same code finding planted ones."""
    model, proc, spec, _, positions, planting = planted_llava
    from attnlab.zoo.world import generate_world

    images = [s.image for s in generate_world(2, seed=0, start=5700).scenes]
    clean = measure_emergence(model, proc, spec, images, [RED_CIRCLE] * 2)
    with planting():
        found = measure_emergence(model, proc, spec, images, [RED_CIRCLE] * 2)
    assert clean["massive"]["paper_thresholds_count"] == 0 and clean["visual_sinks"]["visual_sink_tokens_relative_only"] == 0
    assert set(planting.dims) <= set(found["massive"]["relative_only_dims"])
    assert set(planting.dims) <= set(found["visual_sinks"]["dims_paper_thresholds"])
    # two planted tokens per prompt, in the hidden state entering every scanned layer (2 .. L-1 of toy-llava's 3)
    assert found["visual_sinks"]["visual_sink_tokens_paper_thresholds"] == 2 * 2 * 1
    assert found["massive"]["max_top_over_median"] >= 1000
