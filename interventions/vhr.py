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

from attnlab.evals.answer import padding_side
from attnlab.hooks.edits import Edits, edited, last_positions
from attnlab.hooks.inputs import on_model_device, prepare_inputs, tokenizer_of, without_image
from attnlab.kernels.plan import Plan
from attnlab.probes.vhd import vhr_layer_heads, vhr_layers

from .heads import scale_heads_plan


def text_only_inputs(processor, spec, prompts: list[str]) -> dict:
    """The prompts with the image placeholder removed, tokenised for the language model alone (``input_ids [B, N]``
    ..., padded on the right, so each row's positions are those it has alone): :func:`~attnlab.hooks.inputs.
    prepare_inputs` without images."""
    with padding_side(tokenizer_of(processor), "right"):
        return prepare_inputs(processor, spec, [without_image(p) for p in prompts], [])


def text_only_head_outputs(model, processor, spec, prompts: list[str], layers) -> dict[int, torch.Tensor]:
    """``{layer: [B, H, d_head]}`` each of ``layers``' head outputs (before ``W_O``) at the last real token of each
    prompt without its image: the second term of VHD (He et al. 2025, Eq. 4). One batched pass; only ``layers`` are
    recorded."""
    inputs = text_only_inputs(processor, spec, prompts)
    last = last_positions(inputs)  # (B,)
    record = Edits(record_z={}, record_layers=frozenset(layers))
    with torch.no_grad(), edited(model, record):
        model(**on_model_device(inputs, model))
    rows = torch.arange(len(prompts))
    return {layer: record.record_z[layer][rows, last.to(record.record_z[layer].device)] for layer in layers}


@contextlib.contextmanager
def vhr_reinforced(model, processor, spec, prompts: list[str], inputs: dict, *, alpha: float = 2.0,
                   layers: tuple[int, ...] | None = None) -> Iterator[list[dict]]:
    """Inside the block, ``model``'s passes over ``inputs`` (the prompts with their images: a prefill, then decoding
    steps) run VHR, each item with its own heads.

    At the first pass (the prefill), each layer of ``layers`` takes each item's head outputs at its last real
    position, their VHD against the text-only pass (:func:`text_only_head_outputs`, one batched pass on entry) and
    ``TA``, picks the item's heads with :func:`~attnlab.probes.vhd.vhr_layer_heads`, and multiplies them by
    ``alpha`` before ``W_O`` (at every position, as the head-scaling Plan of :func:`vhr_plan` does); later layers
    see the reinforced stream. Later passes (decoding) scale the same heads, so the cached keys and values stay
    consistent. A padded batch gives each item the heads and answer it gets alone.

    Args:
        model, processor, spec: a LLaVA-type model from :func:`attnlab.zoo.load`.
        prompts: the prompts (with ``<image>``), one per row of ``inputs``: their prepared inputs
            (``input_ids [B, N]`` ..., either padding side).
        alpha: reinforcement factor (2 in the paper); layers: ``L_r`` (default :func:`vhr_layers`).

    Yields:
        One ``{layer: {"heads": (...), "outliers": (...)}}`` per prompt, filled by the prefill.

    Raises:
        ValueError: when the prompts and the rows of ``inputs`` differ in number.
    """
    layers = vhr_layers(spec.n_layers) if layers is None else tuple(layers)
    n_items, n_prompt = inputs["input_ids"].shape
    if len(prompts) != n_items:
        raise ValueError(f"VHR chooses heads per input: give one prompt per row of inputs (got {len(prompts)} "
                         f"prompts for {n_items} rows)")
    text = text_only_head_outputs(model, processor, spec, prompts, layers)
    last = last_positions(inputs)  # (B,)
    chosen: list[dict[int, dict]] = [{} for _ in prompts]
    scales: dict[int, torch.Tensor] = {}

    def reinforce(z: torch.Tensor, layer: int) -> torch.Tensor:  # z (B, N, H, d_head)
        if layer in scales:  # a decoding step: the heads chosen at the prefill
            return z * scales[layer][:, None, :, None]
        if z.shape[1] != n_prompt:
            raise ValueError(f"VHR's first pass must be the prefill of its {n_prompt} tokens; got {z.shape[1]}")
        t = text[layer].to(z.device, torch.float32)  # (B, H, d_head)
        here = z[torch.arange(n_items, device=z.device), last.to(z.device)].float()  # (B, H, d_head)
        vhd = (here - t).norm(dim=-1).cpu().numpy()  # (B, H)
        norms = t.pow(2).sum(-1).cpu().numpy()  # (B, H)
        scales[layer] = torch.ones(n_items, z.shape[2], dtype=z.dtype, device=z.device)  # (B, H)
        for item in range(n_items):
            heads, outliers = vhr_layer_heads(vhd[item], norms[item])
            chosen[item][layer] = {"heads": heads, "outliers": outliers}
            scales[layer][item, list(heads)] = alpha
        return z * scales[layer][:, None, :, None]

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
    with torch.no_grad(), vhr_reinforced(model, processor, spec, [prompt], inputs, alpha=alpha,
                                         layers=layers) as per_item:
        model(**inputs)
    chosen = per_item[0]
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

    def steering_for(self, images=None, prompts=None) -> dict:
        """:func:`~attnlab.evals.answer.generate_answers`' keyword arguments for a batch of inputs: ``around``, which
        runs each generation under :func:`vhr_reinforced` and remembers each input's heads."""

        @contextlib.contextmanager
        def around(inputs, batch_prompts):
            with vhr_reinforced(self.model, self.processor, self.spec, batch_prompts, inputs, alpha=self.alpha,
                                layers=self.layers) as chosen:
                yield
            for row, prompt in enumerate(batch_prompts):
                # keyed by the input (its pixels and prompt), so a repeated input (the eval's untimed warm-up
                # batch) is counted once
                pixels = inputs["pixel_values"][row].detach().cpu().numpy().tobytes()
                digest = hashlib.sha1(pixels + prompt.encode()).hexdigest()
                self.chosen[digest] = {layer: c["heads"] for layer, c in chosen[row].items()}

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
