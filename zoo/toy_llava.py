"""toy-llava and toy-llava-deep, the model and its data: a small LLaVA (CLIP vision + projector + LLaMA) for
toy-world captions and yes/no questions.

The model sees 64x64 toy-world scenes as 8x8 = 64 patch tokens and learns two tasks (see
:mod:`attnlab.zoo.llava_data`): describing the image and answering POPE's "Is there a {object} in the
image?". Its training data keeps the world's co-occurrence prior, so it is good on POPE's random split
and measurably worse on the adversarial one: the hallucination gap the intervention methods try to close.

Scenes come from one toy world split by index: train, calibration (kept for intervention calibration,
never trained or tested on) and test (every metric on the card). Training, evaluation and the cards are
:mod:`attnlab.recipes.toy_llava`.

Example:
    >>> from attnlab.zoo import load  # doctest: +SKIP
    >>> from attnlab.zoo.registry import card  # doctest: +SKIP
    >>> model, proc, spec = load("toy-llava")  # doctest: +SKIP
    >>> world = recorded_world(card("toy-llava"), "test")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.evals.benchmark import BenchmarkFiles
from attnlab.zoo.world import DEFAULT_PAIRS, World, WorldConfig, generate_world, split_ranges
from attnlab.zoo.world_files import benchmark_files, write_world

from .llava_data import TaskMix


@dataclass(frozen=True)
class ToyLlavaConfig:
    """Everything that fixes a toy-llava run besides the seed.

    Attributes:
        world_images: scenes in the world, split by index into train / calibration / test.
        split_fractions: shares of the three index ranges; the held-out ranges are disjoint from training.
        world_seed: seed of the world; kept apart from the training seed so the ranges mean the same
            scenes whatever the training seed.
        pair_rate: P(partner | anchor) of the world's four co-occurring pairs: the prior to hallucinate from.
        mix: how a scene's examples are drawn (caption share, questions, weight of absent-partner questions).
        vision_hidden: CLIP width; colour and shape of 8 px patches need little.
        vision_layers: CLIP depth.
        vision_heads: CLIP heads.
        text_hidden: LLaMA width.
        text_layers: LLaMA depth; several layers so attention analyses have a stack to look at.
        text_heads: LLaMA query heads (and key/value heads: no grouping at this size).
        mlp_ratio: MLP width over model width in both towers; 2 keeps steps cheap on a CPU.
        steps: optimiser steps; sized to fit the 10-minute CPU budget.
        batch_size: scenes (packed rows) per step; each row holds ``mix``'s caption and questions.
        lr: AdamW peak learning rate, reached after ``warmup`` steps, then cosine to 10 %.
        warmup: linear warm-up steps.
        weight_decay: AdamW decoupled weight decay.
        grad_clip: gradient-norm clip; keeps early steps of a fresh transformer stable.
        threads: torch CPU threads. One: on a shared 2-core machine a second thread spent more time
            spinning than computing (4x the CPU time per step), and results may depend on the count.
        caption_tokens: most new tokens when captioning; the longest caption has 22.
        eval_batch: prompts per generation call.
    """

    world_images: int = 6000
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    world_seed: int = 0
    pair_rate: float = 0.8
    mix: TaskMix = field(default_factory=TaskMix)
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    mlp_ratio: int = 2
    steps: int = 1400
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 1
    caption_tokens: int = 28
    eval_batch: int = 128

    def world_config(self) -> WorldConfig:
        """The toy world with this run's pair rate."""
        return WorldConfig(pairs=tuple((a, b, self.pair_rate) for a, b, _ in DEFAULT_PAIRS))

    def ranges(self) -> dict[str, range]:
        """Index ranges of the train, calibration and test scenes."""
        return split_ranges(self.world_images, self.split_fractions)


#: toy-llava-deep: deep enough that the interventions' layer and head rules pick a proper subset (8 decoder layers
#: of 8 heads), the rest as toy-llava; more steps for the deeper stack, in about 25 minutes on one CPU thread.
DEEP_CONFIG = ToyLlavaConfig(text_layers=8, text_heads=8, steps=2000, warmup=200)


