"""ACT: Attention Calibration Technique (Yu et al., "Unveiling and Harnessing Hidden Attention Sinks in
Large Language Models", ICML 2024; code GATECH-EIC/ACT).

In calibrated heads, attention on detected sinks is multiplied by ``beta`` (0.4) and the freed mass goes
to every other token in proportion to its attention (``A'[:, S] = beta * A[:, S]``,
``A'[i, j] += (1 - beta) * sum_S A[i] * A[i, j] / sum_{not S} A[i]``). Sinks are detected per head from the
head's own attention at prefill: ``c_j = sum_i A[i, j] / (N - j) > 0.1`` (the mean attention key ``j``
receives from the queries that see it), with the first detected sink dropped (``indices[1:]``) so the
initial sink is left alone — the "hidden" sinks. The head set is found offline: calibrate one head at a time
on a calibration split and keep the heads whose calibration improves the task score over the plain model.

Conventions: the code scans layers ``2 .. L-2`` (2..30 of 32); attnlab scans ``2 .. L-1`` by default
(configurable). Sinks found at prefill are reused while decoding (the code evaluates a single prefill). The
detection reads the unmodified attention of the same layer (one extra stats-only attention pass per
calibrated layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from attnlab.kernels.plan import LayerPlan, Plan, Reweight

SINK_SET = "act_sink"


def act_plan(heads: list[tuple[int, int]], n_heads: int, beta: float = 0.4) -> Plan:
    """The ACT Plan: per layer, a reweighting of the ``act_sink`` set by ``beta`` in the listed heads only."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (the share of sink attention kept) must be in [0, 1]; got {beta}")
    per_layer: dict[int, list[float]] = {}
    for layer, head in heads:
        per_layer.setdefault(layer, [1.0] * n_heads)[head] = beta
    return Plan({l: LayerPlan(reweight=Reweight(SINK_SET, tuple(f))) for l, f in sorted(per_layer.items())}, name="act")


def hidden_sinks(received: torch.Tensor, threshold: float = 0.1, drop_first: bool = True) -> torch.Tensor:
    """ACT's sink detection from column sums of a causal prefill map.

    Args:
        received: ``[B, H, K]`` attention each key receives, summed over the ``K`` queries (prefill, Q = K).
        threshold: ``c_j > threshold`` (0.1).
        drop_first: drop each head's first detected sink (keep the initial sink intact).

    Returns:
        ``[B, H, K]`` bool.
    """
    n = received.shape[-1]
    visible = torch.arange(n, 0, -1, dtype=received.dtype, device=received.device)  # (K,) queries seeing key j
    sinks = received / visible > threshold  # (B, H, K)
    if drop_first:
        first = sinks.int().argmax(-1, keepdim=True)  # (B, H, 1) the first True (0 when none)
        sinks = sinks & ~torch.zeros_like(sinks).scatter_(-1, first, True)
    return sinks


@dataclass
class ACTSinks:
    """Per-input key-set function: each head's hidden sinks from its own prefill attention, then cached."""

    threshold: float = 0.1
    cache: dict = field(default_factory=dict)

    def __call__(self, layer: int, hidden, static: dict, preview: Callable[[], torch.Tensor] | None = None, **_) -> dict:
        """``{act_sink: [B, H, K]}`` for ``layer``."""
        if layer not in self.cache or (hidden is not None and hidden.shape[1] > 1):
            if preview is None:
                return {}
            self.cache[layer] = hidden_sinks(preview(), self.threshold).cpu()
        return {SINK_SET: self.cache[layer]}


@dataclass
class ACTMethod:
    """ACT for evaluation: a calibrated head set, fresh sinks per input."""

    plan: Plan
    heads: list[tuple[int, int]]
    search: dict
    threshold: float = 0.1

    def plan_for(self, image=None, prompt=None):
        """``(plan, key_set_fn)`` for one input."""
        return self.plan, ACTSinks(self.threshold)

    def describe(self) -> dict:
        """The chosen heads and the calibration scores behind them."""
        return {"heads": [f"{l}.{h}" for l, h in self.heads], **self.search}


def act_search(score: Callable[[Plan | None, Callable | None], float], n_layers: int, n_heads: int, *,
               beta: float = 0.4, layers: tuple[int, ...] | None = None, threshold: float = 0.1,
               progress: bool = False) -> ACTMethod:
    """ACT's offline head search: calibrate one head at a time, keep those that beat the plain model.

    Args:
        score: ``score(plan, key_set_fn) -> float`` on the calibration split (higher is better); called with
            ``(None, None)`` for the plain model.
        n_layers, n_heads: model sizes.
        beta: sink attention kept (0.4).
        layers: layers to scan; ``None`` = ``2 .. n_layers - 1``.
        threshold: sink threshold (0.1).
        progress: show a bar over heads.

    Returns:
        :class:`ACTMethod` with the kept heads and every head's calibration score.
    """
    from tqdm.auto import tqdm

    layers = tuple(range(min(2, n_layers - 1), n_layers)) if layers is None else tuple(layers)
    base = score(None, None)
    trial = {}
    for layer in tqdm(layers, desc="ACT head search", disable=not progress):
        for head in range(n_heads):
            trial[(layer, head)] = score(act_plan([(layer, head)], n_heads, beta), ACTSinks(threshold))
    kept = sorted(h for h, s in trial.items() if s > base)
    search = {"baseline_score": base, "beta": beta, "layers": list(layers),
              "head_scores": {f"{l}.{h}": s for (l, h), s in trial.items()}}
    return ACTMethod(act_plan(kept, n_heads, beta), kept, search, threshold)


def act_method(model, processor, spec, calibration=None, *, beta: float = 0.4, limit: int = 60) -> ACTMethod:
    """ACT for an LVLM in the eval CLI: heads searched on the calibration split's POPE questions.

    Args:
        model, processor, spec: a vision-language model from :func:`attnlab.zoo.load`.
        calibration: the calibration Dataset (:func:`attnlab.evals.suite.calibration_dataset`): a zoo card's
            ``calibration`` split or the user's ``--calibration`` file, never the test questions.
        beta: sink attention kept.
        limit: calibration questions per head trial.
    """
    from pathlib import Path

    from PIL import Image

    from attnlab.evals.answer import format_prompt, generate_answer, prompt_templates
    from attnlab.evals.pope import load_pope_questions, parse_pope_answer

    if calibration is None or not calibration.pope:
        raise ValueError("ACT searches its heads on calibration questions: give --calibration FILE.jsonl (POPE format, "
                         "disjoint from the test questions) and, if its images live elsewhere, --calibration-images DIR")
    per_file = max(1, limit // len(calibration.pope))
    questions = [q for file in calibration.pope.values() for q in load_pope_questions(file)[:per_file]]
    if not questions:
        raise ValueError(f"ACT's calibration files {sorted(calibration.pope.values())} hold no questions; "
                         "give --calibration a POPE-format JSONL with at least one question")
    template = prompt_templates(spec)["pope"]
    images = {q.image: Image.open(Path(calibration.images) / q.image).convert("RGB") for q in questions}

    def score(plan, key_set_fn):
        right = 0
        for q in questions:
            answer = generate_answer(model, processor, spec, images[q.image], format_prompt(processor, template, q.text),
                                     max_new_tokens=3, plan=plan, key_set_fn=key_set_fn)
            right += parse_pope_answer(answer) == q.label
        return right / len(questions)

    return act_search(score, spec.n_layers, spec.n_heads, beta=beta, progress=True)
