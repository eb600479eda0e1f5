"""Train toy-gpt and write its card: induction and IOI batches, the loss, the card's metrics (the model and data are
:mod:`attnlab.zoo.toy_gpt`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from attnlab.core.atomic import fresh_directory
from attnlab.zoo.toy_gpt import (HELDOUT_TEMPLATES, INDUCTION_WORDS, NAMES, TRAIN_TEMPLATES, ToyGPTConfig,
                                 token_losses, build_model, build_tokenizer, heldout_ioi_prompts, induction_batch,
                                 induction_losses, ioi_batch, ioi_logit_diffs, name_pairs, sample_ioi)
from attnlab.zoo.training import Stopwatch, fit, torch_threads, write_card


def evaluate(model, tok, config: ToyGPTConfig = ToyGPTConfig(), seed: int = 0) -> dict[str, float]:
    """The card's metrics: induction loss ratio and IOI logit differences on held-out data."""
    ind = induction_losses(model, tok, n=config.eval_sequences, seed=seed)
    metrics = {"induction_loss_first_copy": ind["first"], "induction_loss_second_copy": ind["second"],
               "induction_loss_ratio": ind["ratio"]}
    for which in ("train", "heldout"):
        diffs = ioi_logit_diffs(model, tok, heldout_ioi_prompts(config.eval_prompts // 2, seed, templates=which))
        metrics[f"ioi_positive_fraction_{which}_templates"] = (diffs > 0).float().mean().item()
        metrics[f"ioi_mean_logit_diff_{which}_templates"] = diffs.mean().item()
    diffs = ioi_logit_diffs(model, tok, heldout_ioi_prompts(config.eval_prompts, seed))
    metrics["ioi_positive_fraction"] = (diffs > 0).float().mean().item()
    metrics["ioi_mean_logit_diff"] = diffs.mean().item()
    return metrics


def induction_loss(model, ids: torch.Tensor, length: int, first_copy_weight: float) -> torch.Tensor:
    """Training loss of an induction batch ``ids`` ``(B, 1 + 2L)``: the mean loss on the predictable part of
    the second copy plus ``first_copy_weight`` times the mean loss on the first copy (and the repeat's first token).
    """
    losses = token_losses(model, ids)  # (B, 2L); entry t predicts token t + 1
    return losses[:, length + 1:].mean() + first_copy_weight * losses[:, : length + 1].mean()


def _batch_loss_fn(model, tok, config: ToyGPTConfig, seed: int):
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    train_pairs, _ = name_pairs(config.heldout_pair_frac)

    def batch_loss(step: int) -> torch.Tensor:
        length = int(torch.randint(config.seq_min, config.seq_max + 1, (), generator=gen))
        ids = induction_batch(tok, gen, config.batch_size, length)  # (B, 1 + 2L)
        induction = induction_loss(model, ids, length, config.first_copy_weight)
        ioi = model(**ioi_batch(tok, sample_ioi(rng, config.ioi_batch_size, TRAIN_TEMPLATES, train_pairs))).loss
        return induction + ioi

    return batch_loss


def _card(model, config: ToyGPTConfig, seed: int, losses: list[float], metrics: dict,
          clock: Stopwatch) -> dict:
    return {
        "summary": f"A {config.n_layer}-layer GPT-2 trained from scratch on repeated random sequences (induction) "
                   "and IOI sentences; it copies repeated sequences and names the indirect object on held-out name "
                   "pairs.",
        "trainer": "attnlab.recipes.toy_gpt:train",
        "architecture": {"class": "GPT2LMHeadModel", "n_layer": config.n_layer, "n_head": config.n_head,
                         "d_model": config.d_model, "d_mlp": config.d_mlp, "n_positions": config.n_positions,
                         "vocab_size": model.config.vocab_size,
                         "position_init": (f"sinusoidal x {config.sinusoid_scale}, learned thereafter"
                                           if config.sinusoidal_init else "GPT-2 default (normal, std 0.02)"),
                         "parameters": sum(p.numel() for p in model.parameters())},
        "data": {"induction": f"<bos> x x, x uniform over {len(INDUCTION_WORDS)} words, length "
                              f"{config.seq_min}-{config.seq_max}",
                 "ioi": f"{len(TRAIN_TEMPLATES)} templates, {len(NAMES)} names, ABB and BAB orders",
                 "heldout": f"{len(HELDOUT_TEMPLATES)} unseen templates and {config.heldout_pair_frac:.0%} of name "
                            "pairs never trained on; fresh random sequences",
                 "batch": f"{config.batch_size} induction + {config.ioi_batch_size} IOI sequences per step",
                 "loss": f"IOI: mean next-token loss; induction: mean loss on the second copy + "
                         f"{config.first_copy_weight} x mean loss on the first"},
        "steps": config.schedule.steps, "seed": seed, "wall_time_s": clock.seconds(),
        "cpu_time_s": clock.cpu_seconds(), "threads": config.threads,
        "batch_size": config.batch_size + config.ioi_batch_size, "schedule": asdict(config.schedule),
        "final_train_loss": float(np.mean(losses[-50:])),
        "metrics": metrics,
        "thresholds": {"induction_loss_ratio_max": 0.2, "ioi_positive_fraction_min": 0.9},
    }


def train(out_dir: str | Path, seed: int = 0, progress: bool = True, config: ToyGPTConfig | None = None) -> dict:
    """Train toy-gpt and write the checkpoint, tokenizer, ``card.json`` and ``README.md`` into ``out_dir``.

    Args:
        out_dir: checkpoint directory (replaced atomically when training succeeds).
        seed: seeds the initialisation and the data order.
        progress: show a tqdm bar.
        config: model and budget; the shipped checkpoint uses the defaults.

    Returns:
        The card (a dict with ``metrics``).
    """
    config = config or ToyGPTConfig()
    clock = Stopwatch()
    tok = build_tokenizer()
    with torch_threads(config.threads):
        model = build_model(tok, config, seed)
        losses = fit(model, _batch_loss_fn(model, tok, config, seed), config.schedule, desc="toy-gpt",
                     progress=progress)
        metrics = evaluate(model, tok, config, seed)
    with fresh_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        card = write_card(tmp, "toy-gpt", _card(model, config, seed, losses, metrics, clock))
    return card
