"""Train toy-llava and toy-llava-deep, and measure for their cards what attention does in them.

Training, evaluation and the card's POPE/CHAIR numbers are :func:`attnlab.zoo.train_llava.train_toy_llava`; this
recipe adds what needs the probes: whether attention sinks, visual sink tokens and massive activations emerge
(:mod:`attnlab.recipes.lvlm_emergence`), written into ``card.json`` (``emergence``) and the README.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from attnlab.zoo.load import load
from attnlab.zoo.registry import CHECKPOINTS
from attnlab.zoo.train_llava import DEEP_CONFIG, ToyLlavaConfig, recorded_world, train_toy_llava, write_readme

from .lvlm_emergence import N_PROMPTS, emergence_findings, measure_emergence


def add_emergence(checkpoint: str | Path) -> dict:
    """Measure emergence on a trained toy LVLM and add it to its card and README (each file replaced atomically).

    Args:
        checkpoint: the model directory (with ``card.json`` from :func:`train_toy_llava`).

    Returns:
        The updated card.
    """
    checkpoint = Path(checkpoint)
    card = json.loads((checkpoint / "card.json").read_text())
    model, processor, spec = load(str(checkpoint))
    world = recorded_world(card, split="test")
    images = {s.image_id: s.image for s in world.scenes}
    questions = world.pope["random"][:N_PROMPTS]
    found = measure_emergence(model, processor, spec, [images[q["image_id"]] for q in questions],
                              [q["text"] for q in questions])
    card["emergence"] = {**found, "findings": emergence_findings(card["name"], found)}
    tmp = checkpoint / ".card.json.tmp"
    tmp.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, checkpoint / "card.json")
    staging = checkpoint / ".readme"
    staging.mkdir(exist_ok=True)
    write_readme(staging, card)
    os.replace(staging / "README.md", checkpoint / "README.md")
    staging.rmdir()
    return card


def _train(out_dir: str | Path, config: ToyLlavaConfig, name: str, seed: int, progress: bool) -> dict:
    train_toy_llava(out_dir, config, seed=seed, progress=progress, name=name,
                    trainer=f"attnlab.recipes.toy_llava:{'train' if name == 'toy-llava' else 'train_deep'}")
    return add_emergence(out_dir)


def train(out_dir: str | Path = CHECKPOINTS / "toy-llava", seed: int = 0, progress: bool = True) -> dict:
    """Reproduce the zoo's toy-llava (3 decoder layers): train, evaluate, measure emergence; returns the card."""
    return _train(out_dir, ToyLlavaConfig(), "toy-llava", seed, progress)


def train_deep(out_dir: str | Path = CHECKPOINTS / "toy-llava-deep", seed: int = 0, progress: bool = True) -> dict:
    """Reproduce the zoo's toy-llava-deep (:data:`~attnlab.zoo.train_llava.DEEP_CONFIG`); returns the card."""
    return _train(out_dir, DEEP_CONFIG, "toy-llava-deep", seed, progress)
