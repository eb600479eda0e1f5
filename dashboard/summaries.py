"""What the Heads and Attention pages show, computed from the few tensors each view needs.

Every function takes the app's :class:`~attnlab.dashboard.data.DashboardData`, an open Run, a trace
name and a batch item; results are cached on the data object, keyed by the Run's manifest mtime.
"""

from __future__ import annotations

import numpy as np
import torch

from attnlab.core.capture import DEFAULT_KEY_SETS
from attnlab.core.trace import key_set_mask, real_positions_of
from attnlab.core.trace_files import meta_of, segments_of
from attnlab.interventions.known_circuits import CircuitReport
from attnlab.interventions.patching import PatchingResult
from attnlab.kernels.api import attention
from attnlab.kernels.reference import pattern_stats
from attnlab.probes.results import result_from_table
from attnlab.probes.vhd import VHDResult

from .data import DashboardData, axis_side, is_cross, trace_header

#: statistic -> label shown in the selector and on the colour bar.
STAT_LABELS = {
    "entropy": "entropy (nats)",
    "max": "largest attention weight",
    "first": "mass on the first token",
    "special": "mass on special tokens",
    "image": "image-attention share",
    "sinks": "sink mass",
    "vhd": "VHD",
    "patching": "patching effect",
    "induction": "induction score",
    "previous_token": "previous-token score",
}
#: statistics read from a stored per-head result: ``stat -> (the table's kind, the part of the result that has the
#: grid, or None for the result itself)``; the kinds are the result types' own ``table_name`` (the tables
#: ``--save`` and the demo store).
RESULT_STATS = {
    "vhd": (VHDResult.table_name, None),
    "patching": (PatchingResult.table_name, None),
    "induction": (CircuitReport.table_name, "induction"),
    "previous_token": (CircuitReport.table_name, "previous_token"),
}
#: statistics read as a per-query mass of a key set: the capture's default sets but text (the rest).
MASS_STATS = tuple(kind for kind in DEFAULT_KEY_SETS if kind != "text")


def real_positions(data: DashboardData, run, trace: str, item: int, axis: str = "query") -> np.ndarray:
    """Positions of the real (non-padding) tokens of one batch item (:func:`attnlab.core.trace.real_positions_of`)
    along ``axis``: the queries, or the keys (a cross-attention trace's encoder tokens, :func:`axis_side`)."""
    header = trace_header(run, trace)
    check_item(header, item)
    return real_positions_of(data.tensor(run, trace, axis_side(header, axis)["mask"]), item).numpy()


def check_item(header: dict, item: int) -> None:
    """ValueError unless ``item`` is a batch item of the trace."""
    if not 0 <= int(item) < len(header["tokens"]):
        raise ValueError(f"Item {item} is not in this trace, which holds {len(header['tokens'])} item(s)")


def _captured(data: DashboardData, run, trace: str) -> set[str]:
    """Field names stored for the first captured layer (``pattern``, ``q``, ``stats.entropy``, ...)."""
    header = trace_header(run, trace)
    if not header["layers"]:
        return set()
    prefix = f"layer.{header['layers'][0]}."
    return {k[len(prefix):] for k in data.tensor_keys(run, trace) if k.startswith(prefix)}


def head_stat_options(data: DashboardData, run, trace: str) -> list[dict]:
    """The statistics this Run can colour the head grid by, as dropdown options."""
    fields = _captured(data, run, trace)
    has_pattern = "pattern" in fields
    kinds = {s.kind for segs in segments_of(axis_side(trace_header(run, trace), "key")) for s in segs}
    out = []
    if has_pattern or "stats.entropy" in fields:
        out.append("entropy")
    if has_pattern or "stats.max" in fields:
        out.append("max")
    for name in MASS_STATS:
        if name != "first" and name not in kinds:
            continue
        if has_pattern or f"stats.mass.{name}" in fields:
            out.append(name)
    if has_pattern or "stats.received" in fields:
        out.append("sinks")
    if trace == "main":
        out += [stat for stat, (kind, _) in RESULT_STATS.items() if run.results_of(kind)]
    return [{"label": STAT_LABELS[s], "value": s} for s in out]


def head_statistic(data: DashboardData, run, trace: str, stat: str, item: int) -> tuple[np.ndarray, list[int]]:
    """``([L, H] values, layers)`` of a per-head statistic for one batch item.

    Row statistics (entropy, largest weight, key-set masses) are averaged over the item's real query
    rows; the image share over its text queries when it has any (an LVLM's prompt), else over all rows.
    """
    if stat not in STAT_LABELS:
        raise ValueError(f"Unknown statistic {stat!r}; choose from {sorted(STAT_LABELS)}")
    return data.cached(run, ("head-stat", trace, stat, int(item)), lambda: _head_statistic(data, run, trace, stat, item))


