"""Hugging Face transformers backend: one attention function registered with ``AttentionInterface``.

Inside ``attach`` every config of the model is switched to the ``"attnlab"`` implementation and each
attention module is told (through a private attribute) which stack and layer it is; both are undone
on exit, also when the forward raises. The function itself is stateless: modules without a site, or
layers that need nothing, fall through to SDPA so the outputs stay those of the plain model.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from attnlab.core.trace import TraceMeta

from .recorder import Recorder
from .segments import text_segments, text_tokens, vision_layout

IMPL_NAME = "attnlab"
SITE_ATTR = "_attnlab_site"
VISION_TYPES = ("vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model", "clip")


@dataclass(frozen=True)
class Site:
    """Where an attention module sits: its recorder, stack name and layer index."""

    recorder: Recorder
    stack: str
    layer: int


@dataclass
class Stack:
    """An attention stack found in a model: ``prefix.{i}`` are its blocks."""

    name: str
    prefix: str
    attn_names: dict[int, str]
    config: object
    owner: str


def attnlab_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, is_causal: bool | None = None, **kwargs):
    """The ``AttentionInterface`` function. query ``[B, H, Q, d]``, key/value ``[B, Hkv, K, d]``.

    Returns ``(out [B, Q, H, d], pattern [B, H, Q, K] or None)`` like HF's eager function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    site = getattr(module, SITE_ATTR, None)
    if site is None or not site.recorder.wants(site.stack, site.layer):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        raise ValueError("attnlab capture does not support attention soft-capping or position biases yet")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    attn_mask = None
    if attention_mask is not None:
        attn_mask = _bool_mask(attention_mask)
    out, pattern = site.recorder.attend(site.stack, site.layer, query, key, value, causal=causal,
                                        key_mask=None, attn_mask=attn_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), pattern


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """HF masks (bool, or additive float with 0 / large negative) -> bool ``[B, 1|H, Q, K]``."""
    if mask.dtype == torch.bool:
        return mask
    allowed = mask > torch.finfo(mask.dtype).min / 2
    if (mask[allowed] != 0).any():
        raise ValueError("attnlab capture does not support additive attention biases in the mask")
    return allowed


