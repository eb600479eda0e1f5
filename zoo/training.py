"""Shared pieces of the zoo trainers: thread control, the learning-rate schedule, the loop, cards.

A trainer builds a model and a ``batch_loss(step)`` function; :func:`fit` runs AdamW over it with
warm-up and cosine decay, a tqdm bar and the wall time; :func:`write_card` writes ``card.json`` and
the ``README.md`` model card next to the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Schedule:
    """Optimiser settings shared by the zoo trainers.

    Attributes:
        steps: optimiser steps; the budget that keeps a run within minutes on a CPU.
        lr: peak AdamW learning rate; small models tolerate 1e-3 and learn fastest near it.
        warmup: linear warm-up steps; avoids early divergence of the fresh LayerNorms and embeddings.
        final_lr_frac: cosine decay ends at this fraction of ``lr`` instead of 0, so late steps still learn.
        weight_decay: AdamW decay on matrices only (not on norms, biases or embeddings).
        grad_clip: global gradient-norm clip; guards against the rare spike of a tiny batch.
    """

    steps: int
    lr: float = 1e-3
    warmup: int = 50
    final_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.final_lr_frac + (1 - self.final_lr_frac) * cosine)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads, restoring the previous count afterwards."""
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _optimizer(model: torch.nn.Module, schedule: Schedule) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "emb" not in n]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in params if id(p) not in decay_ids]
    return torch.optim.AdamW([{"params": decay, "weight_decay": schedule.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=schedule.lr, betas=(0.9, 0.98))


def fit(model: torch.nn.Module, batch_loss: Callable[[int], torch.Tensor], schedule: Schedule, *,
        desc: str, progress: bool = True) -> list[float]:
    """Train ``model`` in place: AdamW, warm-up + cosine, gradient clipping.

    Args:
        model: the module to train; left in eval mode.
        batch_loss: ``step -> scalar loss`` of that step's batch (it draws the batch itself, so the data
            order is a pure function of the step and the trainer's generator).
        schedule: steps and optimiser settings.
        desc: label of the tqdm bar.
        progress: show the bar.

    Returns:
        The loss of every step.
    """
    from tqdm.auto import tqdm

    opt = _optimizer(model, schedule)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(schedule.steps), desc=desc, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step)
        loss = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


class Stopwatch:
    """Wall-clock and CPU seconds since construction.

    On a shared machine the wall time depends on the neighbours; the process CPU time is what the run
    itself cost (with one thread, the wall time it would take alone).
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def seconds(self) -> float:
        """Wall seconds elapsed, rounded to 0.1 s."""
        return round(time.perf_counter() - self.start, 1)

    def cpu_seconds(self) -> float:
        """CPU seconds this process used (all threads), rounded to 0.1 s."""
        return round(time.process_time() - self.cpu_start, 1)


def directory_bytes(path: str | Path) -> int:
    """Total size of the files directly in ``path``."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def _fmt(value) -> str:
    """One markdown table cell: floats to 4 significant digits, ``<``, ``>`` and ``|`` escaped."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _section(title: str, values: Mapping) -> list[str]:
    lines = [f"## {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in values.items()]
    return lines + [""]


def render_readme(name: str, card: Mapping) -> str:
    """The ``README.md`` model card: summary, architecture, data, training, metrics and findings."""
    training = {k: card[k] for k in ("steps", "seed", "wall_time_s", "cpu_time_s", "threads", "batch_size", "schedule",
                                     "final_train_loss", "checkpoint_bytes") if k in card}
    lines = [f"# {name}", "", card.get("summary", ""), ""]
    lines += _section("Architecture", card["architecture"])
    lines += _section("Data", card["data"])
    lines += _section("Training", training)
    lines += _section("Metrics (held out)", card["metrics"])
    if card.get("thresholds"):
        lines += _section("Thresholds the tests check", card["thresholds"])
    if card.get("findings"):
        lines += ["## Findings", "", *[f"- {f}" for f in card["findings"]], ""]
    lines += ["## Reproduce", "", f"`attnlab zoo train {name} --seed {card['seed']}` "
              f"(or `{card['trainer']}(out_dir, seed={card['seed']})`); the run is deterministic given the seed "
              f"and the thread count.", ""]
    return "\n".join(lines)


def write_card(out_dir: str | Path, name: str, card: dict) -> dict:
    """Write ``card.json`` and ``README.md`` into ``out_dir``; returns the card with ``checkpoint_bytes`` set.

    ``checkpoint_bytes`` counts the checkpoint files written before the card (weights, config, tokenizer
    or processor), so it is what a user downloads minus the two small text files.
    """
    out = Path(out_dir)
    card = {**card, "checkpoint_bytes": directory_bytes(out)}
    for key in ("metrics", "architecture", "data", "steps", "seed", "wall_time_s", "threads"):
        assert key in card, f"card misses {key}"
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_readme(name, card), encoding="utf-8")
    return card
