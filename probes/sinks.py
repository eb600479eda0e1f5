"""Attention sinks: tokens that receive far more attention than their share.

Score (ACT: Yu et al., "Unveiling and Harnessing Hidden Attention Sinks", ICML 2024; the same
column mean as Gu et al., ICLR 2025): per layer and head, the attention key ``j`` receives averaged
over the queries that can see it, ``c_j = sum_i A[i, j] / (N - j)`` for causal models (ACT's
``sum(dim=0) / arange(N, 0, -1)``) and ``/ N`` for bidirectional ones.

Rules (``N`` = the item's real tokens):

* ``rule="act_relative"`` (default): ``c_j > max(threshold, alpha / N)``. ACT's released absolute
  threshold alone means nothing on short inputs: with 9 tokens uniform attention scores 1/9 > 0.1, so
  every token of every head passes. Also requiring ``alpha`` times the uniform share (the paper's
  wording) keeps the released rule on long inputs (``N > alpha / threshold``, 50 tokens at the
  defaults) and asks for a real excess over uniform on short ones.
* ``rule="act"``: ``c_j > threshold`` (0.1), ACT's released code (``THRES``), at every length.
* ``rule="relative"``: ``c_j > alpha / N``, the paper's wording (relative to uniform attention
  ``1/N``). The paper's alpha was not verified; ``alpha=5`` is this module's default.

With ``hidden=True`` the first detected sink of each head is dropped, as ACT's ``indices[1:]`` does
to leave the initial sink alone and keep the "hidden" ones.

Conventions: ACT applies its threshold to every position; the last positions are seen by few
queries (the last only by itself), so their mean is noisy and the last token's self-attention alone
can pass 0.1. ``min_queries`` (default 1, ACT's behaviour) ignores keys seen by fewer queries.
``mass`` is the share of the head's total attention the token absorbs (column sum / number of
real query rows).

Inputs: the full ``pattern`` when captured, or the ``stats["received"]`` column sums. Both are read
over real query rows only (the kernels leave padding rows out of ``received``), so a padded item
scores exactly what it scores captured alone, with left or right padding.

Cross-attention (an encoder-decoder's ``trace.cross``): keys are the encoder's tokens and queries the decoder's,
so sinks, ``N`` and the token categories are the encoder's (``trace.key_side()``), and every real decoder query
sees every real key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.trace import Trace

from .results import ProbeResult
from .tokens import to_numpy, token_categories, token_mask

RULES = ("act_relative", "act", "relative")
#: One line per rule, for selectors and help texts (the first is the default).
RULE_LABELS = {"act_relative": "default (score > max(0.1, 5/N))", "act": "ACT released (score > 0.1)",
               "relative": "relative (score > 5/N)"}


@dataclass(frozen=True, eq=False)
class SinkResult(ProbeResult):
    """Which tokens are attention sinks in which heads.

    Attributes:
        scores: ``[L, B, H, N]`` mean attention received from the queries that can see each key (0 on padding).
        mass: ``[L, B, H, N]`` share of the head's attention absorbed by each key.
        is_sink: ``[L, B, H, N]`` bool.
        layers: layer index of each entry of the first axis.
        tokens: ``tokens[b][n]``.
        categories: ``categories[b][n]`` one of ``initial, image, special, punctuation, other`` ("" on padding).
        rule: ``act_relative`` | ``act`` | ``relative``.
        threshold: ACT's absolute threshold (used by ``act`` and ``act_relative``).
        alpha: the multiple of uniform attention (used by ``relative`` and ``act_relative``).
        hidden: whether each head's first detected sink was dropped.
        source: ``pattern`` | ``received``.
    """

    scores: np.ndarray
    mass: np.ndarray
    is_sink: np.ndarray
    layers: tuple[int, ...]
    tokens: list[list[str]]
    categories: list[list[str]]
    rule: str
    threshold: float
    alpha: float
    hidden: bool
    source: str
    probe = "sinks"

    @property
    def sink_mass(self) -> np.ndarray:
        """``[L, B, H]`` attention share absorbed by the sinks of each head."""
        return (self.mass * self.is_sink).sum(-1)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, batch, head, sink token): ``score``, ``mass``, ``token``, ``category``."""
        li, b, h, n = np.nonzero(self.is_sink)
        return pd.DataFrame({
            "layer": np.asarray(self.layers, dtype=int)[li], "batch": b, "head": h,
            "position": n, "token": [self.tokens[bb][nn] for bb, nn in zip(b, n)],
            "category": [self.categories[bb][nn] for bb, nn in zip(b, n)],
            "score": self.scores[li, b, h, n], "mass": self.mass[li, b, h, n],
        })

    def token_summary(self) -> pd.DataFrame:
        """One row per sink token: in how many (layer, head) pairs it is a sink, and its mean mass there."""
        frame = self.to_frame()
        if frame.empty:
            return pd.DataFrame(columns=["batch", "position", "token", "category", "n_heads", "n_layers", "mean_mass"])
        grouped = frame.groupby(["batch", "position", "token", "category"], as_index=False)
        return grouped.agg(n_heads=("head", "size"), n_layers=("layer", "nunique"), mean_mass=("mass", "mean"))


