"""ACT: Attention Calibration Technique (Yu et al., "Unveiling and Harnessing Hidden Attention Sinks in
Large Language Models", ICML 2024; code GATECH-EIC/ACT).

In calibrated heads, attention on detected sinks is multiplied by ``beta`` (0.4) and the freed mass goes
to every other token in proportion to its attention (``A'[:, S] = beta * A[:, S]``,
``A'[i, j] += (1 - beta) * sum_S A[i] * A[i, j] / sum_{not S} A[i]``). Sinks are detected per head from the
head's own attention at prefill: ``c_j = sum_i A[i, j] / (N - j)`` (the mean attention key ``j``
receives from the queries that see it) above a cutoff, with the first detected sink dropped
(``indices[1:]``) so the initial sink is left alone — the "hidden" sinks.

Cutoff: the released code uses ``c_j > 0.1`` (``THRES``) at every length, which flags everything on short
inputs (with 9 tokens, uniform attention gives 1/9 > 0.1 to every key). attnlab's default,
``rule="act_relative"``, also requires the paper's relative condition ``c_j > alpha / N`` (``alpha = 5``,
N real tokens): identical to the released rule above ``N = 50`` tokens, meaningful below.
``rule="act"`` reproduces the released code (see :func:`attnlab.probes.sinks.sink_cutoff`). Padded batches
pass the real-token mask, so N and the query counts are the item's own.

The head set is found offline: calibrate one head at a time on a calibration split and keep the heads whose
calibration improves the task score over the plain model.

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
from attnlab.probes.sinks import check_rule, sink_cutoff

SINK_SET = "act_sink"


def act_plan(heads: list[tuple[int, int]], n_heads: int, beta: float = 0.4) -> Plan:
    """The ACT Plan: per layer, a reweighting of the ``act_sink`` set by ``beta`` in the listed heads only."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (the share of sink attention kept) must be in [0, 1]; got {beta}")
    per_layer: dict[int, list[float]] = {}
    for layer, head in heads:
        per_layer.setdefault(layer, [1.0] * n_heads)[head] = beta
    return Plan({l: LayerPlan(reweight=Reweight(SINK_SET, tuple(f))) for l, f in sorted(per_layer.items())}, name="act")


