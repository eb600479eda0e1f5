"""toy-vit and toy-vit-reg: DINOv2-type encoders trained on toy-world object presence.

Both are ``Dinov2ForImageClassification`` (toy-vit) or ``Dinov2WithRegistersForImageClassification``
with 4 register tokens (toy-vit-reg; Darcet et al. 2024, "Vision Transformers Need Registers"), 64x64
images in 8x8 patches (64 patch tokens), trained with the same seed, data and budget so that the only
difference is the registers. The head is HF's DINOv2 linear probe: one linear layer on
``[CLS] ++ mean(patch tokens)``, trained multi-label (sigmoid + binary cross-entropy) on which of the
12 toy classes a scene holds. ``transformers.AutoModelForImageClassification`` loads the whole model,
``AutoModel`` (and :func:`attnlab.zoo.load`) the encoder alone.

The card also reports whether high-norm outlier patch tokens (Darcet et al.'s artefacts) appear:
:func:`patch_token_norms` and :func:`outlier_stats` compute what the paper looks at, the norm of
every output patch token and whether a small group of them stands apart.

Example:
    >>> from transformers import AutoModelForImageClassification  # doctest: +SKIP
    >>> from attnlab.zoo.registry import card  # doctest: +SKIP
    >>> model = AutoModelForImageClassification.from_pretrained(card("toy-vit")["path"])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnlab.core.atomic import fresh_directory

from .training import Schedule, Stopwatch, fit, torch_threads, write_card
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


@torch.no_grad()
def patch_token_norms(model, pixels: torch.Tensor, final_norm: bool = False) -> torch.Tensor:
    """L2 norms of the output patch tokens (registers and [CLS] left out), flattened over images.

    Args:
        model: a DINOv2 encoder or classifier (with or without registers).
        pixels: ``(B, 3, H, W)``.
        final_norm: after the encoder's final LayerNorm (``last_hidden_state``) instead of the last
            block's residual stream (where Darcet et al.'s artefacts and massive activations live).

    Returns:
        ``(B * n_patches,)`` norms.
    """
    encoder = getattr(model, "dinov2", None) or getattr(model, "dinov2_with_registers", None) or model
    out = encoder.eval()(pixel_values=pixels, output_hidden_states=True)
    tokens = out.last_hidden_state if final_norm else out.hidden_states[-1]  # (B, 1 + R + P, D)
    first_patch = 1 + getattr(encoder.config, "num_register_tokens", 0)
    return tokens[:, first_patch:].norm(dim=-1).flatten()  # (B * P,)


def otsu_threshold(values: torch.Tensor, bins: int = 128) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-group variance (a histogram's valley).

    Across an empty gap between two modes every cut scores the same; the middle of that plateau is returned.
    """
    counts, edges = np.histogram(values.numpy(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(float)
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[1:-1][best[0]] + edges[1:-1][best[-1]]) / 2)


def outlier_stats(norms: torch.Tensor) -> dict[str, float]:
    """Does a small group of patch tokens have far larger norms than the rest?

    The valley is Otsu's threshold on log norms (for a unimodal distribution it simply halves it).
    Darcet et al. see ~2% of DINOv2-L's patch tokens in a separate mode at several times the typical
    norm (their cut, 150, is a few times the bulk). We call outliers present when at most 10% of the
    tokens lie above the valley and their median norm is at least twice the overall median. The norm
    condition matters here: toy scenes are mostly flat background, so background and object patches
    alone form two close modes (about 1.1x apart).

    Returns:
        ``max_over_median``, ``valley_over_median``, ``frac_above_valley``, ``high_over_median`` (median
        norm above the valley over the overall median) and ``outliers_present`` (1.0 or 0.0).
    """
    logn = norms.clamp(min=1e-12).log()
    cut = otsu_threshold(logn)
    high = norms[logn > cut]
    median = norms.median().item()
    frac = (logn > cut).float().mean().item()
    high_ratio = high.median().item() / median if len(high) else 0.0
    return {"max_over_median": norms.max().item() / median, "valley_over_median": float(np.exp(cut)) / median,
            "frac_above_valley": frac, "high_over_median": high_ratio,
            "outliers_present": float(frac <= 0.1 and high_ratio >= 2)}


