"""VHR: Vision-aware Head Reinforcement (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", ACL 2025).

At the first generation step VHR compares each head's output (before W_O) with and without the image
(VHD, ``attnlab.probes.vhd.head_divergence``), zeroes outliers (VHD above mean+std whose text-only output
norm² is also above mean+std), keeps the heads above the layer median in the chosen layers, and multiplies
their outputs by ``alpha`` (2) for the whole generation (the head set is fixed at step 0 for KV-cache
consistency).

Departure from the paper, stated: Algorithm 1 selects layer by layer inside one forward pass so that
reinforcing earlier layers changes later VHDs; attnlab computes every layer's VHD from one pass with and one
pass without the image, then reinforces. The cost is two extra prefill passes per input either way.
Layers: the paper's choice for 32-layer LLaVA-1.5 (layer 1 plus the last 14), scaled with depth by
:func:`attnlab.probes.vhd.vhr_layers` (the last ``round(14/32 * L)`` layers plus layer ``max(1, round(L/32))``):

    L = 32 (paper): {1, 18..31}    L = 8: {1, 4..7}    L = 3: {1, 2}

configurable with ``layers``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from attnlab.core.capture import Capture
from attnlab.hooks.inputs import capture_trace, tokenizer_of, without_image
from attnlab.kernels.plan import Plan
from attnlab.probes.vhd import head_divergence, vhr_heads, vhr_layers

from .heads import scale_heads_plan


def text_only_inputs(processor, prompt: str) -> dict:
    """The prompt with the image placeholder removed, tokenised for the language model alone."""
    return dict(tokenizer_of(processor)([without_image(prompt)], return_tensors="pt"))


def vhr_plan(model, processor, spec, image, prompt: str, *, alpha: float = 2.0,
             layers: tuple[int, ...] | None = None) -> tuple[Plan, dict]:
    """VHR's Plan for one input, and what it chose.

    Args:
        model, processor, spec: a vision-language model from :func:`attnlab.zoo.load`.
        image: PIL image; prompt: the prompt (with or without ``<image>``).
        alpha: reinforcement factor (2 in the paper).
        layers: reinforced layers ``L_r``; ``None`` = :func:`~attnlab.probes.vhd.vhr_layers` (layer 1 plus the
            last 14 at 32 layers, LLaVA-1.5's choice, scaled with depth).

    Returns:
        ``(plan, {"heads": {layer: heads}, "outliers": {...}})``.
    """
    layers = vhr_layers(spec.n_layers) if layers is None else tuple(layers)
    capture = Capture(head_out=True, layers=layers)
    with_image = capture_trace(model, processor, spec, capture, [prompt], [image])
    text_only = capture_trace(model, processor, spec, capture, [without_image(prompt)], [])
    selection = vhr_heads(head_divergence(with_image, text_only, layers=layers), layers=layers)
    heads = [(layer, h) for layer, hs in selection.heads[0].items() for h in hs]
    plan = scale_heads_plan(heads, spec.n_heads, alpha, name="vhr")
    return plan, {"heads": selection.heads[0], "outliers": selection.outliers[0]}


VHR_LAYER_RULE = "layer max(1, round(L/32)) + last max(1, round(14L/32)) layers ({1, 18..31} at L=32)"


@dataclass
class VHRMethod:
    """VHR for the eval CLI: a fresh head set per input, remembered (once per distinct input) for the report."""

    model: object
    processor: object
    spec: object
    alpha: float = 2.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.chosen: dict[str, dict[int, tuple[int, ...]]] = {}  # input digest -> {layer: heads}

    def plan_for(self, image, prompt):
        """``(plan, None)`` for one input."""
        plan, chosen = vhr_plan(self.model, self.processor, self.spec, image, prompt, alpha=self.alpha,
                                layers=self.layers)
        # Keyed by the input, so a repeated input (the eval's untimed warm-up item) is counted once.
        digest = hashlib.sha1(image.tobytes() + prompt.encode()).hexdigest()
        self.chosen[digest] = chosen["heads"]
        return plan, None

    def describe(self) -> dict:
        """The layers, and how often each head was reinforced over the distinct inputs seen."""
        counts: dict[str, int] = {}
        for heads in self.chosen.values():
            for layer, hs in heads.items():
                for h in hs:
                    counts[f"{layer}.{h}"] = counts.get(f"{layer}.{h}", 0) + 1
        n = max(len(self.chosen), 1)
        return {"alpha": self.alpha, "layers": list(self.layers or vhr_layers(self.spec.n_layers)),
                "layer_rule": "given" if self.layers else VHR_LAYER_RULE, "n_layers": self.spec.n_layers,
                "inputs": len(self.chosen),
                "head_frequency": {k: c / n for k, c in sorted(counts.items(), key=lambda kv: -kv[1])}}
