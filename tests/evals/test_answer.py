"""The one answer generator: a batch gives each prompt what it gives alone, with and without a Plan."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnlab.evals.answer import generate_answers
from attnlab.kernels.plan import LayerPlan, Plan, Reweight
from attnlab.zoo import load

PROMPTS = ["is there a cat ?", "please describe the image in great detail now"]


@pytest.fixture(scope="module")
def llava(tiny_dir):
    return load(str(tiny_dir("llava")))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in PROMPTS]


def _image_plan(n_layers: int) -> Plan:
    """Keep 30% of the attention on image tokens, for the rows after the image (VAR's query set)."""
    return Plan({i: LayerPlan(reweight=Reweight("image", 0.3, queries="after_image")) for i in range(n_layers)})


@pytest.mark.parametrize("planned", [False, True])
def test_a_batch_answers_each_prompt_as_alone(llava, images, planned):
    model, proc, spec = llava
    assert proc.tokenizer.padding_side == "right"  # the tiny checkpoint pads right: the generator must pad left
    plan = _image_plan(spec.n_layers) if planned else None
    both = generate_answers(model, proc, spec, images, PROMPTS, max_new_tokens=6, plan=plan)
    alone = [generate_answers(model, proc, spec, [im], [p], max_new_tokens=6, plan=plan)[0]
             for im, p in zip(images, PROMPTS)]
    assert both == alone
    assert proc.tokenizer.padding_side == "right"  # restored


def test_the_plan_acts_on_the_rows_after_the_image(llava, images):
    model, proc, spec = llava
    base = generate_answers(model, proc, spec, images, PROMPTS, max_new_tokens=6)
    planned = generate_answers(model, proc, spec, images, PROMPTS, max_new_tokens=6, plan=_image_plan(spec.n_layers))
    assert base != planned


def test_one_image_per_prompt(llava, images):
    model, proc, spec = llava
    with pytest.raises(ValueError, match="one image per prompt"):
        generate_answers(model, proc, spec, images[:1], PROMPTS, max_new_tokens=2)
