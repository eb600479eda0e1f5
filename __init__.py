"""attnlab: capture, probe and steer attention in language models, vision transformers and LVLMs.

The names most users need, importable from the top level::

    import attnlab
    model, tok, spec = attnlab.load("minilm")
    with attnlab.attach(model, attnlab.Capture(pattern=True), tokenizer=tok) as rec:
        model(**tok("The cat sat.", return_tensors="pt"))
    trace = rec.trace()                      # a Trace: tokens, segments, per-layer pattern [B, H, Q, K]

Names are imported on first use (PEP 562), so ``import attnlab`` and the CLI's ``--help`` stay fast.
This file is the package root: the repository root is the ``attnlab`` package, and its folders
(``hooks/``, ``kernels/``, ``probes/`` ...) are its subpackages (see docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnlab.core.exports import lazy_exports

#: public name -> module that owns it
_OWNERS = {
    "load": "attnlab.zoo.load",
    "attach": "attnlab.hooks.attach",
    "Capture": "attnlab.core.capture",
    "Trace": "attnlab.core.trace",
    "Run": "attnlab.core.runs",
    "attention": "attnlab.kernels.api",
    "Plan": "attnlab.kernels.plan",
    "LayerPlan": "attnlab.kernels.plan",
    "Reweight": "attnlab.kernels.plan",
    "mask_plan": "attnlab.interventions.heads",
    "scale_heads_plan": "attnlab.interventions.heads",
    "act_plan": "attnlab.interventions.act",
    "var_plan": "attnlab.interventions.var",
    "vhr_plan": "attnlab.interventions.vhr",
    "probes": "attnlab.probes",  # the subpackages themselves: attnlab.probes.sink_tokens, attnlab.viz.head_pattern
    "viz": "attnlab.viz",
}

__all__ = sorted(_OWNERS)
__version__ = "0.1.0"

if TYPE_CHECKING:  # static tools and IDEs see the real objects
    from attnlab.core.capture import Capture
    from attnlab.core.runs import Run
    from attnlab.core.trace import Trace
    from attnlab.hooks.attach import attach
    from attnlab.interventions.act import act_plan
    from attnlab.interventions.heads import mask_plan, scale_heads_plan
    from attnlab.interventions.var import var_plan
    from attnlab.interventions.vhr import vhr_plan
    from attnlab.kernels.api import attention
    from attnlab.kernels.plan import LayerPlan, Plan, Reweight
    from attnlab.zoo.load import load
    from attnlab import probes, viz


__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