def _head_statistic(data, run, trace, stat, item):
    header = trace_header(run, trace)
    check_item(header, item)
    layers = list(header["layers"])
    if stat == "sinks":
        from attnlab.probes.sinks import sink_tokens

        fields = ("pattern",) if "pattern" in _captured(data, run, trace) else ("stats.received",)
        result = sink_tokens(data.partial_trace(run, trace, layers, fields, item=item))
        return result.sink_mass[:, 0], list(result.layers)  # (L, H)
    if stat in RESULT_STATS:
        return _result_grid(run, stat, item)
    rows = _query_rows(data, run, trace, item, stat)
    values = [_row_stat(data, run, trace, i, stat, item)[:, rows].mean(axis=-1) for i in layers]  # (H,) each
    return np.stack(values), layers


def _query_rows(data, run, trace, item, stat) -> np.ndarray:
    real = real_positions(data, run, trace, item)
    if stat != "image":
        return real
    segs = segments_of(trace_header(run, trace))[item]
    last_image = max((s.end for s in segs if s.kind == "image"), default=0)
    text = np.array([n for s in segs if s.kind == "text" and s.start >= last_image for n in range(s.start, s.end)], int)
    return text if text.size else real


def _row_stat(data, run, trace, layer, stat, item) -> np.ndarray:
    """``[H, Q]`` per-query statistic of one layer and item, from the stats when stored, else the pattern."""
    key = {"entropy": "stats.entropy", "max": "stats.max"}.get(stat, f"stats.mass.{stat}")
    if data.has_field(run, trace, layer, key):
        return data.layer_part(run, trace, layer, key, item).float().numpy()
    pattern = data.layer_part(run, trace, layer, "pattern", item).float()[None]  # (1, H, Q, K)
    if stat in ("entropy", "max"):
        return pattern_stats(pattern, (stat,))[stat][0].numpy()
    mask = torch.from_numpy(_key_set(data, run, trace, item, stat))  # (N,); keys past the prompt are in no set
    mask = torch.nn.functional.pad(mask, (0, max(0, pattern.shape[-1] - mask.numel())))[:pattern.shape[-1]]  # (K,)
    return pattern_stats(pattern, ("mass",), {stat: mask[None]})[f"mass.{stat}"][0].numpy()


def _key_set(data, run, trace, item, kind) -> np.ndarray:
    """``[K]`` bool key set of one item, by the Trace's own definition (left padding moves ``first``), over the
    keys (a cross-attention trace's encoder tokens)."""
    keys = axis_side(trace_header(run, trace), "key")
    key_mask = data.tensor(run, trace, keys["mask"])[item:item + 1]  # (1, K)
    return key_set_mask(key_mask, [segments_of(keys)[item]], kind)[0].numpy()


def _result_grid(run, stat, item) -> tuple[np.ndarray, list[int]]:
    """The latest stored result of the statistic's kind, rebuilt from its table (:func:`result_from_table`), as
    its own ``head_grid``; layers with no value (heads never patched) are left out."""
    kind, part = RESULT_STATS[stat]
    name = run.results_of(kind)[-1]
    try:
        result = result_from_table(run.result(name))
    except ValueError as err:
        raise ValueError(f"The {name!r} table of this Run holds no stored {kind} result; save it again with the "
                         f"CLI's --save or result.save(run) ({err})") from err
    grid, layers = (getattr(result, part) if part else result).head_grid(item)
    keep = [i for i in range(grid.shape[0]) if np.isfinite(grid[i]).any()]
    return np.asarray(grid, float)[keep], [layers[i] for i in keep]


#: what each of ``TraceMeta.score_terms`` is, for messages
SCORE_TERM_NAMES_TEXT = ("bias: a position bias such as ALiBi or T5's relative bias; softcap: logit soft-capping; "
                         "mask: a mask beyond causality and padding, such as a sliding window")