def _visibility(mask: np.ndarray, query_rows: np.ndarray, causal: bool) -> np.ndarray:
    """``[B, Q, K]`` bool: query row ``q`` may attend to real key ``k``."""
    n = mask.shape[1]
    vis = query_rows[:, :, None] & mask[:, None, :]  # (B, Q, K)
    if causal:
        vis = vis & np.tril(np.ones((n, n), dtype=bool))[None]
    return vis


def _column_stats(trace: Trace, layer: int, rows: np.ndarray, mask: np.ndarray, source: str):
    """``(column sums [B, H, K], visible-query counts [B, 1, K], attending rows [B, 1, 1])`` for one layer.

    ``rows`` ``[B, Q]``: the real queries; ``mask`` ``[B, K]``: the real keys (the same for self-attention).
    """
    rec = trace.layers[layer]
    if source == "pattern":
        pattern = to_numpy(rec.pattern)  # (B, H, Q, K)
        colsum = (pattern * rows[:, None, :, None]).sum(axis=2)  # (B, H, K)
    else:
        colsum = to_numpy(rec.stats["received"])  # (B, H, K) already summed over real query rows only
    vis = _visibility(mask, rows, trace.meta.causal and not trace.is_cross)  # (B, Q, K)
    count = vis.sum(axis=1)[:, None, :]  # (B, 1, K)
    live = vis.any(axis=2).sum(axis=1)[:, None, None]  # (B, 1, 1)
    return colsum * mask[:, None, :], count, live


def _pick_source(trace: Trace, layers) -> tuple[str, tuple[int, ...]]:
    """Use patterns when every chosen layer has one, else ``stats["received"]``."""
    chosen = sorted(trace.layers) if layers is None else sorted({int(i) % trace.meta.n_layers for i in layers})
    missing = [i for i in chosen if i not in trace.layers]
    if missing or not chosen:
        raise ValueError(
            f"sink_tokens: layers {missing or chosen} were not captured; capture them with Capture(layers=...)"
        )
    if "pattern" in trace.meta.captured and all(trace.layers[i].pattern is not None for i in chosen):
        return "pattern", tuple(chosen)
    if all("received" in trace.layers[i].stats for i in chosen):
        return "received", tuple(chosen)
    raise ValueError(
        "sink_tokens needs attention patterns or the 'received' statistic for every chosen layer; the Trace "
        f"captured {list(trace.meta.captured) or 'nothing'}. "
        "Capture again with Capture(pattern=True) or Capture(stats=True)."
    )


