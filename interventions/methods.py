"""Evaluation methods by name: each gives, per batch of inputs, how to steer the answers
(``steering_for(images, prompts)``: :func:`~attnlab.evals.answer.generate_answers`' ``plan``, dynamic ``key_set_fn``
or ``around`` context).

``baseline`` runs the plain model; ``mask:SPEC`` masks the listed heads (``attnlab.interventions.heads``);
``vhr``, ``var`` and ``act`` build their Plans from probe results (see their modules).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.kernels.plan import Plan

from .heads import mask_plan

BASE_METHODS = ("baseline", "vhr", "var", "act")


@dataclass
class StaticMethod:
    """A method whose Plan does not depend on the input."""

    name: str
    plan: Plan | None
    key_set_fn: object = None

    def steering_for(self, images=None, prompts=None) -> dict:
        """:func:`~attnlab.evals.answer.generate_answers`' keyword arguments for a batch of inputs (``{}``: the plain
        model)."""
        return {} if self.plan is None else {"plan": self.plan, "key_set_fn": self.key_set_fn}

    def describe(self) -> dict:
        """The Plan (for the eval Run)."""
        return self.plan.to_dict() if self.plan is not None else {}


def check_method_name(name: str) -> None:
    """Raise a ValueError naming the valid methods for an unknown one."""
    if name in BASE_METHODS or name.startswith("mask:"):
        return
    raise ValueError(f"Unknown method {name!r}; choose from {', '.join(BASE_METHODS)} or mask:SPEC (e.g. mask:3.1,4)")


def build_method(name: str, loaded, calibration=None):
    """The method object for ``name``.

    Args:
        name: ``baseline``, ``vhr``, ``var``, ``act`` or ``mask:SPEC``.
        loaded: ``(model, processor, spec)``.
        calibration: calibration data for methods that search offline (ACT), else ``None``.
    """
    check_method_name(name)
    model, processor, spec = loaded
    if name == "baseline":
        return StaticMethod(name, None)
    if name.startswith("mask:"):
        return StaticMethod(name, mask_plan(name[len("mask:"):], spec.n_layers, spec.n_heads))
    if name == "vhr":
        from .vhr import VHRMethod

        return VHRMethod(model, processor, spec)
    if name == "var":
        from .var import var_method

        return var_method(model, processor, spec, calibration)
    from .act import act_method

    return act_method(model, processor, spec, calibration)