def attention_matrix(data: DashboardData, run, trace: str, layer: int, head: int,
                     item: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One head's attention over an item's real tokens: ``([q, k] matrix, query positions, source)``.

    Rows are the real queries, columns the real keys: the same tokens for self-attention, the encoder's for a
    cross-attention trace (their positions: ``real_positions(..., axis="key")``). The stored pattern when
    captured; otherwise recomputed as ``softmax(score_scale * q k^T)`` from the stored queries and keys (causal
    mask for decoders' self-attention; ``1 / sqrt(d_head)`` when the Run predates ``TraceMeta.score_scale``), which
    is what the model applied unless a Plan changed the weights after the softmax. A model whose scores hold more
    (``TraceMeta.score_terms``: a position bias, soft-capping, a sliding window) is refused: its map needs the
    pattern.
    """
    return data.cached(run, ("attention", trace, int(layer), int(head), int(item)),
                       lambda: _attention_matrix(data, run, trace, int(layer), int(head), int(item)))


def _attention_matrix(data, run, trace, layer, head, item):
    header = trace_header(run, trace)
    meta = meta_of(header)
    if layer not in header["layers"]:
        raise ValueError(f"Layer {layer} was not captured in this trace; captured layers: {header['layers']}")
    if not 0 <= head < meta.n_heads:
        raise ValueError(f"Head {head} is outside the {meta.n_heads} heads of this model")
    real, keys = real_positions(data, run, trace, item), real_positions(data, run, trace, item, "key")
    if data.has_field(run, trace, layer, "pattern"):
        pattern = data.layer_part(run, trace, layer, "pattern", item, head).float().numpy()  # (Q, K)
        return pattern[np.ix_(real, keys)], real, "pattern"
    if data.has_field(run, trace, layer, "q") and data.has_field(run, trace, layer, "k"):
        if meta.score_terms:
            raise ValueError(f"This model's attention scores hold {' and '.join(meta.score_terms)} besides q·k "
                             f"({SCORE_TERM_NAMES_TEXT}), so the map cannot be rebuilt from the stored queries and "
                             "keys; capture with --capture pattern to see it")
        q = data.layer_part(run, trace, layer, "q", item, head).float()[real]  # (q, d); the kernels work in float32
        k = data.layer_part(run, trace, layer, "k", item, head).float()[keys]  # (k, d)
        causal = meta.causal and not is_cross(header)  # cross-attention sees every encoder token
        _, st = attention(q[None, None], k[None, None], k.new_zeros(1, 1, len(keys), 1), causal=causal,
                          scale=meta.score_scale, impl="eager", return_pattern=True)
        return st.pattern[0, 0].numpy(), real, "q·k"
    raise ValueError("This trace stored neither attention patterns nor queries and keys; capture with "
                     "Capture(pattern=True) or Capture(qk=True) to see attention maps")


def grid_values(header: dict, item: int, values: np.ndarray, positions: np.ndarray,
                segment: int = 0) -> tuple[np.ndarray, str] | None:
    """Values over an item's real tokens laid on the patch grid of its ``segment``-th image span."""
    images = [s for s in segments_of(header)[item] if s.kind == "image" and s.grid]
    if not images:
        return None
    seg = images[min(segment, len(images) - 1)]
    full = np.zeros(len(header["tokens"][item]))
    full[positions] = values
    return full[seg.start:seg.end].reshape(seg.grid), seg.label or "image"


def text_cells(header: dict, item: int, matrix: np.ndarray, real: np.ndarray, focus: int,
               keys: np.ndarray | None = None) -> dict:
    """What the text view draws for a focused query: one cell per text token, one per image span.

    An image span becomes a single cell: its value is the attention the focus pays to all its patches
    (summed) and the mean attention its patches pay to the focus; its position is ``-1`` (not focusable).

    Args:
        header: the trace header.
        item: batch item.
        matrix: ``[q, k]`` attention over the item's real queries and keys.
        real: ``[q]`` the queries' positions.
        focus: the focused query position (must not be an image patch).
        keys: ``[k]`` the keys' positions, for a cross-attention trace (keys the encoder's tokens,
            :func:`attnlab.dashboard.data.axis_side`); ``None``: the keys are the queries.

    Returns:
        ``tokens``, ``positions``, ``attends_to``, ``attended_by`` and ``focus`` (index into the cells). With
        ``keys``: ``attends_to`` runs over the key cells ``keys`` (``tokens``, ``positions``, ``outline``: the
        key the focus attends to most) and ``attended_by`` is the attention each query pays to that key.
    """
    index = {int(n): i for i, n in enumerate(real)}
    row = matrix[index[focus]]  # (k,)
    queries = _cells(header, item, real)
    out = {"tokens": [c[0] for c in queries], "positions": [c[1] for c in queries],
           "focus": next((i for i, c in enumerate(queries) if c[1] == focus), 0)}
    if keys is None:
        col = matrix[:, index[focus]]  # (q,)
        return {**out, "attends_to": [float(row[m].sum()) for _, _, m in queries],
                "attended_by": [float(col[m].mean()) for _, _, m in queries]}
    key_cells = _cells(axis_side(header, "key"), item, keys)
    attends_to = [float(row[m].sum()) for _, _, m in key_cells]
    outline = int(np.argmax(attends_to))
    col = matrix[:, key_cells[outline][2]].mean(axis=1)  # (q,)
    return {**out, "attends_to": attends_to, "attended_by": [float(col[m].mean()) for _, _, m in queries],
            "keys": {"tokens": [c[0] for c in key_cells], "positions": [c[1] for c in key_cells], "outline": outline}}


def _cells(header: dict, item: int, positions: np.ndarray) -> list[tuple[str, int, list[int]]]:
    """``(token, position, members)`` of each text-view cell over ``positions`` ``[n]`` (a side's real tokens):
    a text token is itself; an image span is one cell ``img RxC`` at position ``-1``; ``members`` index
    ``positions``."""
    tokens = header["tokens"][item]
    spans = {s.start: s for s in segments_of(header)[item] if s.kind == "image" and s.grid}
    inside = {n for s in spans.values() for n in range(s.start, s.end)}
    index = {int(n): i for i, n in enumerate(positions)}
    cells = []
    for n in (int(p) for p in positions):
        if n in spans:
            rows, cols = spans[n].grid
            cells.append((f"img {rows}×{cols}", -1,
                          [index[p] for p in range(spans[n].start, spans[n].end) if p in index]))
        elif n not in inside:
            cells.append((tokens[n], n, [index[n]]))
    return cells