def check_rule(rule: str) -> None:
    """Raise a ValueError naming the rules when ``rule`` is not one of :data:`RULES`."""
    if rule not in RULES:
        raise ValueError(f"Unknown sink rule {rule!r}; choose from {RULES}")


def sink_cutoff(rule: str, threshold: float, alpha: float, n_real):
    """The score a key must exceed to be a sink, for items of ``n_real`` real tokens.

    Args:
        rule: one of :data:`RULES` (see the module docstring).
        threshold: ACT's absolute threshold (0.1).
        alpha: the multiple of uniform attention ``1 / n_real`` (5).
        n_real: real tokens per item, a numpy array or torch tensor (>= 1) broadcastable to the scores.

    Returns:
        ``threshold`` (``act``), ``alpha / n_real`` (``relative``) or their maximum (``act_relative``).
    """
    check_rule(rule)
    if rule == "act":
        return threshold
    relative = alpha / n_real
    return relative if rule == "relative" else relative.clip(min=threshold)


def _drop_first(is_sink: np.ndarray) -> np.ndarray:
    """Clear the lowest-position sink of every head (ACT's ``indices[1:]``)."""
    out = is_sink.copy()
    first = is_sink.argmax(axis=-1)  # (L, B, H)
    has = is_sink.any(axis=-1)
    li, b, h = np.nonzero(has)
    out[li, b, h, first[li, b, h]] = False
    return out


def sink_tokens(
    trace: Trace, *, rule: str = "act_relative", threshold: float = 0.1, alpha: float = 5.0, hidden: bool = False,
    min_queries: int = 1, layers=None,
) -> SinkResult:
    """Find attention-sink tokens per layer and head.

    Args:
        trace: a Trace with ``pattern`` (preferred) or ``stats`` including ``received``.
        rule: ``act_relative`` (``score > max(threshold, alpha / N)``, N = the item's real tokens; default) |
            ``act`` (``score > threshold``, ACT's released code) | ``relative`` (``score > alpha / N``).
        threshold: ACT's absolute threshold (0.1).
        alpha: multiple of uniform attention (not verified in the paper; 5 here).
        hidden: drop each head's first detected sink (ACT's hidden sinks).
        min_queries: keys seen by fewer queries are never sinks (1 = ACT).
        layers: layers to scan; ``None`` = every captured layer.

    Returns:
        :class:`SinkResult`.

    Example:
        >>> sinks = sink_tokens(trace)             # doctest: +SKIP
        >>> sinks.token_summary()                  # doctest: +SKIP
    """
    check_rule(rule)
    source, chosen = _pick_source(trace, layers)
    keys = trace.key_side()  # the trace itself, or a cross-attention Trace's encoder tokens
    rows, mask = token_mask(trace), token_mask(keys)  # (B, Q), (B, K)
    n_real = mask.sum(axis=1)[:, None, None]  # (B, 1, 1)
    scores, masses, eligible = [], [], []
    for i in chosen:
        colsum, count, live = _column_stats(trace, i, rows, mask, source)
        scores.append(np.where(count > 0, colsum / np.maximum(count, 1), 0.0))  # (B, H, K)
        masses.append(colsum / np.maximum(live, 1))  # (B, H, K)
        eligible.append((count >= max(min_queries, 1)) & mask[:, None, :])  # (B, 1, K)
    score = np.stack(scores)  # (L, B, H, N)
    cutoff = sink_cutoff(rule, threshold, alpha, np.maximum(n_real, 1))  # scalar or (B, 1, 1)
    is_sink = (score > cutoff) & np.stack(eligible)  # (L, B, H, N)
    if hidden:
        is_sink = _drop_first(is_sink)
    return SinkResult(
        scores=score, mass=np.stack(masses) * mask[None, :, None, :], is_sink=is_sink, layers=chosen,
        tokens=[list(t) for t in keys.tokens], categories=[token_categories(keys, b) for b in range(len(mask))],
        rule=rule, threshold=float(threshold), alpha=float(alpha), hidden=hidden, source=source,
    )