def hidden_sinks(received: torch.Tensor, threshold: float = 0.1, drop_first: bool = True, *,
                 rule: str = "act_relative", alpha: float = 5.0, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ACT's sink detection from column sums of a causal prefill map.

    Args:
        received: ``[B, H, K]`` attention each key receives, summed over the real queries (prefill, Q = K).
        threshold: ACT's absolute cutoff on ``c_j`` (0.1).
        drop_first: drop each head's first detected sink (keep the initial sink intact).
        rule: ``act_relative`` (``c_j > max(threshold, alpha / N)``, default) | ``act`` (``c_j > threshold``,
            the released code) | ``relative`` (``c_j > alpha / N``); N = the item's real tokens.
        alpha: multiple of uniform attention ``1 / N`` (5).
        key_mask: ``[B, K]`` bool real tokens of a padded batch (left or right padding); ``None``: all real.

    Returns:
        ``[B, H, K]`` bool, never True on padding.
    """
    check_rule(rule)
    if key_mask is None:
        key_mask = torch.ones(received.shape[0], received.shape[-1], dtype=torch.bool)
    real = key_mask.to(device=received.device, dtype=torch.bool)  # (B, K)
    # Queries that see key j: the real positions at or after j.
    visible = real.flip(-1).cumsum(-1).flip(-1).to(received.dtype)  # (B, K)
    score = received / visible.clamp(min=1)[:, None, :]  # (B, H, K)
    n_real = real.sum(-1).clamp(min=1).to(received.dtype)[:, None, None]  # (B, 1, 1)
    sinks = (score > sink_cutoff(rule, threshold, alpha, n_real)) & real[:, None, :]  # (B, H, K)
    if drop_first:
        first = sinks.int().argmax(-1, keepdim=True)  # (B, H, 1) the first True (0 when none)
        sinks = sinks & ~torch.zeros_like(sinks).scatter_(-1, first, True)
    return sinks


@dataclass
class ACTSinks:
    """Per-input key-set function: each head's hidden sinks from its own prefill attention, then cached.

    Attributes:
        threshold, rule, alpha: the cutoff (see :func:`hidden_sinks`).
        cache: ``{layer: [B, H, K] bool}`` sinks found at prefill, reused while decoding.
    """

    threshold: float = 0.1
    rule: str = "act_relative"
    alpha: float = 5.0
    cache: dict = field(default_factory=dict)
    #: the sinks come from the layer's own attention (``preview``), not from the hidden state entering the block, so
    #: the recorder hooks no block for them (see :data:`attnlab.hooks.recorder.KeySetFn`)
    reads_hidden = False

    def __call__(self, layer: int, hidden, static: dict, preview: Callable[[], torch.Tensor] | None = None,
                 token_mask: torch.Tensor | None = None, n_queries: int | None = None, **_) -> dict:
        """``{act_sink: [B, H, K]}`` for ``layer``; ``token_mask`` ``[B, N]`` marks the prompt's real tokens. The sinks
        are found on a prompt's prefill (a call of ``n_queries > 1`` tokens, or the layer's first call) and reused by
        the decoding steps after it (one token each)."""
        if layer not in self.cache or (n_queries or 0) > 1:
            if preview is None:
                return {}
            received = preview()  # (B, H, K)
            mask = token_mask if token_mask is not None and token_mask.shape[-1] == received.shape[-1] else None
            self.cache[layer] = hidden_sinks(received, self.threshold, rule=self.rule, alpha=self.alpha,
                                             key_mask=mask).cpu()
        return {SINK_SET: self.cache[layer]}

    def fresh(self) -> "ACTSinks":
        """The same cutoff with an empty cache (for the next input)."""
        return ACTSinks(self.threshold, self.rule, self.alpha)


@dataclass
class ACTMethod:
    """ACT for evaluation: a calibrated head set, fresh sinks per input."""

    plan: Plan
    heads: list[tuple[int, int]]
    search: dict
    sinks: ACTSinks = field(default_factory=ACTSinks)

    def steering_for(self, images=None, prompts=None) -> dict:
        """:func:`~attnlab.evals.answer.generate_answers`' keyword arguments for a batch of inputs: the Plan and fresh
        sink sets (each row's own, found at its prefill); ``{}`` (the plain model) when no head was calibrated."""
        if not self.heads:
            return {}
        return {"plan": self.plan, "key_set_fn": self.sinks.fresh()}

    def describe(self) -> dict:
        """The chosen heads and the calibration scores behind them."""
        return {"heads": [f"{l}.{h}" for l, h in self.heads], **self.search}


def act_search(score: Callable[[Plan | None, Callable | None], float], n_layers: int, n_heads: int, *,
               beta: float = 0.4, layers: tuple[int, ...] | None = None, threshold: float = 0.1,
               rule: str = "act_relative", alpha: float = 5.0, progress: bool = False) -> ACTMethod:
    """ACT's offline head search: calibrate one head at a time, keep those that beat the plain model.

    Args:
        score: ``score(plan, key_set_fn) -> float`` on the calibration split (higher is better); called with
            ``(None, None)`` for the plain model.
        n_layers, n_heads: model sizes.
        beta: sink attention kept (0.4).
        layers: layers to scan; ``None`` = ``2 .. n_layers - 1``.
        threshold, rule, alpha: the sink cutoff (see :func:`hidden_sinks`; ``rule="act"`` is the released code).
        progress: show a bar over heads.

    Returns:
        :class:`ACTMethod` with the kept heads and every head's calibration score.
    """
    from tqdm.auto import tqdm

    check_rule(rule)
    sinks = ACTSinks(threshold, rule, alpha)
    layers = tuple(range(min(2, n_layers - 1), n_layers)) if layers is None else tuple(layers)
    base = score(None, None)
    trial = {}
    for layer in tqdm(layers, desc="ACT head search", disable=not progress):
        for head in range(n_heads):
            trial[(layer, head)] = score(act_plan([(layer, head)], n_heads, beta), sinks.fresh())
    kept = sorted(h for h, s in trial.items() if s > base)
    search = {"baseline_score": base, "beta": beta, "layers": list(layers), "rule": rule, "threshold": threshold,
              "alpha": alpha, "head_scores": {f"{l}.{h}": s for (l, h), s in trial.items()}}
    return ACTMethod(act_plan(kept, n_heads, beta), kept, search, sinks)


def act_method(model, processor, spec, calibration=None, *, beta: float = 0.4, limit: int = 60) -> ACTMethod:
    """ACT for an LVLM in the eval CLI: heads searched on the calibration split's POPE questions.

    Args:
        model, processor, spec: a vision-language model from :func:`attnlab.zoo.load`.
        calibration: the calibration BenchmarkFiles (:func:`attnlab.evals.benchmark.calibration_dataset`): a zoo card's
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
