"""Hugging Face transformers backend: one attention function registered with ``AttentionInterface``.

Inside ``attach`` every config of the model is switched to the ``"attnlab"`` implementation and each
attention module is told (through a private attribute) which stack and layer it is; both are undone
on exit, also when the forward raises. The function itself is stateless: modules without a site, or
layers that need nothing, fall through to SDPA so the outputs stay those of the plain model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .hf_stacks import Stack, find_stacks, kernel_score_terms, main_stack, stack_meta
from .module_adapters import adapted
from .recorder import Recorder
from .segments import text_segments, text_tokens, vision_layout

IMPL_NAME = "attnlab"
SITE_ATTR = "_attnlab_site"

__all__ = ["attach_hf", "attnlab_attention_forward", "ensure_registered", "find_stacks", "main_stack",
           "stack_meta", "Stack"]


@dataclass(frozen=True)
class Site:
    """Where an attention module sits: its recorder, stack name and layer index."""

    recorder: Recorder
    stack: str
    layer: int


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
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and is_causal:  # a causal stack whose modules say otherwise (CLIP's text tower passes is_causal)
        site.recorder.mark_causal(site.stack)
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    attn_mask, bias = (None, None) if attention_mask is None else mask_and_bias(attention_mask)
    position_bias = kwargs.get("position_bias")  # T5's relative position bias [1|B, H, Q, K]
    if position_bias is not None:
        bias = position_bias if bias is None else bias + position_bias
    softcap = kwargs.get("softcap")
    needed = {name for name, term in (("softcap", softcap), ("bias", bias)) if term is not None}
    if needed - kernel_score_terms():
        raise ValueError(f"{type(module).__name__} needs score terms {sorted(needed - kernel_score_terms())} that "
                         "attnlab's kernels do not take yet (see docs/models.md)")
    out, pattern = site.recorder.attend(site.stack, site.layer, query, key, value, causal=causal,
                                        key_mask=None, attn_mask=attn_mask, scale=scaling,
                                        softcap=softcap, bias=bias)
    return out.transpose(1, 2).contiguous(), pattern


def mask_and_bias(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF masks -> ``(allowed [B, 1|H, Q, K] bool, bias or None)``.

    A float mask holds 0 (or an additive bias such as Falcon's ALiBi) where attending is allowed and a large
    negative number elsewhere; the bias part, zero at masked pairs, goes to the kernels' ``bias`` term.
    """
    if mask.dtype == torch.bool:
        return mask, None
    allowed = mask > torch.finfo(mask.dtype).min / 2
    if not (mask[allowed] != 0).any():
        return allowed, None
    return allowed, torch.where(allowed, mask, torch.zeros((), dtype=mask.dtype, device=mask.device))


def ensure_registered() -> None:
    """Register the attnlab attention and mask functions with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPL_NAME, attnlab_attention_forward)
    # Without a registered mask function transformers drops causal and padding masks for unknown names.
    AttentionMaskInterface.register(IMPL_NAME, sdpa_mask)


def _special_ids(model: nn.Module, tokenizer) -> set[int]:
    if tokenizer is not None:
        return set(tokenizer.all_special_ids)
    cfg = model.config
    names = ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id")
    return {v for v in (getattr(cfg, n, None) for n in names) if isinstance(v, int)}


def _input(args: tuple, kwargs: dict, name: str, position: int = 0):
    return kwargs[name] if kwargs.get(name) is not None else (args[position] if len(args) > position else None)


@dataclass
class VisionPasses:
    """Starts the Trace passes of ViT-style stacks.

    The grid comes from ``pixel_values`` when the stack's owner is called; the pass starts at the first
    block, whose input length ``N`` tells how many leading tokens ([CLS], DeiT's distillation token,
    registers; none for SigLIP) precede the ``rows * cols`` patches.
    """

    rec: Recorder
    pending: dict

    def start(self, stack: Stack, pixel_values: torch.Tensor | None) -> None:
        if pixel_values is None or pixel_values.dim() != 4:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"attnlab capture of the {stack.name!r} stack ({stack.prefix}) needs pixel_values "
                             f"[B, C, H, W]; got {shape}")
        patch = stack.config.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.pending[stack.name] = (pixel_values.shape[0], (pixel_values.shape[-2] // patch,
                                                            pixel_values.shape[-1] // patch))

    def first_block(self, stack: Stack, n_distill: int, hidden: torch.Tensor) -> None:
        if stack.name not in self.pending:
            return
        batch, grid = self.pending.pop(stack.name)
        n_tokens = hidden.shape[1]
        n_reg = int(getattr(stack.config, "num_register_tokens", 0) or 0)
        n_cls = n_tokens - grid[0] * grid[1] - n_reg - n_distill
        if n_cls not in (0, 1):
            raise ValueError(f"The {stack.name!r} stack's {n_tokens} tokens are not [CLS]? + {n_distill} distillation "
                             f"+ {n_reg} register tokens + a {grid[0]}x{grid[1]} patch grid")
        tokens, segments = vision_layout(batch, n_tokens, grid, n_registers=n_reg, has_cls=bool(n_cls),
                                         n_distill=n_distill)
        self.rec.begin_pass(stack.name, tokens, segments, torch.ones(batch, n_tokens, dtype=torch.bool))


def _n_distill(model: nn.Module, stack: Stack) -> int:
    """Distillation tokens (DeiT, Touvron et al., 2021) in the embeddings of a vision stack's owner."""
    owner = model.get_submodule(stack.owner) if stack.owner else model
    return sum(name.endswith("distillation_token") for name, _ in owner.named_parameters())


