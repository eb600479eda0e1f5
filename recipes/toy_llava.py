"""Train toy-llava and toy-llava-deep, evaluate them and write their cards (the model and data:
:mod:`attnlab.zoo.toy_llava`).

The card holds POPE per split, the co-occurrence hallucination (:func:`partner_false_yes`), caption quality with
CHAIR, and what needs the probes: whether attention sinks, visual sink tokens and massive activations emerge
(:mod:`attnlab.recipes.lvlm_emergence`), written into ``card.json`` (``emergence``) and the README.

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attnlab.core.atomic import fresh_directory, write_text_atomic
from attnlab.evals.answer import generate_answers
from attnlab.evals.chair import Synonyms, chair_metrics
from attnlab.evals.pope import PopeMetrics, parse_pope_answer, pope_metrics
from attnlab.evals.pope_build import POPE_SPLITS, POPE_TEMPLATE, pope_question_text
from attnlab.zoo.llava_data import (CAPTION_PROMPT, NO, YES, PromptCache, build_processor, encode_rows, pixel_values,
                                    sample_row)
from attnlab.zoo.load import load, spec_of
from attnlab.zoo.registry import CHECKPOINTS
from attnlab.zoo.toy_llava import DEEP_CONFIG, ToyLlavaConfig, build_model, held_out_world, recorded_world
from attnlab.zoo.training import Schedule, torch_threads
from attnlab.zoo.training import fit as train_loop
from attnlab.zoo.world import World
from attnlab.zoo.world_files import synonyms_text

from .lvlm_emergence import N_PROMPTS, emergence_findings, measure_emergence


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


def readme_text(card: dict) -> str:
    """The model card ``README.md`` from the card facts."""
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
    return text


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
        (out / "README.md").write_text(readme_text(card), encoding="utf-8")
    return card


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
    write_text_atomic(checkpoint / "card.json", json.dumps(card, indent=1) + "\n")
    write_text_atomic(checkpoint / "README.md", readme_text(card))
    return card


def _train(out_dir: str | Path, config: ToyLlavaConfig, name: str, seed: int, progress: bool) -> dict:
    train_toy_llava(out_dir, config, seed=seed, progress=progress, name=name,
                    trainer=f"attnlab.recipes.toy_llava:{'train' if name == 'toy-llava' else 'train_deep'}")
    return add_emergence(out_dir)


def train(out_dir: str | Path = CHECKPOINTS / "toy-llava", seed: int = 0, progress: bool = True) -> dict:
    """Reproduce the zoo's toy-llava (3 decoder layers): train, evaluate, measure emergence; returns the card."""
    return _train(out_dir, ToyLlavaConfig(), "toy-llava", seed, progress)


def train_deep(out_dir: str | Path = CHECKPOINTS / "toy-llava-deep", seed: int = 0, progress: bool = True) -> dict:
    """Reproduce the zoo's toy-llava-deep (:data:`~attnlab.zoo.toy_llava.DEEP_CONFIG`); returns the card."""
    return _train(out_dir, DEEP_CONFIG, "toy-llava-deep", seed, progress)
