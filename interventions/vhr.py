"""VHR: Vision-aware Head Reinforcement (He et al., "Cracking the Code of Hallucination in LVLMs with
Vision-aware Head Divergence", ACL 2025).

At the first generation step VHR compares each head's output (before W_O) with and without the image
(VHD, ``attnlab.probes.vhd.head_divergence``), zeroes outliers (VHD above mean+std whose text-only output
norm² is also above mean+std), keeps the heads above the layer median in the chosen layers, and multiplies
their outputs by ``alpha`` (2) for the whole generation (the head set is fixed at step 0 for KV-cache
consistency).

As in the paper's Algorithm 1, the heads are chosen layer by layer inside the image pass itself
(:func:`vhr_reinforced`): layer ``l`` compares its own outputs, computed after the reinforcement of the layers
before it, with the text-only pass, picks its heads and scales them before ``W_O``, and the pass goes on. So VHR
costs one extra forward pass, text only, per input. Departure, stated: the text-only pass runs once, before, on
the plain model (the paper's Algorithm 1 is silent on whether its text-only pass is reinforced too).
Layers: the paper's choice for 32-layer LLaVA-1.5 (layer 1 plus the last 14), scaled with depth by
:func:`attnlab.probes.vhd.vhr_layers` (the last ``round(14/32 * L)`` layers plus layer ``max(1, round(L/32))``):

    L = 32 (paper): {1, 18..31}    L = 8: {1, 4..7}    L = 3: {1, 2}

configurable with ``layers``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch

from attnlab.hooks.edits import Edits, edited
from attnlab.hooks.inputs import on_model_device, prepare_inputs, without_image
from attnlab.kernels.plan import Plan
from attnlab.probes.vhd import vhr_layer_heads, vhr_layers

from .heads import scale_heads_plan


def text_only_inputs(processor, spec, prompt: str) -> dict:
    """The prompt with the image placeholder removed, tokenised for the language model alone (``input_ids [1, N]``
    ...): :func:`~attnlab.hooks.inputs.prepare_inputs` without images."""
    return prepare_inputs(processor, spec, [without_image(prompt)], [])


def text_only_head_outputs(model, processor, spec, prompt: str, layers) -> dict[int, torch.Tensor]:
    """``{layer: [H, d_head]}`` each of ``layers``' head outputs (before ``W_O``) at the last token of ``prompt``
    without its image: the second term of VHD (He et al. 2025, Eq. 4). Only ``layers`` are recorded."""
    record = Edits(record_z={}, record_layers=frozenset(layers))
    with torch.no_grad(), edited(model, record):
        model(**on_model_device(text_only_inputs(processor, spec, prompt), model))
    return {layer: record.record_z[layer][0, -1] for layer in layers}


@contextlib.contextmanager
def vhr_reinforced(model, processor, spec, prompt: str, inputs: dict, *, alpha: float = 2.0,
                   layers: tuple[int, ...] | None = None) -> Iterator[dict]:
    """Inside the block, ``model``'s passes over ``inputs`` (one prompt with its image: a prefill, then decoding
    steps) run VHR.

    At the first pass (the prefill), each layer of ``layers`` takes its heads' outputs at the last position, their
    VHD against the text-only pass (:func:`text_only_head_outputs`, run on entry) and ``TA``, picks heads with
    :func:`~attnlab.probes.vhd.vhr_layer_heads`, and multiplies them by ``alpha`` before ``W_O`` (at every position,
    as the head-scaling Plan of :func:`vhr_plan` does); later layers see the reinforced stream. Later passes
    (decoding) scale the same heads, so the cached keys and values stay consistent.

    Args:
        model, processor, spec: a LLaVA-type model from :func:`attnlab.zoo.load`.
        prompt: the prompt (with ``<image>``); inputs: its prepared inputs (``input_ids [1, N]`` ...).
        alpha: reinforcement factor (2 in the paper); layers: ``L_r`` (default :func:`vhr_layers`).

    Yields:
        ``{layer: {"heads": (...), "outliers": (...)}}``, filled by the prefill.

    Raises:
        ValueError: a batch of more than one prompt (the heads are chosen per input).
    """
    layers = vhr_layers(spec.n_layers) if layers is None else tuple(layers)
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"VHR chooses heads per input; give one prompt at a time (got {inputs['input_ids'].shape[0]})")
    text = text_only_head_outputs(model, processor, spec, prompt, layers)
    n_prompt = inputs["input_ids"].shape[1]
    chosen: dict[int, dict] = {}
    scales: dict[int, torch.Tensor] = {}

    def reinforce(z: torch.Tensor, layer: int) -> torch.Tensor:  # z (1, N, H, d_head)
        if layer in scales:  # a decoding step: the heads chosen at the prefill
            return z * scales[layer][None, None, :, None]
        if z.shape[1] != n_prompt:
            raise ValueError(f"VHR's first pass must be the prefill of its {n_prompt} tokens; got {z.shape[1]}")
        t = text[layer].to(z.device, torch.float32)  # (H, d_head)
        vhd = (z[0, -1].float() - t).norm(dim=-1)  # (H,)
        heads, outliers = vhr_layer_heads(vhd.cpu().numpy(), t.pow(2).sum(-1).cpu().numpy())
        chosen[layer] = {"heads": heads, "outliers": outliers}
        scales[layer] = torch.ones(z.shape[2], dtype=z.dtype, device=z.device)
        scales[layer][list(heads)] = alpha
        return z * scales[layer][None, None, :, None]

    with edited(model, Edits(transform_z={layer: partial(reinforce, layer=layer) for layer in layers})):
        yield chosen


def vhr_plan(model, processor, spec, image, prompt: str, *, alpha: float = 2.0,
             layers: tuple[int, ...] | None = None) -> tuple[Plan, dict]:
    """VHR's heads for one input as a head-scaling Plan (to inspect them, or to rerun them with the fused kernel),
    chosen by one prefill under :func:`vhr_reinforced`.

    Args:
        model, processor, spec: a vision-language model from :func:`attnlab.zoo.load`.
        image: PIL image; prompt: the prompt (with or without ``<image>``).
        alpha: reinforcement factor (2 in the paper).
        layers: reinforced layers ``L_r``; ``None`` = :func:`~attnlab.probes.vhd.vhr_layers` (layer 1 plus the
            last 14 at 32 layers, LLaVA-1.5's choice, scaled with depth).

    Returns:
        ``(plan, {"heads": {layer: heads}, "outliers": {layer: heads}})``.
    """
    inputs = on_model_device(prepare_inputs(processor, spec, [prompt], [image]), model)
    with torch.no_grad(), vhr_reinforced(model, processor, spec, prompt, inputs, alpha=alpha,
                                         layers=layers) as chosen:
        model(**inputs)
    heads = [(layer, h) for layer, c in chosen.items() for h in c["heads"]]
    return (scale_heads_plan(heads, spec.n_heads, alpha, name="vhr"),
            {"heads": {layer: c["heads"] for layer, c in chosen.items()},
             "outliers": {layer: c["outliers"] for layer, c in chosen.items()}})


VHR_LAYER_RULE = "layer max(1, round(L/32)) + last max(1, round(14L/32)) layers ({1, 18..31} at L=32)"


@dataclass
class VHRMethod:
    """VHR for the eval CLI: heads chosen per input inside its own prefill, remembered (once per distinct input)
    for the report."""

    model: object
    processor: object
    spec: object
    alpha: float = 2.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.chosen: dict[str, dict[int, tuple[int, ...]]] = {}  # input digest -> {layer: heads}

    def steering_for(self, image, prompt) -> dict:
        """:func:`~attnlab.evals.answer.generate_answer`'s keyword arguments for one input: ``around``, which runs
        the generation under :func:`vhr_reinforced`."""
        # Keyed by the input, so a repeated input (the eval's untimed warm-up item) is counted once.
        digest = hashlib.sha1(image.tobytes() + prompt.encode()).hexdigest()

        @contextlib.contextmanager
        def around(inputs):
            with vhr_reinforced(self.model, self.processor, self.spec, prompt, inputs, alpha=self.alpha,
                                layers=self.layers) as chosen:
                yield
            self.chosen[digest] = {layer: c["heads"] for layer, c in chosen.items()}

        return {"around": around}

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