def _check_recorded(rec: Recorder, before: dict[str, int]) -> None:
    """After a forward call: a stack that began a pass but recorded no layer means attention bypassed attnlab."""
    if not rec.capture.captured:
        return
    for name, st in rec.stacks.items():
        if len(st.passes) > before.get(name, 0) and st.layers and not st.passes[-1].layers:
            raise RuntimeError(f"No attention layer of the {name!r} stack reached attnlab's attention function, so "
                               "the Trace would be empty; this model computes attention outside transformers' "
                               "AttentionInterface (see docs/models.md)")


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
    stacks = find_stacks(model)  # refuses what cannot be captured, naming the module and why
    model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    for stack in stacks:
        rec.add_stack(stack.name, stack_meta(model, stack, model_id), main=stack.name == "main")
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")}
    saved = {key: cfg._attn_implementation_internal for key, cfg in configs.items()}
    handles, sited = [], []
    vision = VisionPasses(rec, {})
    try:
        for cfg in configs.values():
            cfg._attn_implementation_internal = IMPL_NAME
        main = next(s for s in stacks if s.name == "main")
        before: dict[str, int] = {}

        def top_hook(_mod, args, kwargs):
            before.update({name: len(st.passes) for name, st in rec.stacks.items()})
            if main.vision:
                vision.start(main, _input(args, kwargs, "pixel_values"))
            else:
                _text_pass(rec, model, tokenizer, args, kwargs)

        handles.append(model.register_forward_pre_hook(top_hook, with_kwargs=True))
        handles.append(model.register_forward_hook(lambda *_: _check_recorded(rec, before)))
        for stack in stacks:
            if stack.name != "main":
                owner = model.get_submodule(stack.owner) if stack.owner else model
                handles.append(owner.register_forward_pre_hook(
                    lambda _m, a, kw, s=stack: vision.start(s, _input(a, kw, "pixel_values")), with_kwargs=True))
            handles += _site_stack(model, rec, stack, vision, sited)
        with adapted(sited):
            yield rec
    finally:
        for h in handles:
            h.remove()
        for module in sited:
            if hasattr(module, SITE_ATTR):
                delattr(module, SITE_ATTR)
        for key, cfg in configs.items():
            cfg._attn_implementation_internal = saved[key]


def _site_stack(model: nn.Module, rec: Recorder, stack: Stack, vision: VisionPasses, sited: list) -> list:
    """Tell each attention module of ``stack`` its site and hook its blocks; returns the hook handles."""
    handles = []
    n_distill = _n_distill(model, stack) if stack.vision else 0

    def block_in(_m, args, kwargs, layer):
        hidden = _input(args, kwargs, "hidden_states")
        if layer == min(stack.attn_names) and stack.vision:
            vision.first_block(stack, n_distill, hidden)
        rec.block_input(stack.name, layer, hidden)

    for layer, attn_name in stack.attn_names.items():
        module = model.get_submodule(attn_name)
        setattr(module, SITE_ATTR, Site(rec, stack.name, layer))
        sited.append(module)
        block = model.get_submodule(f"{stack.prefix}.{layer}")
        handles.append(block.register_forward_pre_hook(
            lambda _m, a, kw, i=layer: block_in(_m, a, kw, i), with_kwargs=True))
        handles.append(block.register_forward_hook(
            lambda _m, _a, out, i=layer: rec.block_output(stack.name, i, out[0] if isinstance(out, tuple) else out)))
    return handles
