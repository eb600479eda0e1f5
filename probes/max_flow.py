"""Maximum flow with real-valued capacities, exact up to a proven bound, on top of scipy's integer Dinic.

``scipy.sparse.csgraph.maximum_flow`` is compiled and fast but takes int32 capacities only.
Each max flow here takes two integer passes:

1. Capacities are floored at ``scale = 2**30 / (source out-capacity)``. The pushed flow, divided by
   the scale, is feasible for the real capacities: a lower bound. The nodes reachable from the
   source along unsaturated integer arcs define a cut; its real capacity is an upper bound. The
   two differ by less than ``(cut edges) / scale``, about 1e-7 here.
2. The gap is closed on the real residual graph of pass 1. Shortcut: when pass 1 stopped within
   1e-6 of the source's out-capacity (or the sink's in-capacity), that terminal cut is the
   certificate, and if every leftover on its arcs can be routed through arcs with at least the
   gap to spare, the max flow equals the cut exactly (typical for attention graphs). Otherwise the
   residual graph is capped at the gap (no path can carry more) and every strongly connected group
   of arcs able to carry the whole gap is contracted (a cut through such a group costs at least the
   gap, so it cannot be the minimum). What remains is small; an integer max flow at
   ``scale = 2**30 / gap`` closes the gap to about ``(cut edges)**2 / 2**60``.

Each answer comes with the remaining proven gap (``error_bound``), so "exact" is checked, not assumed.

Many sinks, one source (:func:`max_flows_from`): sinks without out-arcs (the input tokens of the
attention graph) are dead ends, useless to every other sink's flow. They are replaced by one slot
node whose in-arcs take the current sink's in-capacities, so each max flow runs on a graph without
the other dead ends, and everything else (arc pattern, pass-1 integer capacities) is built once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow

#: Integer capacities stay at or below this (scipy's max flow works in int32).
INT_CAPACITY = 2**30
#: A pass-1 flow this close to the source's or sink's capacity is checked against that cut directly.
QUICK_GAP = 1e-6


@dataclass(frozen=True)
class ArcPattern:
    """The arcs of a residual graph: every edge and its reverse, in CSR order (rows sorted by head).

    Attributes:
        indptr: ``[V + 1]`` row pointers.
        indices: ``[E]`` arc heads (int32), sorted within each row (the order scipy returns flows in).
        tails: ``[E]`` arc tails.
        forward: ``[E]`` bool, True for arcs that are edges (the others are reverse arcs).
        forward_indptr: ``[V + 1]`` row pointers of the edges alone.
        forward_indices: heads of the edges alone.
        reverse: ``[E]`` index of each arc's reverse arc.
    """

    indptr: np.ndarray
    indices: np.ndarray
    tails: np.ndarray
    forward: np.ndarray
    forward_indptr: np.ndarray
    forward_indices: np.ndarray
    reverse: np.ndarray

    @classmethod
    def from_edges(cls, rows: np.ndarray, cols: np.ndarray, n_nodes: int) -> "ArcPattern":
        """Build from edge lists ``rows -> cols`` (no duplicates, no antiparallel pairs needed)."""
        tails = np.concatenate([rows, cols])
        heads = np.concatenate([cols, rows])
        key = np.unique(tails.astype(np.int64) * n_nodes + heads)  # sorted, duplicates (antiparallel pairs) merged
        tails, heads = np.divmod(key, n_nodes)
        forward = np.zeros(key.size, dtype=bool)
        forward[np.searchsorted(key, rows.astype(np.int64) * n_nodes + cols)] = True
        indptr = np.searchsorted(tails, np.arange(n_nodes + 1))
        fwd_indptr = np.searchsorted(tails[forward], np.arange(n_nodes + 1))
        reverse = np.searchsorted(key, heads * n_nodes + tails)
        heads = heads.astype(np.int32)
        return cls(indptr.astype(np.int32), heads, tails, forward, fwd_indptr.astype(np.int32), heads[forward], reverse)

    @property
    def n_nodes(self) -> int:
        """V."""
        return self.indptr.size - 1

    def position(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Arc index of each ``(rows, cols)`` arc."""
        key = self.tails.astype(np.int64) * self.n_nodes + self.indices
        return np.searchsorted(key, rows.astype(np.int64) * self.n_nodes + cols)

    def forward_csr(self, values: np.ndarray) -> sp.csr_array:
        """``[V, V]`` CSR of the edges holding ``values`` (one per edge, in arc order)."""
        return sp.csr_array((values, self.forward_indices, self.forward_indptr), shape=(self.n_nodes,) * 2)

    def subgraph(self, keep: np.ndarray) -> sp.csr_array:
        """``[V, V]`` CSR of ones on the arcs where ``keep`` ``[E]`` is True."""
        kept = np.flatnonzero(keep)
        return sp.csr_array((np.ones(kept.size, dtype=np.int8), self.indices[kept], np.searchsorted(kept, self.indptr)),
                            shape=(self.n_nodes,) * 2)

    def cut_capacity(self, values: np.ndarray, inside: np.ndarray) -> float:
        """Total of ``values`` ``[E]`` over the arcs leaving the node set ``inside`` ``[V]``."""
        on_arcs = sp.csr_array((values, self.indices, self.indptr), shape=(self.n_nodes,) * 2)
        return float((on_arcs @ (~inside).astype(np.float64))[inside].sum())


