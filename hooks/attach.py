"""``attach``: the one context manager that captures Traces and applies Plans, whatever the backend."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from attnlab.core.capture import Capture
from attnlab.kernels.plan import Plan

from .recorder import KeySetFn, Recorder


def backend_of(model: nn.Module) -> str:
    """``hf``, ``transformer_lens`` or ``torch`` for a model; raises TypeError for anything else."""
    try:
        from transformers import PreTrainedModel

        if isinstance(model, PreTrainedModel):
            return "hf"
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    if type(model).__module__.startswith("transformer_lens"):
        return "transformer_lens"
    if isinstance(model, nn.Module):
        return "torch"
    raise TypeError(f"attach() takes a torch module, got {type(model).__name__}")


@contextlib.contextmanager
def attach(model: nn.Module, capture: Capture | None = None, plan: Plan | None = None, *, tokenizer=None,
           key_sets: dict[str, torch.Tensor] | None = None, key_set_fn: KeySetFn | None = None,
           impl: str = "auto", model_id: str | None = None) -> Iterator[Recorder]:
    """Capture attention from ``model`` (and apply ``plan``) for every forward call inside the block.

    Args:
        model: a Hugging Face ``PreTrainedModel``, a TransformerLens ``TransformerBridge`` or a torch
            module holding ``nn.MultiheadAttention`` layers.
        capture: what to record (:class:`~attnlab.core.capture.Capture`); nothing by default.
        plan: intervention (:class:`~attnlab.kernels.Plan`) for the main stack.
        tokenizer: turns ids into token strings and tells special tokens apart.
        key_sets: extra named ``[B, N]`` bool key sets for statistics and the plan.
        key_set_fn: per-layer dynamic key sets from the block input (e.g. VAR's sinks).
        impl: attention implementation for recorded layers (``auto``, ``torch``, ``eager``, ``triton``).
        model_id: name stored in the Trace metadata.

    Yields:
        The recorder; after the forward call, ``rec.trace()`` returns the :class:`~attnlab.core.trace.Trace`.

    Example:
        >>> with attach(model, Capture(pattern=True), tokenizer=tok) as rec:  # doctest: +SKIP
        ...     model(**tok("Hello world", return_tensors="pt"))
        >>> rec.trace().layer(0).pattern.shape  # doctest: +SKIP
        torch.Size([1, 12, 4, 4])
    """
    rec = Recorder(capture or Capture(), plan, key_sets=key_sets, key_set_fn=key_set_fn, impl=impl)
    backend = backend_of(model)
    if backend == "hf":
        from .hf import attach_hf as attach_backend
    elif backend == "transformer_lens":
        from .tl import attach_tl as attach_backend
    else:
        from .torch_mha import attach_torch as attach_backend
    with attach_backend(model, rec, tokenizer=tokenizer, model_id=model_id):
        yield rec
