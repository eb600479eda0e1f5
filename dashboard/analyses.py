"""Probe calls behind the Flow, Sinks, QK, Circuits and Interventions pages, cached per Run.

A view the Run cannot feed (a field it did not capture, a result table it does not hold) raises
:class:`NotAvailable`, whose message the page shows with the capture option or command that adds it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attnlab.core.trace_files import meta_of
from attnlab.jobs.compare import SUMMARY_TABLE
from attnlab.probes.circuits import CircuitGraph
from attnlab.probes.flow import attention_flow
from attnlab.probes.massive import massive_activations
from attnlab.probes.qk_embedding import QKEmbedding
from attnlab.probes.qk_heads import embed_all_heads
from attnlab.probes.registry import capture_for, get_spec
from attnlab.probes.registers import high_norm_tokens
from attnlab.probes.rollout import attention_rollout
from attnlab.probes.sinks import sink_tokens

from .data import DashboardData, is_cross, trace_header


class NotAvailable(ValueError):
    """A view this Run (or this installation) cannot show; the message says why and what would enable it."""


def require_probe(run, trace: str, probe: str) -> None:
    """:class:`NotAvailable` unless the trace captured what the registry says ``probe`` reads
    (:meth:`~attnlab.probes.registry.ProbeSpec.missing`), naming the capture option that adds it, and, for a probe
    of square self-attention maps (``square``: rollout, flow, induction), unless it is a self-attention trace,
    naming the Run's traces to pick instead."""
    spec = get_spec(probe)
    header = trace_header(run, trace)
    if spec.square and is_cross(header):
        others = [name for name in run.trace_names if not is_cross(run.header(name))]
        instead = " or ".join(others) if others else "a self-attention trace"
        raise NotAvailable(f"{spec.summary[:1].upper()}{spec.summary[1:]} needs self-attention (queries and keys the "
                           f"same tokens), but {trace} is cross-attention (decoder queries over encoder keys); "
                           f"pick the trace {instead} instead.")
    captured = meta_of(header).captured
    lacking = spec.missing(captured)
    if lacking:
        raise NotAvailable(f"{spec.summary[:1].upper()}{spec.summary[1:]} needs {' and '.join(lacking)} captured; "
                           f"this trace has {', '.join(captured) or 'nothing'}. Capture again with "
                           f"`attnlab capture --for {probe}` (--capture {capture_for([probe])})")


def _layers_with(data: DashboardData, run, trace: str, field: str) -> list[int]:
    header = trace_header(run, trace)
    return [i for i in header["layers"] if data.has_field(run, trace, i, field)]


def relevance(data: DashboardData, run, trace: str, item: int, method: str, fusion: str, discard: float,
              receptive_field: bool, position: int | str | None):
    """Rollout or flow relevance of one batch item (a ``TokenRelevance`` result whose batch holds that item).

    ``position`` indexes the item's real tokens (negative from the end); ``"mean"`` explains the mean-pooled output;
    ``None`` is the probe's default.
    """
    if method not in ("rollout", "flow"):
        raise ValueError(f"Unknown relevance method {method!r}; choose rollout or flow")
    require_probe(run, trace, method)
    layers = _layers_with(data, run, trace, "pattern")
    meta = meta_of(trace_header(run, trace))
    if len(layers) != meta.n_layers:
        raise NotAvailable("Rollout and flow need the attention pattern of every layer; this trace has it for "
                           f"layers {layers or 'none'}. Capture with Capture(pattern=True, layers=None).")
    key = ("relevance", trace, int(item), method, fusion, float(discard), bool(receptive_field), position)
    return data.cached(run, key, lambda: _relevance(data, run, trace, item, method, fusion, discard, receptive_field,
                                                    position, layers))


def _relevance(data, run, trace, item, method, fusion, discard, receptive_field, position, layers):
    full = data.partial_trace(run, trace, layers, ("pattern",), item=int(item))
    if method == "rollout":
        return attention_rollout(full, position=position, head_fusion=fusion, discard_ratio=discard,
                                 receptive_field=receptive_field)
    return attention_flow(full, position=position, head_fusion=fusion)