def _reach(graph: sp.csr_array, source: int) -> np.ndarray:
    """``[V]`` bool: nodes reachable from ``source`` in ``graph`` (every stored entry is an arc)."""
    inside = np.zeros(graph.shape[0], dtype=bool)
    inside[breadth_first_order(graph, source, directed=True, return_predecessors=False)] = True
    return inside


def _arc_flow(pattern: ArcPattern, flow: sp.csr_array) -> np.ndarray:
    """scipy's flow matrix as ``[E]`` values in arc order."""
    if flow.nnz == pattern.indices.size and np.array_equal(flow.indices, pattern.indices):
        return flow.data
    return np.asarray(flow[pattern.tails, pattern.indices]).ravel()


def _arcs_leaving_giant(pattern: ArcPattern, comp: np.ndarray, n_comp: int) -> np.ndarray:
    """Indices of the arcs with an end outside the largest component (every arc's reverse is an arc too)."""
    giant = np.argmax(np.bincount(comp, minlength=n_comp))
    nodes = np.flatnonzero(comp != giant)
    starts, stops = pattern.indptr[nodes], pattern.indptr[nodes + 1]
    counts = stops - starts
    out = np.repeat(stops - np.cumsum(counts), counts) + np.arange(counts.sum())  # out-arcs of those nodes
    return np.union1d(out, pattern.reverse[out])


def _refine(pattern: ArcPattern, residual: np.ndarray, gap: float, source: int, sink: int) -> tuple[float, float]:
    """Pass 2: up to ``gap`` more flow in the residual graph; ``(flow found, remaining proven gap)``."""
    capped = np.minimum(residual, gap)  # (E,) no path can carry more than the gap
    n_comp, comp = connected_components(pattern.subgraph(capped >= gap), directed=True, connection="strong")
    if comp[source] == comp[sink]:
        return gap, 0.0  # a path of arcs that each carry the gap joins them
    arcs = _arcs_leaving_giant(pattern, comp, n_comp)  # arcs inside the largest group never matter
    ct, ch = comp[pattern.tails[arcs]], comp[pattern.indices[arcs]]
    keep = (ct != ch) & (capped[arcs] > 0)
    small = sp.coo_array((capped[arcs][keep], (ct[keep], ch[keep])), shape=(n_comp, n_comp)).tocsr()
    small.sum_duplicates()
    small.sort_indices()
    scale = INT_CAPACITY / gap
    ints = small.copy()
    ints.data = np.floor(np.minimum(small.data, gap) * scale).astype(np.int32)
    res = maximum_flow(ints, int(comp[source]), int(comp[sink]))
    more = min(res.flow_value / scale, gap)
    open_arcs = ints - res.flow
    open_arcs.data = (open_arcs.data > 0).astype(np.int8)
    open_arcs.eliminate_zeros()
    inside = _reach(open_arcs, int(comp[source]))[comp]
    return more, max(0.0, min(pattern.cut_capacity(capped, inside), gap) - more)


def _terminal_cut_is_tight(pattern: ArcPattern, residual: np.ndarray, gap: float, source: int, sink: int,
                           at_source: bool) -> bool:
    """Whether the ``gap`` left on the source's out-arcs (or the sink's in-arcs) can all be pushed.

    Each such arc's leftover is routed through arcs with residual ``>= gap``: from its head to the
    sink (or from the source to its tail). All routes together carry ``gap``, so every arc on them
    has room; when every leftover has a route, the terminal cut is saturated and the flow is maximal.
    """
    wide = residual >= gap  # (E,)
    if at_source:
        arcs = np.arange(pattern.indptr[source], pattern.indptr[source + 1])
        ends = pattern.indices[arcs]
        reach = _reach(pattern.subgraph(wide[pattern.reverse]), sink)  # nodes that reach the sink on wide arcs
    else:
        arcs = pattern.reverse[np.arange(pattern.indptr[sink], pattern.indptr[sink + 1])]
        ends = pattern.tails[arcs]
        reach = _reach(pattern.subgraph(wide), source)
    leftover = residual[arcs] > 0
    return bool(reach[ends[leftover]].all())


