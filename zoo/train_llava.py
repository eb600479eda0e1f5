"""Train toy-llava: a small LLaVA (CLIP vision + projector + LLaMA) on toy-world captions and yes/no questions.

The model sees 64x64 toy-world scenes as 8x8 = 64 patch tokens and learns two tasks (see
:mod:`attnlab.zoo.llava_data`): describing the image and answering POPE's "Is there a {object} in the
image?". Its training data keeps the world's co-occurrence prior, so it is good on POPE's random split
and measurably worse on the adversarial one: the hallucination gap the intervention methods try to close.

Scenes come from one toy world split by index: train, calibration (kept for intervention calibration,
never trained or tested on) and test (every metric on the card).

Example:
    >>> from attnlab.zoo import load  # doctest: +SKIP
    >>> model, proc, spec = load("toy-llava")  # doctest: +SKIP
    >>> world = held_out_world(ToyLlavaConfig(), "test")  # doctest: +SKIP
    >>> pope_scores(model, proc, world, per_split=60)["random"].accuracy > 0.8  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.core.atomic import fresh_directory
from attnlab.evals.answer import generate_answers
from attnlab.evals.chair import Synonyms, chair_metrics
from attnlab.evals.pope import PopeMetrics, parse_pope_answer, pope_metrics
from attnlab.evals.pope_build import POPE_SPLITS, POPE_TEMPLATE, pope_question_text
from attnlab.zoo.world import DEFAULT_PAIRS, World, WorldConfig, generate_world, split_ranges, synonyms_text

from .llava_data import (CAPTION_PROMPT, NO, YES, PromptCache, TaskMix, build_processor, encode_rows, pixel_values,
                         sample_row)
from .load import spec_of
from .training import Schedule, torch_threads
from .training import fit as train_loop


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
    if split not in data["ranges"]:
        raise ValueError(f"split must be one of {tuple(data['ranges'])}, got {split!r}")
    start, stop = data["ranges"][split]
    config = WorldConfig(pairs=tuple(tuple(p) for p in data["pairs"]))
    return generate_world(stop - start, data["world_seed"], config, start=start)


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


def answer_loss(model, batch: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens (labels other than -100) of packed rows.

    Args:
        model: the LLaVA model.
        batch: from :func:`~attnlab.zoo.llava_data.encode_rows`.
        pixels: one image per row, ``(B, 3, S, S)``.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], pixel_values=pixels).logits  # (B, N, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())


def schedule_of(config: ToyLlavaConfig) -> Schedule:
    """The optimiser schedule of a run (AdamW, warm-up then cosine to 10 % of the peak)."""
    return Schedule(steps=config.steps, lr=config.lr, warmup=config.warmup, final_lr_frac=0.1,
                    weight_decay=config.weight_decay, grad_clip=config.grad_clip)


def fit(model, processor, world: World, config: ToyLlavaConfig, seed: int, progress: bool,
        name: str = "toy-llava") -> list[float]:
    """Train ``model`` in place on ``world``'s scenes with the zoo's shared loop; the loss of every step."""
    pixels = pixel_values(processor, world.scenes)  # (S, 3, 64, 64)
    cache = PromptCache(processor)
    rng = np.random.default_rng([seed, 1])

    def batch_loss(step: int) -> torch.Tensor:
        idx = rng.integers(len(world.scenes), size=config.batch_size)  # (B,) scenes of this step
        batch = encode_rows([sample_row(world.scenes[i], world.config, config.mix, rng) for i in idx], cache)
        return answer_loss(model, batch, pixels[torch.as_tensor(idx)])

    return train_loop(model, batch_loss, schedule_of(config), desc=name, progress=progress)


def pope_answers(model, processor, world: World, split: str, per_split: int | None = None,
                 batch_size: int = 128) -> tuple[list[dict], list[str]]:
    """The first ``per_split`` questions of a POPE split of ``world`` and the model's greedy raw answers."""
    images = {s.image_id: s.image for s in world.scenes}
    questions = world.pope[split][:per_split]
    answers = generate_answers(model, processor, spec_of(model, "toy-llava"), [images[q["image_id"]] for q in questions],
                               [q["text"] for q in questions], max_new_tokens=3, batch_size=batch_size)
    return questions, answers


def pope_scores(model, processor, world: World, per_split: int | None = None,
                batch_size: int = 128) -> dict[str, PopeMetrics]:
    """POPE metrics per split on ``world``'s questions (the first ``per_split`` of each), POPE's parser on greedy answers."""
    scores = {}
    for split in POPE_SPLITS:
        questions, answers = pope_answers(model, processor, world, split, per_split, batch_size)
        scores[split] = pope_metrics([q["label"] for q in questions], [parse_pope_answer(a) for a in answers])
    return scores


