"""Known circuits by their attention stripes: induction heads and previous-token heads.

Standard definitions (Olsson et al. 2022, "In-context learning and induction heads"): on a sequence that ends in a
repeated random block, an induction head attends from each token of the second copy to the token after its earlier
occurrence; a previous-token head attends from each token to the one before it. A head's score is its mean attention
along that stripe of the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.core.trace import Trace

from .results import ProbeResult


@dataclass(frozen=True, eq=False)
class HeadScores(ProbeResult):
    """One score per head.

    Attributes:
        scores: ``[L, H]`` mean attention along the pattern's stripe (see ``kind``).
        kind: ``induction`` or ``previous_token``.
        n_positions: query positions averaged per head (over the batch).
    """

    scores: np.ndarray
    kind: str
    n_positions: int
    table_name = "head-scores"

    @property
    def probe(self) -> str:
        """The registry name of the probe that made the scores (``induction`` or ``previous-token``)."""
        return self.kind.replace("_", "-")

    def head_grid(self, item: int = 0) -> tuple[np.ndarray, list[int]]:
        """``([L, H] scores, layers)``, the per-head view the dashboard draws (``item`` is unused: the scores
        are means over the batch)."""
        return self.scores, list(range(self.scores.shape[0]))

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, score``."""
        n_layers, n_heads = self.scores.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        return pd.DataFrame({"layer": layer, "head": head, "score": self.scores.reshape(-1)})

    def heads(self, min_score: float) -> list[tuple[int, int]]:
        """Heads scoring at least ``min_score``, highest first."""
        order = np.argsort(-self.scores.reshape(-1), kind="stable")
        n_heads = self.scores.shape[1]
        return [divmod(int(i), n_heads) for i in order if self.scores.reshape(-1)[i] >= min_score]


def repeat_period(tokens: list[str]) -> int:
    """The longest ``L`` such that ``tokens`` ends with two copies of the same ``L`` tokens (0 if none)."""
    n = len(tokens)
    for period in range(n // 2, 0, -1):
        if tokens[n - 2 * period:n - period] == tokens[n - period:]:
            return period
    return 0


def _patterns(trace: Trace, probe: str) -> list[torch.Tensor]:
    trace.require("pattern", probe)
    trace.require_self_attention(probe)  # stripes (i, i - 1), (i, i - period + 1) index one sequence
    return [trace.layer(i).pattern.double() for i in range(trace.meta.n_layers)]  # each (B, H, Q, K)


def _stripe_scores(trace: Trace, probe: str, pairs: list[tuple[int, int, int]], kind: str) -> HeadScores:
    """Mean of ``pattern[b, :, i, j]`` over ``(b, i, j)`` in ``pairs``, per layer and head."""
    if not pairs:
        raise ValueError(f"{probe}: the Trace has no query positions to score")
    b, i, j = (torch.tensor(x) for x in zip(*pairs))
    scores = np.stack([p[b, :, i, j].mean(0).numpy() for p in _patterns(trace, probe)])  # (L, H)
    return HeadScores(scores=scores, kind=kind, n_positions=len(pairs))


def induction_scores(trace: Trace, period: int | None = None) -> HeadScores:
    """Induction score per head (Olsson et al. 2022, "In-context learning and induction heads").

    On a sequence ending in a repeated random block of ``L`` tokens (``<bos> x x``), the mean attention
    from each token of the second copy to the token after its earlier occurrence (``i -> i - L + 1``).

    Args:
        trace: a Trace with ``Capture(pattern=True)`` on every layer.
        period: ``L``; ``None`` finds the longest repeat at the end of each item's real tokens.

    Returns:
        :class:`HeadScores` (``kind="induction"``).
    """
    trace.require_self_attention("induction_scores")
    pairs = []
    for b, toks in enumerate(trace.tokens):
        real = trace.real_positions(b).tolist()  # left or right padding
        n = len(real)
        length = period or repeat_period([toks[p] for p in real])
        if length < 1 or 2 * length > n:
            raise ValueError(f"induction_scores: batch item {b} does not end with a repeated block; feed a repeated "
                             "random sequence (e.g. '<bos> x x') or pass period=")
        pairs += [(b, real[i], real[i - length + 1]) for i in range(n - length, n)]
    return _stripe_scores(trace, "induction_scores", pairs, "induction")


def previous_token_scores(trace: Trace) -> HeadScores:
    """Previous-token score per head: mean attention from each real token (but the first) to the one before it."""
    pairs = []
    for b in range(trace.batch_size):
        real = trace.real_positions(b).tolist()
        pairs += list(zip([b] * len(real), real[1:], real[:-1]))
    return _stripe_scores(trace, "previous_token_scores", pairs, "previous_token")