def evaluate(model, processor, config: ToyViTConfig = ToyViTConfig(), n: int | None = None) -> dict[str, float]:
    """The card's metrics on held-out scenes: presence accuracy and patch-token norm statistics."""
    pixels, labels = scene_batch(processor, heldout_range(config, n), config.world_seed)
    metrics = presence_metrics(predict(model, pixels), labels)
    norms = patch_token_norms(model, pixels)
    metrics |= {f"norm_{k}": v for k, v in outlier_stats(norms).items()}
    metrics |= {f"norm_{k}": v for k, v in norms_by_content(
        norms, foreground_patches(heldout_range(config, n), config.world_seed, config.patch_size)).items()}
    metrics |= {f"final_norm_{k}": v for k, v in outlier_stats(patch_token_norms(model, pixels, True)).items()}
    if config.registers:
        metrics["register_norm_over_patch_median"] = (register_norms(model, pixels).median() / norms.median()).item()
    return metrics


def norms_by_content(norms: torch.Tensor, foreground: torch.Tensor, top: float = 0.02) -> dict[str, float]:
    """Where the largest patch-token norms sit: object or background patches.

    Args:
        norms: ``(N,)`` patch-token norms.
        foreground: ``(N,)`` bool, patch holds object pixels.
        top: share of largest norms examined (Darcet et al. find ~2% artefact tokens).

    Returns:
        ``background_over_median`` and ``foreground_over_median`` (median norms over the overall median) and
        ``top_on_background`` (share of the ``top`` largest norms on background patches) and
        ``foreground_share`` (share of object patches overall, the chance level of the former's complement).
    """
    median = norms.median()
    largest = norms >= norms.quantile(1 - top)
    return {"background_over_median": (norms[~foreground].median() / median).item(),
            "foreground_over_median": (norms[foreground].median() / median).item(),
            "top_on_background": (~foreground[largest]).float().mean().item(),
            "foreground_share": foreground.float().mean().item()}


