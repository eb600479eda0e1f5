"""Greedy answers from an LVLM for one image and prompt, optionally under an intervention Plan."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from attnlab.hooks import attach
from attnlab.hooks.inputs import IMAGE_PLACEHOLDER, on_model_device, prepare_inputs, tokenizer_of
from attnlab.kernels.plan import Plan

DEFAULT_PROMPTS = {"pope": "{question}", "caption": "Please describe this image in detail."}


def prompt_templates(spec) -> dict[str, str]:
    """Prompt templates for a model: the zoo card's ``prompts`` when it has them, else the defaults."""
    card = Path(spec.path) / "card.json"
    prompts = dict(DEFAULT_PROMPTS)
    if card.exists():
        prompts.update(json.loads(card.read_text()).get("prompts", {}))
    return prompts


def format_prompt(processor, template: str, question: str = "") -> str:
    """Fill a template; wrap it with the processor's chat template when it has one (real LLaVA checkpoints)."""
    text = template.format(question=question)
    chat = getattr(processor, "chat_template", None)
    if chat and IMAGE_PLACEHOLDER not in text:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return text


def generate_answer(model, processor, spec, image, prompt: str, *, max_new_tokens: int, plan: Plan | None = None,
                    key_set_fn=None, query_after_image: bool = True) -> str:
    """Greedy-decode an answer.

    Args:
        model, processor, spec: from :func:`attnlab.zoo.load` (a vision-language model).
        image: a PIL image.
        prompt: the full prompt (``<image>`` is prepended when missing).
        max_new_tokens: generation length cap.
        plan: intervention applied at every step (prefill and decoding), or ``None`` for the plain model.
        key_set_fn: dynamic key sets for the plan (e.g. VAR's sinks).
        query_after_image: give the plan the query set ``after_image`` (rows after the last image token).

    Returns:
        The decoded continuation without special tokens.
    """
    inputs = on_model_device(prepare_inputs(processor, spec, [prompt], [image]), model)
    tok = tokenizer_of(processor)
    extra = {}
    if plan is not None and query_after_image and spec.image_token_id is not None:
        ids = inputs["input_ids"]  # (1, N)
        is_image = ids == spec.image_token_id
        last = int(is_image[0].nonzero().max()) if is_image.any() else -1
        extra["after_image"] = torch.arange(ids.shape[1], device=ids.device)[None, :] > last
    ctx = attach(model, plan=plan, tokenizer=tok, key_sets=extra, key_set_fn=key_set_fn) if plan is not None \
        else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