def _max_flow(pattern, cap, ints, forward_ints, scale, source, sink, out_cap, in_cap) -> tuple[float, float]:
    """Both passes for one sink.

    Args:
        pattern: the arcs.
        cap: ``[E]`` real capacities.
        ints: ``[E]`` pass-1 integer capacities; ``forward_ints`` the same on the edges alone.
        scale: pass-1 scale.
        source: source node.
        sink: sink node.
        out_cap: the source's out-capacity.
        in_cap: the sink's in-capacity.
    """
    limit = min(out_cap, in_cap)  # the terminal cuts
    res = maximum_flow(pattern.forward_csr(forward_ints), source, sink)
    flow = _arc_flow(pattern, res.flow)  # (E,) antisymmetric integer flow
    pushed = res.flow_value / scale
    gap = limit - pushed
    if gap <= QUICK_GAP:
        # limited by a terminal cut up to rounding: that cut is the certificate
        if gap <= 0:
            return limit, 0.0
        residual = np.maximum(cap - flow / scale, 0.0)  # (E,)
        if _terminal_cut_is_tight(pattern, residual, gap, source, sink, at_source=out_cap <= in_cap):
            return limit, 0.0
    else:
        inside = _reach(pattern.subgraph(ints > flow), source)
        gap = max(0.0, min(pattern.cut_capacity(cap, inside), limit) - pushed)
        if gap == 0.0:
            return pushed, 0.0
        residual = np.maximum(cap - flow / scale, 0.0)  # (E,)
    more, left = _refine(pattern, residual, gap, source, sink)
    return pushed + more, left


def max_flows_from(capacities: sp.csr_array, source: int, sinks) -> tuple[np.ndarray, np.ndarray]:
    """Maximum flow from ``source`` to each of ``sinks``, separately.

    Args:
        capacities: ``[V, V]`` CSR of non-negative real capacities.
        source: source node.
        sinks: iterable of sink nodes.

    Returns:
        ``(values [S], error_bounds [S])``: proven lower bounds on the max flows and how far below
        the true values they can be.
    """
    sinks = list(sinks)
    cap_csr = sp.csr_array(capacities, dtype=np.float64, copy=True)
    cap_csr.eliminate_zeros()
    n = cap_csr.shape[0]
    out_cap, in_cap = np.asarray(cap_csr.sum(axis=1)).ravel(), np.asarray(cap_csr.sum(axis=0)).ravel()
    dead = out_cap == 0
    dead[source] = False
    coo = cap_csr.tocoo()
    into_dead = dead[coo.col]
    holders = np.unique(coo.row[into_dead])  # nodes with an arc into some dead end
    slot = n
    pattern = ArcPattern.from_edges(np.concatenate([coo.row[~into_dead], holders]),
                                    np.concatenate([coo.col[~into_dead], np.full(holders.size, slot)]), n + 1)
    cap = np.zeros(pattern.indices.size)  # (E,)
    cap[pattern.position(coo.row[~into_dead], coo.col[~into_dead])] = coo.data[~into_dead]
    holder_arcs = pattern.position(holders, np.full(holders.size, slot))
    dead_cols = sp.csc_array((coo.data[into_dead], (np.searchsorted(holders, coo.row[into_dead]), coo.col[into_dead])),
                             shape=(holders.size, n))
    values, bounds = np.zeros(len(sinks)), np.zeros(len(sinks))
    if out_cap[source] <= 0:
        return values, bounds
    scale = INT_CAPACITY / out_cap[source]
    ints = np.floor(np.minimum(cap, out_cap[source]) * scale).astype(np.int32)  # (E,) pass-1 capacities
    forward_ints = ints[pattern.forward]  # (edges,)
    holder_edges = (np.cumsum(pattern.forward) - 1)[holder_arcs]
    for i, sink in enumerate(sinks):
        col = dead_cols[:, [sink]].toarray().ravel() if dead[sink] else np.zeros(holders.size)  # (holders,)
        cap[holder_arcs] = col
        ints[holder_arcs] = forward_ints[holder_edges] = np.floor(np.minimum(col, out_cap[source]) * scale)
        if sink != source and in_cap[sink] > 0:
            values[i], bounds[i] = _max_flow(pattern, cap, ints, forward_ints, scale, source,
                                             slot if dead[sink] else sink, out_cap[source], in_cap[sink])
    return values, bounds
