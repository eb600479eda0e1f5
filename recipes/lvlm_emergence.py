"""Do attention sinks, visual sink tokens and massive activations emerge in a zoo LVLM? Measured for its card.

The detectors are attnlab's probes at their defaults, run on held-out POPE prompts (the image, then the question):

- attention sinks (:func:`attnlab.probes.sinks.sink_tokens`; ACT, Yu et al. 2024, with the length-aware cut): the
  share of heads with a sink, the share whose sinks include the first token (``<bos>``), and where the sinks sit;
- massive activations (:func:`attnlab.probes.massive.massive_activations`; Sun et al. 2024): at the paper's
  thresholds (``|h| > 100`` and ``>= 1000x`` the median) and at the relative test alone, with the largest ratio of a
  layer's top activation to its median;
- visual sink tokens (:func:`attnlab.probes.visual_sinks.visual_sinks`; Kang et al. 2025): image tokens whose hidden
  state has ``phi >= tau`` in the sink dimensions (found by the massive-activation detector), ``tau`` VAR's 20
  rescaled to the width as the intervention uses it, and the largest ``phi`` an image token would reach were every
  dimension a sink dimension.

Nothing here tunes the model; a "no" is meaningful because the same detectors fire on the planted controls of
``tests/interventions/test_var_planted.py`` and ``tests/probes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlab.core.capture import Capture
from attnlab.hooks.inputs import capture_trace
from attnlab.interventions.var import scaled_tau
from attnlab.probes.massive import massive_activations
from attnlab.probes.sinks import sink_tokens
from attnlab.probes.tokens import to_numpy
from attnlab.probes.visual_sinks import sink_score, visual_sinks

#: POPE prompts measured per model: enough for stable shares, small enough for a card (one batched pass).
N_PROMPTS = 32


def measure_emergence(model, processor, spec, images: Sequence, prompts: Sequence[str]) -> dict:
    """The card's emergence numbers for one LVLM on ``prompts`` (one image each).

    Args:
        model, processor, spec: from :func:`attnlab.zoo.load`.
        images: PIL images, one per prompt.
        prompts: question prompts as the model was trained on them (``<image>`` is prepended).

    Returns:
        ``{"sinks": {...}, "massive": {...}, "visual_sinks": {...}, "prompts": n}``, plain floats and lists (JSON).
    """
    trace = capture_trace(model, processor, spec, Capture(pattern=True, resid=True), list(prompts), list(images))
    sinks = sink_tokens(trace)
    any_sink = sinks.is_sink.any(-1)  # (L, B, H)
    cats = np.array([[c or "pad" for c in row] for row in sinks.categories])  # (B, N)
    on_first = (sinks.is_sink & (cats == "initial")[None, :, None, :]).any(-1)  # (L, B, H)
    frame = sinks.to_frame()
    by_category = frame["category"].value_counts(normalize=True).round(4).to_dict() if len(frame) else {}
    paper = massive_activations(trace)
    relative = massive_activations(trace, abs_floor=None)
    ratio = relative.top[:, :, 0] / np.maximum(relative.median, 1e-12)  # (L, B)
    width = trace.layers[0].resid.shape[-1]
    tau = scaled_tau(width)  # VAR's threshold at this width (20 from d = 4096 up)
    found = visual_sinks(trace, tau=tau, sink_dims=paper.dims)  # the dimensions visual_sinks would detect itself
    rel_visual = visual_sinks(trace, tau=tau, sink_dims=relative.dims)
    image = trace.key_set("image").cpu().numpy().astype(bool)  # (B, N)
    every_dim = np.stack([sink_score(to_numpy(trace.resid_in(i)), tuple(range(width)))[image]
                          for i in rel_visual.layers])  # (L', n_image): phi were every dimension a sink dimension
    return {
        "prompts": len(prompts),
        "sinks": {
            "rule": f"{sinks.rule} (threshold {sinks.threshold}, alpha {sinks.alpha})",
            "heads_with_a_sink": float(any_sink.mean()),
            "heads_with_first_token_sink": float(on_first.mean()),
            "heads_with_first_token_sink_by_layer": [round(float(v), 4) for v in on_first.mean(axis=(1, 2))],
            "mean_sink_mass": float(sinks.sink_mass.mean()),
            "sinks_by_category": by_category,
        },
        "massive": {
            "paper_thresholds_count": int(len(paper.entries)),
            "relative_only_count": int(len(relative.entries)),
            "relative_only_dims": list(relative.dims),
            "relative_only_layers": list(relative.massive_layers),
            "max_top_over_median": float(ratio.max()),
            "max_top_over_median_by_layer": [round(float(v), 1) for v in ratio.max(axis=1)],
        },
        "visual_sinks": {
            "tau": found.tau,
            "tau_note": "VAR's tau = 20 rescaled to the width (interventions.var.scaled_tau)",
            "dims_paper_thresholds": list(found.sink_dims),
            "visual_sink_tokens_paper_thresholds": int(found.is_visual_sink.sum()),
            "dims_relative_only": list(rel_visual.sink_dims),
            "visual_sink_tokens_relative_only": int(rel_visual.is_visual_sink.sum()),
            "max_phi_on_image_tokens": float(rel_visual.phi[:, image].max()) if rel_visual.sink_dims else 0.0,
            "max_phi_any_dim_on_image_tokens": float(every_dim.max()),
        },
    }


def emergence_findings(name: str, e: dict) -> list[str]:
    """Plain sentences for the card from :func:`measure_emergence`'s numbers."""
    s, m, v = e["sinks"], e["massive"], e["visual_sinks"]
    cats = ", ".join(f"{k} {p:.0%}" for k, p in s["sinks_by_category"].items()) or "none"
    out = [f"Attention sinks ({s['rule']}, {e['prompts']} POPE prompts): {s['heads_with_a_sink']:.0%} of (layer, head, "
           f"prompt) cells have a sink, {s['heads_with_first_token_sink']:.0%} on the first token (by layer: "
           f"{', '.join(f'{x:.0%}' for x in s['heads_with_first_token_sink_by_layer'])}); sinks absorb "
           f"{s['mean_sink_mass']:.0%} of a head's attention on average; where the sinks are: {cats}."]
    massive = ("none" if m["paper_thresholds_count"] == 0 else f"{m['paper_thresholds_count']}")
    out.append(f"Massive activations at the paper's thresholds (|h| > 100 and 1000x the median): {massive}. "
               f"The largest top-activation / median ratio of any layer is {m['max_top_over_median']:.0f}x "
               f"(by layer: {', '.join(f'{x:.0f}' for x in m['max_top_over_median_by_layer'])}); the relative test "
               f"alone finds {m['relative_only_count']} in dims {m['relative_only_dims'] or 'none'}.")
    out.append(f"Visual sink tokens (phi >= {v['tau']:.1f}, VAR's tau at this width): "
               f"{v['visual_sink_tokens_paper_thresholds']} with the sink "
               f"dimensions of the paper's thresholds ({v['dims_paper_thresholds'] or 'none found'}), "
               f"{v['visual_sink_tokens_relative_only']} with those of the relative test (for comparison, the largest "
               f"phi of an image token over all dimensions is {v['max_phi_any_dim_on_image_tokens']:.1f}: large "
               "coordinates exist, but in no dimension shared across tokens as massive activations are).")
    return out