@torch.no_grad()
def register_norms(model, pixels: torch.Tensor) -> torch.Tensor:
    """Norms of the register tokens in the last block's output, ``(B * R,)``."""
    encoder = model.dinov2_with_registers if hasattr(model, "dinov2_with_registers") else model
    hidden = encoder.eval()(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # (B, 1 + R + P, D)
    return hidden[:, 1:1 + encoder.config.num_register_tokens].norm(dim=-1).flatten()


def _batch_loss_fn(model, processor, config: ToyViTConfig):
    train = split_ranges(config.world_size)["train"]
    needed = config.schedule.steps * config.batch_size
    if needed > len(train):
        raise ValueError(f"{config.schedule.steps} steps x {config.batch_size} images need {needed} training "
                         f"scenes but the world's train split has {len(train)}; raise world_size")

    def batch_loss(step: int) -> torch.Tensor:
        pixels, labels = scene_batch(processor, train[step * config.batch_size:(step + 1) * config.batch_size],
                                     config.world_seed)
        return model(pixel_values=pixels, labels=labels).loss

    return batch_loss


def _findings(name: str, metrics: dict, config: ToyViTConfig) -> list[str]:
    present = metrics["norm_outliers_present"] > 0
    text = (f"High-norm outlier patch tokens: {'present' if present else 'not found'} in {name} — last-block "
            f"patch-token norms reach {metrics['norm_max_over_median']:.2f}x their median; "
            f"{metrics['norm_frac_above_valley']:.1%} lie above the Otsu valley "
            f"({metrics['norm_valley_over_median']:.2f}x median; their median norm is "
            f"{metrics['norm_high_over_median']:.2f}x the overall median).")
    if not present:
        text += (f" At this scale ({config.n_layer} layers of width {config.hidden_size}, {config.schedule.steps} "
                 "steps) no separate high-norm mode forms; Darcet et al. see the artefacts in large models "
                 "trained long (ViT-L and up).")
    where = (f"{1 - metrics['norm_top_on_background']:.0%} of the 2% largest norms are on object patches, which are "
             f"{metrics['norm_foreground_share']:.0%} of all patches; median norm on objects "
             f"{metrics['norm_foreground_over_median']:.2f}x, on background "
             f"{metrics['norm_background_over_median']:.2f}x the overall median (Darcet et al.'s artefacts sit on "
             "background).")
    found = [text, where]
    if config.registers:
        found.append(f"Register tokens leave the last block at {metrics['register_norm_over_patch_median']:.2f}x the "
                     "patch median norm.")
    return found


def _card(name: str, model, config: ToyViTConfig, seed: int, losses: list[float], metrics: dict,
          clock: Stopwatch) -> dict:
    ranges = split_ranges(config.world_size)
    kind = (f"Dinov2WithRegistersForImageClassification ({config.registers} registers)" if config.registers
            else "Dinov2ForImageClassification")
    return {
        "summary": f"A {config.n_layer}-layer DINOv2-type ViT{' with registers' if config.registers else ''} trained "
                   "from scratch to say which of the 12 toy-world classes a 64x64 scene holds.",
        "trainer": "attnlab.zoo.train_vit:" + ("train_with_registers" if config.registers else "train"),
        "architecture": {"class": kind, "hidden_size": config.hidden_size, "n_layer": config.n_layer,
                         "n_head": config.n_head, "mlp_ratio": config.mlp_ratio, "patch_size": config.patch_size,
                         "image_size": WorldConfig().image_size, "registers": config.registers,
                         "head": "linear on [CLS] ++ mean(patch tokens), 12 sigmoid outputs",
                         "parameters": sum(p.numel() for p in model.parameters())},
        "data": {"world_seed": config.world_seed, "world_size": config.world_size,
                 "train": f"toy-world scenes {ranges['train'].start}..{config.schedule.steps * config.batch_size - 1}"
                          " (each seen once)",
                 "heldout": f"test scenes {heldout_range(config).start}..{heldout_range(config).stop - 1}",
                 "labels": "multi-hot presence of " + ", ".join(TOY_CLASS_NAMES)},
        "steps": config.schedule.steps, "seed": seed, "wall_time_s": clock.seconds(),
        "cpu_time_s": clock.cpu_seconds(), "threads": config.threads,
        "batch_size": config.batch_size, "schedule": asdict(config.schedule),
        "final_train_loss": float(np.mean(losses[-20:])),
        "metrics": metrics,
        "thresholds": {"exact_match_min": 0.9, "mean_f1_min": 0.95},
        "findings": _findings(name, metrics, config),
    }


def _train(name: str, out_dir: str | Path, seed: int, progress: bool, config: ToyViTConfig) -> dict:
    clock = Stopwatch()
    processor = build_processor()
    with torch_threads(config.threads):
        model = build_model(config, seed)
        losses = fit(model, _batch_loss_fn(model, processor, config), config.schedule, desc=name, progress=progress)
        metrics = evaluate(model, processor, config)
    with fresh_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        card = write_card(tmp, name, _card(name, model, config, seed, losses, metrics, clock))
    return card


def train(out_dir: str | Path, seed: int = 0, progress: bool = True, config: ToyViTConfig | None = None) -> dict:
    """Train toy-vit and write the checkpoint, processor, ``card.json`` and ``README.md`` into ``out_dir``.

    Args:
        out_dir: checkpoint directory (replaced atomically when training succeeds).
        seed: seeds the initialisation (the scenes are the toy world's, the same for every seed).
        progress: show a tqdm bar.
        config: model and budget; the shipped checkpoint uses the defaults.

    Returns:
        The card (a dict with ``metrics``).
    """
    return _train("toy-vit", out_dir, seed, progress, config or ToyViTConfig())


def train_with_registers(out_dir: str | Path, seed: int = 0, progress: bool = True,
                         config: ToyViTConfig | None = None) -> dict:
    """Train toy-vit-reg: :func:`train` with 4 register tokens, same seed, data and budget."""
    config = config or ToyViTConfig(registers=4)
    if config.registers < 1:
        raise ValueError("toy-vit-reg needs register tokens; pass a config with registers >= 1 (the zoo uses 4)")
    return _train("toy-vit-reg", out_dir, seed, progress, config)
