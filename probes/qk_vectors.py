"""Query and key vectors of attention heads gathered from Traces or Runs, one row per real token, with the
metadata each point of an AttentionViz embedding carries (input, position, token, segment, patch row and column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnlab.core.runs import Run
from attnlab.core.trace import Trace

from .tokens import segment_kinds, to_numpy, token_categories, token_mask


META_COLUMNS = ("input", "trace", "batch", "position", "token", "segment", "category", "patch_row", "patch_col")


@dataclass(frozen=True)
class QKVectors:
    """Queries and keys gathered over inputs, real tokens only, in (trace, batch, position) order.

    Attributes:
        queries: ``[M, d_head]`` or ``[M, H, d_head]`` queries as captured (before any scaling).
        keys: keys of the same tokens, same shape.
        tokens: ``M`` rows of token metadata (:data:`META_COLUMNS`).
        rank: ``[M]`` index of each token among the real tokens of its input.
        causal: whether a query sees only the keys at or before its own position.
        d_head: head width.
    """

    queries: np.ndarray
    keys: np.ndarray
    tokens: pd.DataFrame
    rank: np.ndarray
    causal: bool
    d_head: int

    def head(self, head: int) -> "QKVectors":
        """The vectors of one head from a per-layer gathering."""
        return QKVectors(self.queries[:, head], self.keys[:, head], self.tokens, self.rank, self.causal, self.d_head)


def _load(item, layers: list[int] | None) -> Trace:
    if isinstance(item, Trace):
        return item
    if isinstance(item, Run):
        n = int(item.manifest["traces"]["main"]["meta"]["n_layers"]) if "main" in item.manifest["traces"] else 0
        wanted = None if layers is None or n == 0 else sorted({i % n for i in layers})
        return item.trace("main", layers=wanted, with_vision=False)
    raise TypeError(f"Expected a Trace, a Run or a list of them, got {type(item).__name__}")


def as_traces(traces, layers: list[int] | None = None) -> list[Trace]:
    """A Trace, a Run (its ``main`` Trace, only ``layers`` loaded) or a sequence of them -> list of Traces."""
    items = [traces] if isinstance(traces, (Trace, Run)) else list(traces)
    if not items:
        raise ValueError("Give at least one Trace (or Run) to embed")
    return [_load(t, layers) for t in items]


def _token_rows(trace: Trace, t_index: int, first_input: int) -> list[tuple]:
    rows = []
    for b in range(trace.batch_size):
        kinds, cats = segment_kinds(trace, b), token_categories(trace, b)
        patches = [s for s in trace.segments[b] if s.kind == "image" and s.grid]
        start_cols = {n: (s.start, s.grid[1]) for s in patches for n in range(s.start, s.end)}
        for n in trace.real_positions(b).tolist():
            start, cols = start_cols.get(n, (None, None))
            row, col = divmod(int(n) - start, cols) if cols else (-1, -1)
            rows.append((first_input + b, t_index, b, int(n), trace.tokens[b][n], kinds[n], cats[n], row, col))
    return rows


def gather_layer(traces, layer: int) -> QKVectors:
    """Every head's queries and keys of one layer over all inputs: ``[M, H, d_head]`` each.

    Raises:
        ValueError: a Trace without ``qk`` (naming ``Capture(qk=True)``), a missing layer, or Traces of
            different head shapes.
    """
    traces = as_traces(traces, [layer])
    first = traces[0].meta
    qs, ks, rows, ranks, first_input = [], [], [], [], 0
    for t_index, trace in enumerate(traces):
        trace.require("qk", "QKEmbedding")
        rec = trace.layer(layer)
        if rec.q is None or rec.k is None:
            raise ValueError(f"Layer {layer} has no queries/keys; capture it with Capture(qk=True, layers=None)")
        if (trace.meta.n_heads, trace.meta.d_head, trace.meta.causal) != (first.n_heads, first.d_head, first.causal):
            raise ValueError(f"Trace {t_index} comes from a model of another shape ({trace.meta.model}); "
                             f"embed Traces of one model (first: {first.model})")
        mask = token_mask(trace)  # (B, N)
        qs.append(to_numpy(rec.q).transpose(0, 2, 1, 3)[mask].astype(np.float32))  # (M_t, H, d)
        ks.append(to_numpy(rec.k).transpose(0, 2, 1, 3)[mask].astype(np.float32))  # (M_t, H, d)
        rows += _token_rows(trace, t_index, first_input)
        ranks += [np.arange(c) for c in mask.sum(1)]
        first_input += trace.batch_size
    tokens = pd.DataFrame(rows, columns=list(META_COLUMNS))
    if tokens.empty:
        raise ValueError("The Traces hold no real tokens (token_mask is all False)")
    return QKVectors(np.concatenate(qs), np.concatenate(ks), tokens, np.concatenate(ranks), first.causal, first.d_head)


def resolve_head(n_heads: int, head: int) -> int:
    """``head`` as an index in ``0..n_heads-1`` (negative counts from the end); ValueError outside."""
    if not -n_heads <= int(head) < n_heads:
        raise ValueError(f"head {head} is outside the layer's {n_heads} heads; pass 0..{n_heads - 1}")
    return int(head) % n_heads


def collect_qk(traces, layer: int, head: int) -> QKVectors:
    """Queries and keys ``[M, d_head]`` of one head over all inputs (real tokens only)."""
    vectors = gather_layer(traces, layer)
    return vectors.head(resolve_head(vectors.queries.shape[1], head))


def sample_pairs(vectors: QKVectors, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (query, key) index pairs inside one input, the key visible to the query (causal-aware)."""
    rng = np.random.default_rng(seed)
    groups = vectors.tokens["input"].to_numpy()
    start = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    count = np.diff(np.r_[start, len(groups)])
    owner = np.repeat(np.arange(len(start)), count)  # (M,)
    qi = rng.integers(0, len(groups), n_pairs)
    visible = vectors.rank[qi] + 1 if vectors.causal else count[owner[qi]]
    ki = start[owner[qi]] + np.floor(rng.random(n_pairs) * visible).astype(int)
    return qi, ki