def sinks(data: DashboardData, run, trace: str, rule: str, item: int):
    """Sink tokens of one item in every captured layer (patterns when stored, else the ``received`` statistic);
    the result's batch holds that item."""
    require_probe(run, trace, "sinks")
    header = trace_header(run, trace)
    fields = ("pattern",) if _layers_with(data, run, trace, "pattern") == header["layers"] else ("stats.received",)
    if fields == ("stats.received",) and _layers_with(data, run, trace, "stats.received") != header["layers"]:
        raise NotAvailable("Sink tokens need attention patterns or the 'received' statistic; capture with "
                           "Capture(pattern=True) or Capture(stats=True)")
    return data.cached(run, ("sinks", trace, rule, int(item)), lambda: sink_tokens(
        data.partial_trace(run, trace, None, fields, item=int(item)), rule=rule))


def massive(data: DashboardData, run, trace: str, item: int):
    """Massive activations in one item's stored layer outputs (relative test: small models rarely pass
    the paper's |h| > 100); the result's batch holds that item."""
    require_probe(run, trace, "massive")
    layers = _layers_with(data, run, trace, "resid")
    return data.cached(run, ("massive", trace, int(item)), lambda: massive_activations(
        data.partial_trace(run, trace, layers, ("resid",), item=int(item)), abs_floor=None, ratio=100.0))


def registers(data: DashboardData, run, trace: str):
    """High-norm patch tokens per layer (needs layer outputs and image segments)."""
    require_probe(run, trace, "registers")
    return data.cached(run, ("registers", trace), lambda: high_norm_tokens(
        data.partial_trace(run, trace, _layers_with(data, run, trace, "resid"), ("resid",))))


def qk_layers(data: DashboardData, run, trace: str) -> list[int]:
    """Layers whose queries and keys were stored."""
    return [i for i in _layers_with(data, run, trace, "q") if data.has_field(run, trace, i, "k")]


def qk_heads(data: DashboardData, run, trace: str, layer: int):
    """AttentionViz embeddings (PCA: fast and deterministic) of every head of one layer."""
    require_probe(run, trace, "qk-embed")
    if layer not in qk_layers(data, run, trace):
        raise NotAvailable(f"Layer {layer} has no stored queries and keys; choose one of {qk_layers(data, run, trace)}")

    def compute():
        trace_obj = data.partial_trace(run, trace, [layer], ("q", "k"))
        return embed_all_heads(trace_obj, QKEmbedding(method="pca"), layers=[layer])

    return data.cached(run, ("qk-heads", trace, int(layer)), compute)


def qk_head(data: DashboardData, run, trace: str, layer: int, head: int, method: str) -> pd.DataFrame:
    """One head's joint query-key embedding points (``kind``, token metadata, ``x``, ``y``)."""
    if method == "pca":
        return qk_heads(data, run, trace, layer).head_frame(layer, head)
    require_probe(run, trace, "qk-embed")
    if layer not in qk_layers(data, run, trace):
        raise NotAvailable(f"Layer {layer} has no stored queries and keys; choose one of {qk_layers(data, run, trace)}")

    def compute():
        trace_obj = data.partial_trace(run, trace, [layer], ("q", "k"))
        return QKEmbedding(method=method, random_state=0, n_jobs=1).fit(trace_obj, layer=layer, head=head).points_

    return data.cached(run, ("qk-head", trace, int(layer), int(head), method), compute)


def result_table(run, kind: str, what: str) -> pd.DataFrame:
    """The latest stored result table of ``kind`` (:meth:`~attnlab.core.runs.Run.results_of`), or
    :class:`NotAvailable` naming how to add one."""
    names = run.results_of(kind)
    if not names:
        raise NotAvailable(f"{what} is not available in this Run (no '{kind}' result table)")
    return run.result(names[-1])


