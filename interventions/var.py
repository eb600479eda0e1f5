"""VAR: Visual Attention Redistribution (Kang, Kim, Kim & Hwang, "See What You Are Told", ICLR 2025).

In image-centric heads of layers ``2 .. L-2``, attention on sink tokens is cut to ``keep_fraction`` of
itself and the freed budget goes to non-sink image tokens in proportion to their attention. Sinks at
layer ``l`` are tokens whose hidden state entering the layer has ``phi(x) >= tau`` in the model's sink
dimensions (``attnlab.probes.visual_sinks.sink_score``); the budget comes from visual *and* text sinks.
A (batch, head, query) row is redistributed only when it is image-centric: image mass ``>= 0.2`` and
visual non-sink share ``>= rho``; layers without a visual sink are left alone. All of this is one
:class:`~attnlab.kernels.Reweight` with a :class:`~attnlab.kernels.Gate`, executed inside the kernel.

Conventions, stated because paper and code disagree:
    * ``p``: the paper's ``p`` is the fraction *removed*; the released code's ``p = 0.6`` is the fraction
      *kept* (``attn[sinks] *= p``). attnlab names the parameter ``keep_fraction`` and defaults to the code's
      0.6 (40% of sink attention removed), the setting behind the released numbers.
    * The head test uses the paper's ``share >= rho`` (the code tests the sink portion ``<= rho``; equal at
      the released ``rho = 0.5``).
    * Only query rows after the image are changed in prefill (the code's behaviour); every decoding row is.
    * Sinks are found at prefill and reused while decoding, as the code caches them per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnlab.kernels.plan import Gate, LayerPlan, Plan, Reweight

SINK_SET = "var_sink"
TARGET_SET = "image_nonsink"


def var_plan(n_layers: int, *, keep_fraction: float = 0.6, rho: float = 0.5, min_image_mass: float = 0.2,
             skip_layers: int = 2, except_last_layer: int = 1) -> Plan:
    """The VAR Plan: one gated reweighting per layer in ``skip_layers .. n_layers - 1 - except_last_layer``.

    Args:
        n_layers: decoder layers.
        keep_fraction: share of sink attention kept (the code's ``p = 0.6``; the paper's ``p`` is ``1 - this``).
        rho: minimum visual non-sink share of an image-centric row (0.5).
        min_image_mass: minimum image mass of an image-centric row (0.2).
        skip_layers: first layers left alone (2).
        except_last_layer: final layers left alone (1).
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1] (the share of sink attention kept); got {keep_fraction}")
    gate = Gate(within="image", min_mass=min_image_mass, part=TARGET_SET, min_share=rho)
    reweight = Reweight(SINK_SET, keep_fraction, target=TARGET_SET, queries="after_image", gate=gate)
    layers = range(skip_layers, n_layers - except_last_layer)
    return Plan({i: LayerPlan(reweight=reweight) for i in layers}, name="var")


@dataclass
class SinkSets:
    """Per-input key-set function: VAR's sinks from the hidden state entering each layer, cached at prefill.

    Attributes:
        sink_dims: the model's sink dimensions.
        tau: sink threshold on ``phi`` (20).
    """

    sink_dims: tuple[int, ...]
    tau: float = 20.0
    cache: dict = field(default_factory=dict)

    def __call__(self, layer: int, hidden: torch.Tensor | None, static: dict, **_) -> dict:
        """``{var_sink, image_nonsink}`` ``[B, K]`` masks for ``layer``; hidden ``[B, N, d]``."""
        image = static.get("image")
        if image is None or not self.sink_dims:
            return {}
        if layer not in self.cache or (hidden is not None and hidden.shape[1] > 1):
            if hidden is None:
                return {}
            x = hidden.float()  # (B, N, d)
            rms = (x.pow(2).mean(-1) + 1e-6).sqrt()  # (B, N)
            phi = x[..., list(self.sink_dims)].abs().amax(-1) / rms  # (B, N)
            sinks = phi >= self.tau  # (B, N)
            visual = sinks & image[:, : sinks.shape[1]].to(sinks.device)
            # Layers without a visual sink get no heads: an empty source set changes nothing.
            sinks = sinks & visual.any(dim=1, keepdim=True)
            self.cache[layer] = (sinks.cpu(), (image[:, : sinks.shape[1]].cpu() & ~sinks.cpu()))
        sinks, nonsink = self.cache[layer]
        return {SINK_SET: sinks, TARGET_SET: nonsink}