def partner_false_yes(world: World, questions: Sequence[dict], answers: Sequence[str]) -> dict[str, float]:
    """Share of "yes" answers to absent objects, split by whether the object's pair mate is in the image.

    The first is the co-occurrence hallucination the toy world plants; the second the model's other
    false alarms. ``nan`` when a kind of question is missing.
    """
    mates = {a: b for a, b, _ in world.config.pairs} | {b: a for a, b, _ in world.config.pairs}
    named = {pope_question_text(c): c for c in world.config.classes}
    present = {s.image_id: set(s.names) for s in world.scenes}
    said_yes: dict[bool, list[bool]] = {True: [], False: []}
    for q, a in zip(questions, answers):
        if q["label"] == "no":
            said_yes[mates.get(named[q["text"]]) in present[q["image_id"]]].append(parse_pope_answer(a) == "yes")
    rate = {k: float(np.mean(v)) if v else float("nan") for k, v in said_yes.items()}
    return {"absent_partner_false_yes": rate[True], "other_absent_false_yes": rate[False]}


def caption_scores(model, processor, world: World, n: int | None = None, max_new_tokens: int = 28,
                   batch_size: int = 128) -> dict[str, float]:
    """Object recall and precision of greedy captions of the first ``n`` scenes, with CHAIR_s / CHAIR_i.

    Recall is CHAIR's (recalled ground-truth classes / ground-truth classes); precision is the share of
    object mentions that are in the scene, ``1 - CHAIR_i``.
    """
    scenes = world.scenes[:n]
    texts = generate_answers(model, processor, spec_of(model, "toy-llava"), [s.image for s in scenes],
                             [CAPTION_PROMPT] * len(scenes),
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    chair = chair_metrics({s.image_id: t for s, t in zip(scenes, texts)}, world.ground_truth,
                          Synonyms.from_text(synonyms_text(world.config)))
    exact = np.mean([set(d.mentioned) == set(d.ground_truth) for d in chair.details])
    return {"caption_recall": chair.recall, "caption_precision": 1.0 - chair.chair_i, "chair_s": chair.chair_s,
            "chair_i": chair.chair_i, "caption_exact_match": float(exact), "caption_mean_length": chair.mean_length}


def evaluate(model, processor, world: World, config: ToyLlavaConfig) -> dict[str, float]:
    """The card's metrics on a held-out world: POPE per split, the partner hallucination, caption quality."""
    metrics: dict[str, float] = {}
    for split in POPE_SPLITS:
        questions, answers = pope_answers(model, processor, world, split, batch_size=config.eval_batch)
        m = pope_metrics([q["label"] for q in questions], [parse_pope_answer(a) for a in answers])
        metrics |= {f"pope_{split}_{k}": float(getattr(m, k)) for k in ("accuracy", "f1", "precision", "recall",
                                                                          "yes_ratio")}
        if split == "adversarial":
            metrics |= {f"pope_adversarial_{k}": v for k, v in partner_false_yes(world, questions, answers).items()}
    metrics["pope_adversarial_gap"] = metrics["pope_random_accuracy"] - metrics["pope_adversarial_accuracy"]
    metrics |= caption_scores(model, processor, world, max_new_tokens=config.caption_tokens,
                              batch_size=config.eval_batch)
    return metrics


def _card(config: ToyLlavaConfig, model, seed: int, metrics: dict, losses: list[float], times: dict,
          name: str = "toy-llava", trainer: str = "attnlab.recipes.toy_llava:train") -> dict:
    ranges = {k: [r.start, r.stop] for k, r in config.ranges().items()}
    arch = {"family": "llava", "vision": "clip_vision_model", "text": "llama", "image_size": 64, "patch_size": 8,
            "image_tokens": 64, "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
            "parameters": sum(p.numel() for p in model.parameters()),
            **{k: getattr(config, k) for k in ("vision_hidden", "vision_layers", "vision_heads", "text_hidden",
                                               "text_layers", "text_heads", "mlp_ratio")}}
    data = {"world": "attnlab.zoo.world", "world_seed": config.world_seed, "world_images": config.world_images,
            "pairs": [list(p) for p in config.world_config().pairs], "ranges": ranges,
            "ranges_note": "half-open [start, stop) scene indices; generate_world(stop - start, world_seed, "
                           "config, start=start) rebuilds a range with its POPE questions",
            "task_mix": asdict(config.mix), "metrics_on": "test"}
    prompts = {"format": "<bos> <image>*64 {prompt} {answer} <eos>; pass the prompt text, <image> is prepended",
               "caption": CAPTION_PROMPT, "pope": "{question}", "question": POPE_TEMPLATE, "answers": [YES, NO],
               "caption_max_new_tokens": config.caption_tokens, "question_max_new_tokens": 3, "decoding": "greedy"}
    return {"name": name, "trainer": trainer, "metrics": metrics, "architecture": arch, "data": data, "prompts": prompts,
            "steps": config.steps, "batch_size": config.batch_size, "lr": config.lr, "seed": seed,
            "threads": config.threads, "final_loss": float(np.mean(losses[-50:])), **times}


_README = """# {name}

A small LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower, MLP projector, LLaMA language model)
trained from scratch on attnlab's toy world by `{trainer}` (seed {seed}).

## Architecture
- vision: CLIP, {a[vision_layers]} layers x {a[vision_heads]} heads, width {a[vision_hidden]};
  64x64 images, 8 px patches: 64 patches + CLS; the CLS is dropped ("default" strategy), so an image is
  {a[image_tokens]} `<image>` tokens in the language model (8x8 grid).
- language: LLaMA, {a[text_layers]} layers x {a[text_heads]} heads, width {a[text_hidden]}; word-level
  vocabulary of the toy world ({a[parameters]:,} parameters in all).

## Prompts
`{p[format]}`
- captioning: `{p[caption]}` -> e.g. `there is a red circle and a blue square.`
- probing: `{p[question]}` (`an` before a vowel) -> `Yes` / `No`
- greedy decoding; {p[caption_max_new_tokens]} new tokens for captions, {p[question_max_new_tokens]} for questions.

## Data
Toy world seed {d[world_seed]}, {d[world_images]} scenes split by index: {ranges}.
Co-occurring pairs, anchor -> partner (P(partner | anchor)): {pairs}.
Each training row packs one scene's examples ({mix}); the loss is on answer tokens only.
The calibration range is for calibrating interventions; it is used neither in training nor in the metrics.

## Results on the test range
| POPE split | accuracy | F1 | yes ratio |
|---|---|---|---|
{pope_rows}

The random - adversarial accuracy gap ({m[pope_adversarial_gap]:.3f}) is the deliberate hallucination: the
model leans on the co-occurrence prior. On the adversarial split it says "Yes" to
{m[pope_adversarial_absent_partner_false_yes]:.0%} of absent objects whose pair mate is in the image, against
{m[pope_adversarial_other_absent_false_yes]:.0%} of other absent objects.

Captions: object recall {m[caption_recall]:.3f}, precision {m[caption_precision]:.3f},
CHAIR_s {m[chair_s]:.3f}, CHAIR_i {m[chair_i]:.3f}, mean length {m[caption_mean_length]:.1f} words.

## Training
{steps} AdamW steps of {batch_size} packed scenes, peak lr {lr}, final loss
{final_loss:.3f}. {threads} CPU thread(s): {train_time_s:.0f} s of training and
{wall_time_s:.0f} s in all by the wall clock, {cpu_time_s:.0f} s of CPU time; the machine was
shared with other jobs, so the wall times are upper bounds.
"""


def write_readme(out_dir: Path, card: dict) -> None:
    """Write the model card ``README.md`` from the card facts."""
    m, d = card["metrics"], card["data"]
    rows = "\n".join(f"| {s} | {m[f'pope_{s}_accuracy']:.3f} | {m[f'pope_{s}_f1']:.3f} | "
                     f"{m[f'pope_{s}_yes_ratio']:.3f} |" for s in POPE_SPLITS)
    text = _README.format(
        **card, m=m, a=card["architecture"], d=d, p=card["prompts"], pope_rows=rows,
        ranges=", ".join(f"{k} [{r[0]}, {r[1]})" for k, r in d["ranges"].items()),
        pairs=", ".join(f"{a} -> {b} ({q})" for a, b, q in d["pairs"]),
        mix=", ".join(f"{k} {v}" for k, v in d["task_mix"].items()))
    if card.get("emergence"):
        text += "\n## Emergent attention phenomena\n" + "".join(f"- {f}\n" for f in card["emergence"]["findings"])
    (out_dir / "README.md").write_text(text, encoding="utf-8")


def train_toy_llava(out_dir: str | Path, config: ToyLlavaConfig, seed: int = 0, progress: bool = True,
                    name: str = "toy-llava", trainer: str = "attnlab.recipes.toy_llava:train") -> dict:
    """Train toy-llava with ``config``, evaluate it on the test range and save checkpoint, card and README.

    Args:
        out_dir: checkpoint directory (created).
        config: the run's :class:`ToyLlavaConfig`.
        seed: seeds the initial weights and the example sampling.
        progress: show a tqdm bar over the steps.
        name: the model's name in the card.
        trainer: ``module:function`` that reproduces the run, recorded in the card.

    Returns:
        The card (also written as ``card.json``).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch_threads(config.threads):
        processor = build_processor(config.world_config(), patch_size=8)
        torch.manual_seed(seed)
        model = build_model(config, processor.tokenizer)
        train_world = held_out_world(config, "train")
        t0 = time.perf_counter()
        losses = fit(model, processor, train_world, config, seed, progress, name)
        train_time = time.perf_counter() - t0
        metrics = evaluate(model, processor, held_out_world(config, "test"), config)
    times = {"train_time_s": train_time, "wall_time_s": time.perf_counter() - start,
             "cpu_time_s": time.process_time() - cpu_start}
    card = _card(config, model, seed, metrics, losses, times, name, trainer)
    with fresh_directory(out_dir) as out:  # the old checkpoint stays until the new one is complete
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
        write_readme(out, card)
    return card