def ensure_registered() -> None:
    """Register the attnlab attention and mask functions with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPL_NAME, attnlab_attention_forward)
    # Without a registered mask function transformers drops causal and padding masks for unknown names.
    AttentionMaskInterface.register(IMPL_NAME, sdpa_mask)


_LAYER_RE = re.compile(r"^(.*)\.(\d+)\.(.+)$")


def _is_attention_core(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__module__.startswith("transformers.models") and cls.__name__.endswith("Attention")
            and hasattr(module, "config"))


def find_stacks(model: nn.Module) -> list[Stack]:
    """Attention stacks of a HF model: innermost ``*Attention`` modules grouped by their block-list prefix."""
    cores = {name: m for name, m in model.named_modules() if _is_attention_core(m) and "cross" not in name.lower()}
    inner = {n: m for n, m in cores.items() if not any(o != n and o.startswith(n + ".") for o in cores)}
    grouped: dict[str, dict[int, str]] = {}
    configs: dict[str, object] = {}
    for name, module in inner.items():
        match = _LAYER_RE.match(name)
        if not match:
            continue
        prefix, idx = match.group(1), int(match.group(2))
        grouped.setdefault(prefix, {})[idx] = name
        configs[prefix] = module.config
    stacks = []
    for prefix, names in grouped.items():
        owner = _owner_of(model, prefix)
        kind = "vision" if "vision" in prefix.lower() else "main"
        stacks.append(Stack(kind, prefix, names, configs[prefix], owner))
    if len(stacks) == 1:
        stacks[0].name = "main"
    if sum(s.name == "main" for s in stacks) != 1:
        raise ValueError(f"Could not tell the main attention stack among {[s.prefix for s in stacks]}")
    return stacks


def _owner_of(model: nn.Module, prefix: str) -> str:
    """Name of the deepest PreTrainedModel containing ``prefix`` (``""`` for the model itself)."""
    from transformers import PreTrainedModel

    parts = prefix.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        if isinstance(model.get_submodule(name), PreTrainedModel):
            return name
    return ""


def stack_meta(model: nn.Module, stack: Stack, model_id: str) -> TraceMeta:
    """TraceMeta of a stack from its attention config."""
    cfg = stack.config
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    first = model.get_submodule(stack.attn_names[min(stack.attn_names)])
    causal = bool(getattr(first, "is_causal", False))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    family = model.config.model_type if stack.name == "main" else cfg.model_type
    return TraceMeta(model=model_id, family=family, n_layers=len(stack.attn_names), n_heads=n_heads,
                     d_head=d_head, d_model=d_model, causal=causal, dtype=dtype, backend="hf")


def _special_ids(model: nn.Module, tokenizer) -> set[int]:
    if tokenizer is not None:
        return set(tokenizer.all_special_ids)
    cfg = model.config
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id")
    return {v for v in (getattr(cfg, n, None) for n in names) if isinstance(v, int)}


def _input(args: tuple, kwargs: dict, name: str, position: int = 0):
    return kwargs[name] if kwargs.get(name) is not None else (args[position] if len(args) > position else None)


def _vision_pass(rec: Recorder, stack: Stack, pixel_values: torch.Tensor) -> None:
    cfg = stack.config
    patch = cfg.patch_size
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    n_reg = int(getattr(cfg, "num_register_tokens", 0) or 0)
    n_tokens = 1 + n_reg + grid[0] * grid[1]
    tokens, segments = vision_layout(pixel_values.shape[0], n_tokens, grid, n_registers=n_reg)
    rec.begin_pass(stack.name, tokens, segments, torch.ones(pixel_values.shape[0], n_tokens, dtype=torch.bool))


def _text_pass(rec: Recorder, model: nn.Module, tokenizer, args: tuple, kwargs: dict) -> None:
    input_ids = _input(args, kwargs, "input_ids")
    if input_ids is None:
        raise ValueError("attnlab capture needs input_ids (inputs_embeds alone carry no token identities)")
    mask = kwargs.get("attention_mask")
    token_mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask.bool()
    token_mask = token_mask[:, -input_ids.shape[1]:]
    image_id = getattr(model.config, "image_token_id", None) or getattr(model.config, "image_token_index", None)
    segs = text_segments(input_ids.cpu(), token_mask.cpu(), _special_ids(model, tokenizer) - {image_id}, image_id)
    rec.begin_pass("main", text_tokens(input_ids, tokenizer), segs, token_mask.cpu())


@contextlib.contextmanager
def attach_hf(model: nn.Module, rec: Recorder, tokenizer=None, model_id: str | None = None) -> Iterator[Recorder]:
    """Install attnlab's attention on a HF model for the duration of the block."""
    ensure_registered()
    stacks = find_stacks(model)
    if not stacks:
        raise ValueError(f"No attention layers found in {type(model).__name__}; attnlab supports HF models whose "
                         "attention uses AttentionInterface (GPT-2, LLaMA-type, BERT, ViT, DINOv2, CLIP, LLaVA)")
    model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    for stack in stacks:
        rec.add_stack(stack.name, stack_meta(model, stack, model_id), main=stack.name == "main")
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")}
    saved = {key: cfg._attn_implementation_internal for key, cfg in configs.items()}
    handles, sited = [], []
    try:
        for cfg in configs.values():
            cfg._attn_implementation_internal = IMPL_NAME
        main = next(s for s in stacks if s.name == "main")
        main_is_vision = main.config.model_type in VISION_TYPES

        def top_hook(_mod, args, kwargs):
            if main_is_vision:
                _vision_pass(rec, main, _input(args, kwargs, "pixel_values"))
            else:
                _text_pass(rec, model, tokenizer, args, kwargs)

        handles.append(model.register_forward_pre_hook(top_hook, with_kwargs=True))
        for stack in stacks:
            if stack.name != "main":
                owner = model.get_submodule(stack.owner) if stack.owner else model
                handles.append(owner.register_forward_pre_hook(
                    lambda _m, a, kw, s=stack: _vision_pass(rec, s, _input(a, kw, "pixel_values")), with_kwargs=True))
            for layer, attn_name in stack.attn_names.items():
                module = model.get_submodule(attn_name)
                setattr(module, SITE_ATTR, Site(rec, stack.name, layer))
                sited.append(module)
                block = model.get_submodule(f"{stack.prefix}.{layer}")
                handles.append(block.register_forward_pre_hook(
                    lambda _m, a, kw, s=stack.name, i=layer: rec.block_input(s, i, _input(a, kw, "hidden_states")),
                    with_kwargs=True))
                handles.append(block.register_forward_hook(
                    lambda _m, _a, out, s=stack.name, i=layer: rec.block_output(s, i, out[0] if isinstance(out, tuple) else out)))
        yield rec
    finally:
        for h in handles:
            h.remove()
        for module in sited:
            if hasattr(module, SITE_ATTR):
                delattr(module, SITE_ATTR)
        for key, cfg in configs.items():
            cfg._attn_implementation_internal = saved[key]

