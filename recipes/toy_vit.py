"""Train toy-vit and toy-vit-reg and write their cards (the model and data: :mod:`attnlab.zoo.toy_vit`).

The card also reports whether high-norm outlier patch tokens (Darcet et al. 2024's artefacts) appear:
:func:`patch_token_norms` computes what the paper looks at, the norm of every output patch token, and
:func:`outlier_stats` applies attnlab's one high-norm rule (:func:`attnlab.probes.norm_threshold.norm_threshold`,
which :func:`attnlab.probes.registers.high_norm_tokens` uses too).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from attnlab.core.atomic import fresh_directory
from attnlab.probes.norm_threshold import norm_threshold
from attnlab.zoo.toy_vit import (ToyViTConfig, build_model, build_processor, foreground_patches, heldout_range,
                                 predict, presence_metrics, scene_batch)
from attnlab.zoo.training import Stopwatch, fit, torch_threads, write_card
from attnlab.zoo.world import TOY_CLASS_NAMES, WorldConfig, split_ranges


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


def outlier_stats(norms: torch.Tensor) -> dict[str, float]:
    """Does a small group of patch tokens have far larger norms than the rest?

    The rule is attnlab's one high-norm rule, :func:`attnlab.probes.norm_threshold.norm_threshold` (the one
    :func:`attnlab.probes.registers.high_norm_tokens` uses): the valley of a bimodal log-norm histogram, or none on
    unimodal data. Darcet et al. (ICLR 2024, Sec. 2) see ~2% of DINOv2-L's patch tokens in a separate mode at several
    times the typical norm.

    Args:
        norms: ``(N,)`` patch-token norms.

    Returns:
        ``max_over_median``, ``outliers_present`` (1.0 or 0.0) and ``frac_above_valley`` (0 without a valley);
        with a valley also ``valley_over_median`` and ``high_over_median`` (median norm above the valley over the
        overall median).
    """
    cut = norm_threshold(norms.numpy())
    median = norms.median().item()
    stats = {"max_over_median": norms.max().item() / median, "outliers_present": float(cut is not None),
             "frac_above_valley": 0.0}
    if cut is not None:
        high = norms[norms > cut]
        stats |= {"frac_above_valley": len(high) / len(norms), "valley_over_median": cut / median,
                  "high_over_median": high.median().item() / median}
    return stats


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
            f"patch-token norms reach {metrics['norm_max_over_median']:.2f}x their median; ")
    if present:
        text += (f"{metrics['norm_frac_above_valley']:.1%} lie above the valley of the log-norm histogram "
                 f"({metrics['norm_valley_over_median']:.2f}x median; their median norm is "
                 f"{metrics['norm_high_over_median']:.2f}x the overall median).")
    else:
        text += "the log-norm histogram has no second mode (attnlab's high-norm rule, probes.norm_threshold)."
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
        "trainer": "attnlab.recipes.toy_vit:" + ("train_with_registers" if config.registers else "train"),
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