def circuit_edges(run) -> pd.DataFrame:
    """The stored circuit edge table (``upstream, downstream, side, strength, ...``)."""
    frame = result_table(run, CircuitGraph.table_name, "The head communication graph")
    missing = {"upstream", "downstream", "side", "strength"} - set(frame.columns)
    if missing:
        raise NotAvailable(f"The circuits table of this Run lacks columns {sorted(missing)}")
    return frame


def eval_summary(run) -> pd.DataFrame:
    """The POPE/CHAIR summary table of an eval Run."""
    return result_table(run, SUMMARY_TABLE, "An eval summary (POPE/CHAIR)")


def method_choices(run) -> pd.DataFrame:
    """What each method of an eval Run chose (its manifest's ``plans``): one row per method with the layers it
    acted on, its heads (ACT's calibrated heads; VHR's most often reinforced, with how often), its sink
    dimensions (VAR) and its layer rule."""
    plans = run.manifest.get("extra", {}).get("plans") or {}
    rows = []
    for method, plan in plans.items():
        plan = plan if isinstance(plan, dict) else {}
        if "head_frequency" in plan:  # VHR picks heads per input: the most frequent, with their share
            top = sorted(plan["head_frequency"].items(), key=lambda kv: -kv[1])[:6]
            heads = ", ".join(f"{h} ({f:.0%})" for h, f in top)
        else:
            heads = ", ".join(f"{h[0]}.{h[1]}" if isinstance(h, (list, tuple)) else str(h) for h in plan.get("heads", []))
        rows.append({"method": method, "layers": ", ".join(str(x) for x in plan.get("layers", [])) or "-",
                     "heads": heads or "-", "sink dims": ", ".join(str(x) for x in plan.get("sink_dims", [])) or "-",
                     "rule": plan.get("layer_rule") or plan.get("rule") or "-"})
    return pd.DataFrame(rows, columns=["method", "layers", "heads", "sink dims", "rule"])


def eval_metrics(frame: pd.DataFrame) -> list[str]:
    """Metric columns of a summary table present for at least one row."""
    skip = {"task", "split", "method", "n", "seconds"}
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
            and frame[c].notna().any()]


def intervention_pairs(data: DashboardData) -> list[tuple[str, str]]:
    """``(baseline id, method id)`` pairs: Runs of one model on the same inputs, one without a Plan."""
    plain, planned = {}, []
    for ref in data.runs():
        try:
            run = data.run(ref.run_id)
        except ValueError:
            continue
        if not run.manifest["traces"]:
            continue
        key = (str(run.info.model.get("name")), repr(run.info.inputs))
        if run.info.plan:
            planned.append((key, ref.run_id))
        else:
            plain.setdefault(key, ref.run_id)
    return [(plain[key], run_id) for key, run_id in planned if key in plain]


def answers(run) -> dict:
    """Generated answers stored by the Run (``extra["answers"]``: ``{"item: prompt": answer}``), else ``{}``."""
    found = run.info.extra.get("answers") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def token_attention(data: DashboardData, run, trace: str, layer: int, head: int, item: int, position: int,
                    kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A token's attention: its row (``kind="query"``: what it attends to, over the item's real keys) or column
    (``"key"``: what attends to it, over the real queries); ``(weights, positions)``, the positions on the other
    axis (a cross-attention trace's keys are the encoder's tokens: label them with ``axis_labels(..., "key")``)."""
    from .summaries import attention_matrix, real_positions

    if kind not in ("query", "key"):
        raise ValueError(f"Unknown token kind {kind!r}; choose query or key")
    matrix, real, _ = attention_matrix(data, run, trace, layer, head, item)
    keys = real_positions(data, run, trace, item, "key")
    where = np.flatnonzero((real if kind == "query" else keys) == int(position))
    if not where.size:
        raise ValueError(f"Position {position} is not a real {kind} token of item {item}")
    return (matrix[where[0]], keys) if kind == "query" else (matrix[:, where[0]], real)