def held_out_world(config: ToyLlavaConfig, split: str = "test") -> World:
    """The scenes of one index range (``train``, ``calibration`` or ``test``), with POPE questions built over them."""
    ranges = config.ranges()
    if split not in ranges:
        raise ValueError(f"split must be one of {tuple(ranges)}, got {split!r}")
    r = ranges[split]
    return generate_world(len(r), config.world_seed, config.world_config(), start=r.start)


def recorded_world(card: dict, split: str = "test") -> World:
    """The scenes of an index range as a trained model's card records them (world seed, pairs, range).

    Args:
        card: the model's ``card.json`` as a dict (e.g. ``attnlab.zoo.registry.card("toy-llava")``).
        split: ``train``, ``calibration`` or ``test``.

    Returns:
        The :class:`World` of that range, with POPE questions built over its scenes.
    """
    data = card["data"]
    recorded = _recorded_split(data, split)
    if recorded is None:
        raise ValueError(f"split must be one of {tuple(data.get('ranges', ()))}, got {split!r}")
    n_images, seed, config, start = recorded
    return generate_world(n_images, seed, config, start=start)


def _recorded_split(data: dict, split: str) -> tuple[int, int, WorldConfig | None, int] | None:
    """``(n_images, world_seed, config, start)`` of a split a card's ``data`` records (the world's pairs, when the
    card names them), or ``None`` when it records no such split."""
    if split not in data.get("ranges", {}) or "world_seed" not in data:
        return None
    start, stop = data["ranges"][split]
    config = WorldConfig(pairs=tuple(tuple(p) for p in data["pairs"])) if "pairs" in data else None
    return stop - start, data["world_seed"], config, start


def toy_dataset(spec, folder: Path, split: str = "test") -> BenchmarkFiles:
    """Write (once) the held-out toy-world scenes of a zoo LVLM's card and describe them as BenchmarkFiles.

    The card's ``data`` entry gives the world seed, the co-occurrence pairs and the index range of each split
    (``ranges``), so the scenes are exactly the ones the model never saw in training (as :func:`recorded_world`).

    Args:
        spec: the model's ModelSpec (its ``path`` holds ``card.json``).
        folder: where the scenes are written (``folder/toy-world-<split>``; reused when already there).
        split: ``test`` or ``calibration`` (or ``train``).

    Raises:
        ValueError: the model has no card, or its card names no such split; the message names the flags to give.
    """
    card_file = Path(spec.path) / "card.json"
    if not card_file.exists():
        raise ValueError(f"{spec.name} has no card.json with toy-world splits; give --questions and --images")
    recorded = _recorded_split(json.loads(card_file.read_text()).get("data", {}), split)
    if recorded is None:
        raise ValueError(f"{spec.name}'s card names no toy-world '{split}' split; give --questions and --images")
    n_images, seed, config, start = recorded
    target = Path(folder) / f"toy-world-{split}"
    if not (target / "world.json").exists():
        write_world(target, n_images, seed, config, start=start)
    return benchmark_files(target)


def build_model(config: ToyLlavaConfig, tokenizer, image_size: int = 64, patch_size: int = 8):
    """A freshly initialised ``LlavaForConditionalGeneration`` sized by ``config`` (seed torch first)."""
    from transformers import (CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    vision = CLIPVisionConfig(hidden_size=config.vision_hidden, num_hidden_layers=config.vision_layers,
                              num_attention_heads=config.vision_heads,
                              intermediate_size=config.mlp_ratio * config.vision_hidden,
                              image_size=image_size, patch_size=patch_size, projection_dim=config.vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.text_hidden,
                       intermediate_size=config.mlp_ratio * config.text_hidden,
                       num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
                       num_key_value_heads=config.text_heads, max_position_embeddings=128,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False,
                                               max_new_tokens=config.caption_tokens)
    return model