@dataclass
class VARMethod:
    """VAR for the eval CLI: a fixed Plan and, per input, fresh sink sets."""

    plan: Plan
    sink_dims: tuple[int, ...]
    tau: float = 20.0

    def plan_for(self, image, prompt):
        """``(plan, key_set_fn)`` for one input."""
        return self.plan, SinkSets(self.sink_dims, self.tau)

    def describe(self) -> dict:
        """What the method chose (for the eval Run)."""
        return {"layers": sorted(self.plan.layers), "sink_dims": list(self.sink_dims), "tau": self.tau,
                "keep_fraction": next(iter(self.plan.layers.values())).reweight.factor if self.plan.layers else None}


#: LLaMA-2-7B's width, for which the paper set tau = 20.
PAPER_WIDTH = 4096


def scaled_tau(d_model: int, tau: float = 20.0) -> float:
    """``tau`` rescaled to a model's width.

    ``phi <= sqrt(d)`` (all of a token's energy in one dimension), so ``tau = 20`` can never fire below
    ``d = 400``. attnlab keeps the paper's *fraction* of the largest possible score instead:
    ``tau * sqrt(d / 4096)`` (20 at LLaMA-2-7B's width, 3.5 at d = 128). A departure from the paper, which
    only studied 7B/13B models, needed for the zoo's small models.
    """
    return tau * (d_model / PAPER_WIDTH) ** 0.5 if d_model < PAPER_WIDTH else tau


def var_method(model, processor, spec, calibration=None, *, sink_dims: tuple[int, ...] | None = None,
               tau: float | None = None, keep_fraction: float = 0.6, rho: float = 0.5) -> VARMethod:
    """Build VAR for a model: sink dimensions given, or detected from massive activations on calibration inputs.

    Args:
        model, processor, spec: from :func:`attnlab.zoo.load`.
        calibration: the calibration Dataset (:func:`attnlab.evals.suite.calibration_dataset`); only the images
            its questions name are read, to detect sink dimensions when ``sink_dims`` is not given.
        sink_dims: the model's sink dimensions (see ``attnlab.probes.visual_sinks.KNOWN_SINK_DIMS``).
        tau: sink threshold; ``None`` = 20 rescaled to the model's width (:func:`scaled_tau`).
        keep_fraction, rho: VAR's parameters (0.6 kept, 0.5).
    """
    if tau is None:
        tau = scaled_tau(model.config.get_text_config().hidden_size)
    if sink_dims is None:
        sink_dims = detect_sink_dims(model, processor, spec, calibration)
    return VARMethod(var_plan(spec.n_layers, keep_fraction=keep_fraction, rho=rho), tuple(sink_dims), tau)


def detect_sink_dims(model, processor, spec, calibration, n_inputs: int = 4) -> tuple[int, ...]:
    """Sink dimensions from massive activations (relative criterion) on the first calibration questions' images."""
    from PIL import Image

    from attnlab.core.capture import Capture
    from attnlab.evals.answer import format_prompt, prompt_templates
    from attnlab.hooks.inputs import capture_trace
    from attnlab.probes.massive import massive_activations

    if calibration is None:
        raise ValueError("VAR detects sink dimensions from massive activations on calibration images: give "
                         "--calibration FILE.jsonl [--calibration-images DIR]")
    from pathlib import Path

    from attnlab.evals.pope import load_pope_questions

    names = dict.fromkeys(q.image for file in calibration.pope.values() for q in load_pope_questions(file))
    files = [Path(calibration.images) / name for name in list(names)[:n_inputs]]
    prompt = format_prompt(processor, prompt_templates(spec)["caption"])
    dims: set[int] = set()
    for file in files:
        trace = capture_trace(model, processor, spec, Capture(resid=True), [prompt], [Image.open(file).convert("RGB")])
        dims.update(massive_activations(trace, abs_floor=None, ratio=100.0).dims)
    return tuple(sorted(dims))
