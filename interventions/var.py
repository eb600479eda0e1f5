"""VAR: Visual Attention Redistribution (Kang, Kim, Kim & Hwang, "See What You Are Told", ICLR 2025).

In image-centric heads of the layers :func:`var_layers` picks (``2 .. L-2`` at the paper's 32 layers), attention on sink tokens is cut to ``keep_fraction`` of
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
    * Layers scale with depth (:func:`var_layers`): the released code's ``2 .. L-2`` for 32-layer LLaVA-1.5
      becomes "skip the first 1/16 and the last 1/32 of the layers, at least one at each end".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnlab.kernels.plan import Gate, LayerPlan, Plan, Reweight
from attnlab.probes.vhd import round_half_up

SINK_SET = "var_sink"
TARGET_SET = "image_nonsink"


#: Decoder depth of the model VAR's layer range was released for (LLaVA-1.5-7B).
VAR_PAPER_DEPTH = 32
#: How the eval Run records VAR's layer choice.
VAR_LAYER_RULE = "skip first max(1, round(2L/32)) and last max(1, round(L/32)) layers (2..30 at L=32)"


def var_layers(n_layers: int, skip_layers: int | None = None, except_last_layer: int | None = None) -> tuple[int, ...]:
    """VAR's layers ``skip_layers .. n_layers - 1 - except_last_layer``, by default scaled with depth.

    The released code (Kang et al. 2025; ``range(L)[2:]`` with ``except_last_layer: 1``) acts on layers
    ``2 .. L-2`` of 32-layer LLaVA-1.5: it skips the first ``2/32`` and the last ``1/32`` of the layers. Taken
    literally on a 3-layer model that range is empty. attnlab keeps the fractions, rounded half up, with at
    least one layer skipped at each end (the first layers carry no sinks yet; the last layer is left alone)::

        skip_layers       = max(1, round(2/32 * L))
        except_last_layer = max(1, round(1/32 * L))

        L = 32 (paper): 2..30    L = 40: 3..38    L = 8: 1..6    L = 3: {1}

    Args:
        n_layers: decoder layers ``L``.
        skip_layers, except_last_layer: override either end (``None`` = the depth rule above).

    Returns:
        Sorted layer indices (empty when ``L < 3``).
    """
    if skip_layers is None:
        skip_layers = max(1, round_half_up(2 * n_layers / VAR_PAPER_DEPTH))
    if except_last_layer is None:
        except_last_layer = max(1, round_half_up(n_layers / VAR_PAPER_DEPTH))
    return tuple(range(skip_layers, n_layers - except_last_layer))


def var_plan(n_layers: int, *, keep_fraction: float = 0.6, rho: float = 0.5, min_image_mass: float = 0.2,
             skip_layers: int | None = None, except_last_layer: int | None = None) -> Plan:
    """The VAR Plan: one gated reweighting per layer of :func:`var_layers`.

    Args:
        n_layers: decoder layers.
        keep_fraction: share of sink attention kept (the code's ``p = 0.6``; the paper's ``p`` is ``1 - this``).
        rho: minimum visual non-sink share of an image-centric row (0.5).
        min_image_mass: minimum image mass of an image-centric row (0.2).
        skip_layers: first layers left alone (``None``: 2 of 32, scaled with depth, see :func:`var_layers`).
        except_last_layer: final layers left alone (``None``: 1 of 32, scaled with depth).
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1] (the share of sink attention kept); got {keep_fraction}")
    gate = Gate(within="image", min_mass=min_image_mass, part=TARGET_SET, min_share=rho)
    reweight = Reweight(SINK_SET, keep_fraction, target=TARGET_SET, queries="after_image", gate=gate)
    layers = var_layers(n_layers, skip_layers, except_last_layer)
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
        """``{var_sink, image_nonsink}`` ``[B, K]`` masks for ``layer``; hidden ``[B, N, d]``.

        Without sink dimensions, or in an input without image tokens, both sets are empty (and an empty
        ``image`` set is supplied for the gate), so the Plan runs and changes nothing.
        """
        if layer not in self.cache or (hidden is not None and hidden.shape[1] > 1):
            if hidden is None:
                return {}
            self.cache[layer] = self._sets(hidden, static.get("image"))
        sinks, nonsink = self.cache[layer]
        sets = {SINK_SET: sinks, TARGET_SET: nonsink}
        return sets if "image" in static else {**sets, "image": torch.zeros_like(sinks)}

    def _sets(self, hidden: torch.Tensor, image: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sinks, image non-sinks)``, each ``[B, N]`` bool on the CPU."""
        x = hidden.float()  # (B, N, d)
        image = torch.zeros(x.shape[:2], dtype=torch.bool) if image is None else image[:, : x.shape[1]].cpu()
        if not self.sink_dims:
            return torch.zeros(x.shape[:2], dtype=torch.bool), image.clone()
        rms = (x.pow(2).mean(-1) + 1e-6).sqrt()  # (B, N)
        phi = x[..., list(self.sink_dims)].abs().amax(-1) / rms  # (B, N)
        sinks = (phi >= self.tau).cpu()  # (B, N)
        # Layers without a visual sink get no heads: an empty source set changes nothing.
        sinks = sinks & (sinks & image).any(dim=1, keepdim=True)
        return sinks, image & ~sinks


@dataclass
class VARMethod:
    """VAR for the eval CLI: a fixed Plan and, per input, fresh sink sets."""

    plan: Plan
    sink_dims: tuple[int, ...]
    tau: float = 20.0

    def steering_for(self, images=None, prompts=None) -> dict:
        """:func:`~attnlab.evals.answer.generate_answers`' keyword arguments for a batch of inputs: the Plan and fresh
        sink sets (each row's own, found at its prefill); ``{}`` (the plain model) without sink dimensions, where no
        token can be a sink and VAR is the identity."""
        if not self.sink_dims:
            return {}
        return {"plan": self.plan, "key_set_fn": SinkSets(self.sink_dims, self.tau)}

    def describe(self) -> dict:
        """What the method chose (for the eval Run)."""
        return {"layers": sorted(self.plan.layers), "layer_rule": VAR_LAYER_RULE, "sink_dims": list(self.sink_dims), "tau": self.tau,
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
        calibration: the calibration BenchmarkFiles (:func:`attnlab.evals.benchmark.calibration_dataset`); only the images
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
