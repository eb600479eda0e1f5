"""Greedy answers from an LVLM for one image and prompt, optionally under an intervention Plan."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from attnlab.hooks import attach
from attnlab.hooks.inputs import IMAGE_PLACEHOLDER, on_model_device, prepare_inputs, tokenizer_of
from attnlab.kernels.plan import Plan

_SPACE_BEFORE_PUNCT = re.compile(r" ([,.?!])")

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


def tidy(text: str) -> str:
    """Undo a word-level tokenizer's spaces before punctuation: ``"a star ."`` -> ``"a star."`` (BPE text unchanged)."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


def _after_image(ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """``(B, N)`` bool: the positions after each row's last image token (all of a row without one)."""
    is_image = ids == image_token_id  # (B, N)
    pos = torch.arange(ids.shape[1], device=ids.device)  # (N,)
    last = torch.where(is_image, pos, torch.full_like(ids, -1)).max(dim=1).values  # (B,)
    return pos[None, :] > last[:, None]


@contextlib.contextmanager
def padding_side(tokenizer, side: str):
    """Pad on ``side`` inside the block, restoring the tokenizer's own side after: ``left`` for batched decoding
    (it appends after each row's last position), ``right`` for a plain forward pass of a padded batch (each row's
    positions count from its first token, as when it runs alone)."""
    saved = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = saved


def generate_answers(model, processor, spec, images: Sequence, prompts: Sequence[str], *, max_new_tokens: int,
                     plan: Plan | None = None, key_set_fn=None, query_after_image: bool = True,
                     around=None, batch_size: int = 32) -> list[str]:
    """Greedy answers, one per ``(image, prompt)``: the one answer generator of attnlab (evals, trainers, demo).

    Prompts are batched (padded on the left whatever the tokenizer's side, then restored) and decoded greedily,
    under ``plan`` at every step (prefill and decoding) when one is given.

    Args:
        model, processor, spec: from :func:`attnlab.zoo.load` (a vision-language model), or a trainer's model with
            :func:`attnlab.zoo.load.spec_of`.
        images: PIL images, one per prompt.
        prompts: full prompts (``<image>`` is prepended when missing).
        max_new_tokens: generation length cap.
        plan: intervention applied at every step, or ``None`` for the plain model.
        key_set_fn: dynamic key sets for the plan (e.g. VAR's sinks).
        query_after_image: give the plan the query set ``after_image`` (each row's positions after its last image
            token, so the plan acts on the text that reads the image).
        around: ``around(inputs, prompts)`` -> a context manager entered around each batch's generation, given the
            batch's prepared inputs (``input_ids [B, N]`` ..., padded on the left) and its prompts: interventions
            that act on what the pass computes (VHR).
        batch_size: prompts per ``generate`` call.

    Returns:
        The decoded continuations without special tokens, punctuation re-attached (:func:`tidy`).

    Raises:
        ValueError: when the numbers of images and prompts differ.
    """
    if len(images) != len(prompts):
        raise ValueError(f"Give one image per prompt (got {len(images)} images, {len(prompts)} prompts)")
    tok = tokenizer_of(processor)
    ends = {"pad_token_id": tok.pad_token_id}
    if tok.eos_token_id is not None:
        ends["eos_token_id"] = tok.eos_token_id
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        with padding_side(tok, "left"):
            inputs = on_model_device(prepare_inputs(processor, spec, list(prompts[i:i + batch_size]),
                                                    list(images[i:i + batch_size])), model)
        extra = {}
        if plan is not None and query_after_image and spec.image_token_id is not None:
            extra["after_image"] = _after_image(inputs["input_ids"], spec.image_token_id)
        ctx = attach(model, plan=plan, tokenizer=tok, key_sets=extra, key_set_fn=key_set_fn) if plan is not None \
            else contextlib.nullcontext()
        steer = around(inputs, list(prompts[i:i + batch_size])) if around is not None else contextlib.nullcontext()
        with torch.no_grad(), steer, ctx:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **ends)  # (B, N + new)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers += [tidy(t) for t in tok.batch_decode(new, skip_special_tokens=True)]
    return answers


def generate_answer(model, processor, spec, image, prompt: str, *, max_new_tokens: int, plan: Plan | None = None,
                    key_set_fn=None, query_after_image: bool = True, around=None) -> str:
    """Greedy-decode one answer: :func:`generate_answers` for a single ``(image, prompt)``."""
    return generate_answers(model, processor, spec, [image], [prompt], max_new_tokens=max_new_tokens, plan=plan,
                            key_set_fn=key_set_fn, query_after_image=query_after_image, around=around)[0]
