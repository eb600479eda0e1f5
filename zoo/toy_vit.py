"""toy-vit and toy-vit-reg, the model and its data: DINOv2-type encoders for toy-world object presence.

Both are ``Dinov2ForImageClassification`` (toy-vit) or ``Dinov2WithRegistersForImageClassification``
with 4 register tokens (toy-vit-reg; Darcet et al. 2024, "Vision Transformers Need Registers"), 64x64
images in 8x8 patches (64 patch tokens), trained with the same seed, data and budget so that the only
difference is the registers. The head is HF's DINOv2 linear probe: one linear layer on
``[CLS] ++ mean(patch tokens)``, trained multi-label (sigmoid + binary cross-entropy) on which of the
12 toy classes a scene holds. ``transformers.AutoModelForImageClassification`` loads the whole model,
``AutoModel`` (and :func:`attnlab.zoo.load`) the encoder alone. The trainer and the card's measurements are
:mod:`attnlab.recipes.toy_vit`.

Example:
    >>> from transformers import AutoModelForImageClassification  # doctest: +SKIP
    >>> from attnlab.zoo.registry import card  # doctest: +SKIP
    >>> model = AutoModelForImageClassification.from_pretrained(card("toy-vit")["path"])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .training import Schedule
from .world import TOY_CLASS_NAMES, WorldConfig, render_scene, split_ranges


@dataclass(frozen=True)
class ToyViTConfig:
    """Model, data and budget of toy-vit (and, with ``registers=4``, toy-vit-reg).

    Attributes:
        hidden_size: token width; 96 with 4 heads (d_head 24) learns the task in the CPU budget at ~1.9 MB.
        n_layer: blocks; four give attention room to route information between patches and [CLS].
        n_head: heads per block.
        mlp_ratio: MLP width over ``hidden_size`` (DINOv2's 4).
        patch_size: 8 px patches on 64 px images: an 8x8 grid, a toy object covers about 2x2 patches.
        registers: register tokens (0 for toy-vit, 4 for toy-vit-reg as in Darcet et al.).
        batch_size: images per step.
        schedule: optimiser steps and settings; identical for both models so the comparison is fair.
        threads: torch intra-op threads; one is faster than two on a shared two-core machine.
        world_seed: the toy world the scenes come from; the held-out scenes are its test split.
        world_size: images in that world; ``split_ranges`` cuts it 80/10/10 into train/calibration/test.
        eval_images: held-out test scenes in the card's evaluation.
    """

    hidden_size: int = 96
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: int = 4
    patch_size: int = 8
    registers: int = 0
    batch_size: int = 64
    schedule: Schedule = field(default_factory=lambda: Schedule(steps=300, lr=1e-3, warmup=30))
    threads: int = 1
    world_seed: int = 0
    world_size: int = 40_000
    eval_images: int = 1000


def build_processor():
    """The Pillow image processor (the torchvision one does not import beside the CPU torch build)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    side = WorldConfig().image_size
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def build_model(config: ToyViTConfig, seed: int):
    """A freshly initialised DINOv2 (with registers when ``config.registers``) with a 12-way multi-label head."""
    from transformers import (Dinov2Config, Dinov2ForImageClassification, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersForImageClassification)

    torch.manual_seed(seed)
    common = dict(hidden_size=config.hidden_size, num_hidden_layers=config.n_layer,
                  num_attention_heads=config.n_head, mlp_ratio=config.mlp_ratio,
                  image_size=WorldConfig().image_size, patch_size=config.patch_size,
                  num_labels=len(TOY_CLASS_NAMES), problem_type="multi_label_classification",
                  id2label=dict(enumerate(TOY_CLASS_NAMES)), label2id={n: i for i, n in enumerate(TOY_CLASS_NAMES)})
    if config.registers:
        return Dinov2WithRegistersForImageClassification(
            Dinov2WithRegistersConfig(**common, num_register_tokens=config.registers))
    return Dinov2ForImageClassification(Dinov2Config(**common))


def scene_batch(processor, indices: range, world_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels ``(B, 3, 64, 64)`` and multi-hot labels ``(B, 12)`` of toy-world scenes ``indices``."""
    wcfg = WorldConfig()
    scenes = [render_scene(i, world_seed, wcfg) for i in indices]
    pixels = processor(images=[s.image for s in scenes], return_tensors="pt")["pixel_values"]  # (B, 3, H, W)
    labels = torch.zeros(len(scenes), len(TOY_CLASS_NAMES))  # (B, C)
    for row, s in enumerate(scenes):
        labels[row, [TOY_CLASS_NAMES.index(n) for n in s.names]] = 1.0
    return pixels, labels


def foreground_patches(indices: range, world_seed: int, patch_size: int) -> torch.Tensor:
    """Whether each patch of scenes ``indices`` holds any object pixel; ``(B * n_patches,)`` bool, row-major.

    Darcet et al.'s artefacts sit on redundant background patches; this tells the two kinds apart.
    """
    wcfg = WorldConfig()
    side = wcfg.image_size // patch_size
    masks = []
    for i in indices:
        canvas = np.asarray(render_scene(i, world_seed, wcfg).image, dtype=np.int16)  # (H, W, 3)
        drawn = np.abs(canvas - np.array(wcfg.background)).sum(-1) > 0  # (H, W)
        masks.append(drawn.reshape(side, patch_size, side, patch_size).any(axis=(1, 3)).reshape(-1))  # (P,)
    return torch.from_numpy(np.concatenate(masks))


def heldout_range(config: ToyViTConfig = ToyViTConfig(), n: int | None = None) -> range:
    """World indices of the first ``n`` (default ``config.eval_images``) held-out test scenes."""
    test = split_ranges(config.world_size)["test"]
    return test[: n or config.eval_images]


@torch.no_grad()
def predict(model, pixels: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Presence probabilities ``(B, 12)`` (sigmoid of the head's logits)."""
    model.eval()
    return torch.cat([torch.sigmoid(model(pixel_values=pixels[i:i + batch]).logits)
                      for i in range(0, len(pixels), batch)])


def presence_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Exact match, per-label accuracy, macro and worst-class F1 at threshold 0.5.

    Args:
        probs: ``(B, C)`` presence probabilities.
        labels: ``(B, C)`` multi-hot ground truth.
    """
    pred = probs > 0.5  # (B, C)
    truth = labels > 0.5
    tp = (pred & truth).sum(0).float()  # (C,)
    f1 = 2 * tp / (pred.sum(0) + truth.sum(0)).clamp(min=1)  # (C,)
    return {"exact_match": (pred == truth).all(1).float().mean().item(),
            "label_accuracy": (pred == truth).float().mean().item(),
            "mean_f1": f1.mean().item(), "min_class_f1": f1.min().item()}
