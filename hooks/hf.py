"""Hugging Face transformers backend: one attention function registered with ``AttentionInterface``.

Inside ``attach`` every config of the model is switched to the ``"attnlab"`` implementation and each
attention module is told (through a private attribute) which stack and layer it is; both are undone
on exit, also when the forward raises. The function itself is stateless: modules without a site, or
layers that need nothing, fall through to SDPA so the outputs stay those of the plain model.

An encoder-decoder model (T5, BART, Whisper) gives three Traces: the decoder's self-attention (the main one),
``trace.encoder`` and ``trace.cross`` (decoder queries over encoder keys); see :class:`EncoderDecoderPasses`.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .hf_stacks import Stack, find_stacks, forward_parameters, kernel_score_terms, main_stack, stack_meta
from .module_adapters import adapted
from .recorder import Recorder
from attnlab.core.trace import Segment

from .segments import Deferred, merged_patch_layout, text_segments, text_tokens, vision_layout

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
    needed = () if softcap is None and bias is None else \
        {name for name, term in (("softcap", softcap), ("bias", bias)) if term is not None} - kernel_score_terms()
    if needed:
        raise ValueError(f"{type(module).__name__} needs score terms {sorted(needed)} that attnlab's kernels do not "
                         "take yet (see docs/models.md)")
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

    def start(self, stack: Stack, pixel_values: torch.Tensor | None, grid_thw: torch.Tensor | None = None) -> None:
        if grid_thw is not None and getattr(stack.config, "temporal_patch_size", None) is not None:
            # Qwen2-VL: the images come packed, ``[n_patches, C*T*P*P]``, with each one's (t, h, w) patch grid
            merge = int(getattr(stack.config, "spatial_merge_size", 1) or 1)
            tokens, segments, mask = merged_patch_layout([tuple(g) for g in grid_thw.tolist()], merge)
            self.rec.begin_pass(stack.name, tokens, segments, mask)
            self.rec.stacks[stack.name].passes[-1].slots = mask
            return
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


def _n_distill(modules: dict[str, nn.Module], stack: Stack) -> int:
    """Distillation tokens (DeiT, Touvron et al., 2021) in the embeddings of a vision stack's owner, read from the
    model's walk (``{name: module}``; a second walk of the owner's parameters cost ~70 us an attach)."""
    inside = stack.owner + "."
    return sum(name.endswith("distillation_token") and param is not None
               for path, module in modules.items() if not stack.owner or path == stack.owner or path.startswith(inside)
               for name, param in module._parameters.items())


def _check_recorded(rec: Recorder, before: dict[str, int]) -> None:
    """After a forward call: a stack that began a pass but recorded no layer means attention bypassed attnlab."""
    if not rec.capture.captured:
        return
    for name, st in rec.stacks.items():
        if len(st.passes) > before.get(name, 0) and st.layers and not st.passes[-1].layers:
            raise RuntimeError(f"No attention layer of the {name!r} stack reached attnlab's attention function, so "
                               "the Trace would be empty; this model computes attention outside transformers' "
                               "AttentionInterface (see docs/models.md)")


def _text_pass(rec: Recorder, model: nn.Module, tokenizer, args: tuple, kwargs: dict, stack: str = "main") -> None:
    input_ids = _input(args, kwargs, "input_ids")
    if input_ids is None:
        what = "decoder_input_ids" if stack == "main" and "encoder" in rec.stacks else "input_ids"
        raise ValueError(f"attnlab capture needs {what} (inputs_embeds alone carry no token identities)")
    mask = kwargs.get("attention_mask")
    n = input_ids.shape[1]
    token_mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None or mask.dim() != 2 else \
        mask[:, -n:].bool()  # (B, N): a decoding step's mask covers every key so far; its last N are this pass's
    ids, token_mask = input_ids.cpu(), token_mask.cpu()
    grid_thw = kwargs.get("image_grid_thw")

    # made when read: a decoding step that only steers attention reads neither (its call: 38 -> 23 us in place)
    def tokens() -> list[list[str]]:
        return text_tokens(ids, tokenizer)

    def segments() -> list[list[Segment]]:
        config = model.config
        image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
        return text_segments(ids, token_mask, _special_ids(model, tokenizer) - {image_id}, image_id,
                             merged_image_grids(model, grid_thw))

    if rec.capture.captured:  # read by the Trace
        rec.begin_pass(stack, tokens(), segments(), token_mask)
    else:  # a generation that only steers attention: made if a key set reads them (VAR's image set; not ACT's sinks)
        rec.begin_pass(stack, Deferred(tokens), Deferred(segments), token_mask)


def entry_module(model: nn.Module, prefix: str, argument: str) -> nn.Module | None:
    """The innermost module above the block list ``prefix`` whose ``forward`` takes ``argument`` (``input_ids``,
    ``pixel_values``): where a tower called on its own receives its inputs (CLIP's ``text_model``); ``None`` when
    only the model itself takes it."""
    parts = prefix.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = model.get_submodule(".".join(parts[:cut]))
        own = "forward" in vars(module)  # an instance's own forward (a wrapper's) is read itself, else its class's
        if argument in (inspect.signature(module.forward).parameters if own else forward_parameters(type(module))):
            return module
    return None


def merged_image_grids(model: nn.Module, grid_thw: torch.Tensor | None) -> list[tuple[int, int]] | None:
    """Each image's grid of language-model image tokens, ``(h / m, w / m)`` after a Qwen2-VL-type ``m x m`` patch
    merger, from ``image_grid_thw`` ``[n_images, 3]``; ``None`` for other models (one frame per image assumed)."""
    vision = getattr(model.config, "vision_config", None)
    merge = getattr(vision, "spatial_merge_size", None)
    if grid_thw is None or not merge:
        return None
    return [(int(h) // merge, int(w) // merge) for _, h, w in grid_thw.tolist()]


def _by_name(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments ``{name: value}``, positional ones named by ``module.forward``'s signature."""
    names = [n for n, p in inspect.signature(module.forward).parameters.items()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return {**dict(zip(names, args)), **kwargs}


@dataclass
class EncoderDecoderPasses:
    """Starts the Trace passes of an encoder-decoder's stacks (Vaswani et al., 2017): ``encoder`` when the encoder
    runs, ``main`` (decoder self-attention) and ``cross`` when the decoder runs.

    The encoder's tokens are its ``input_ids`` (T5, BART) or, for a speech encoder reading ``input_features``
    (Whisper), its frames ``frame 0, frame 1, ...``, whose count the first block's input tells. Cross-attention's
    queries are the decoder's tokens and its keys the encoder's latest pass (its padding mask included); when the
    encoder did not run inside ``attach`` (``encoder_outputs`` given), the keys are ``enc 0, enc 1, ...``.
    """

    rec: Recorder
    model: nn.Module
    tokenizer: object
    pending: int | None = None  # batch size of input_features waiting for the first encoder block

    def encoder_start(self, runner: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = _by_name(runner, args, kwargs)  # Whisper's encoder takes input_features first, T5's input_ids
        args = ()
        if kwargs.get("input_ids") is not None:
            _text_pass(self.rec, self.model, self.tokenizer, args, kwargs, stack="encoder")
            return
        features = _input(args, kwargs, "input_features")
        if features is None:
            raise ValueError("attnlab capture of an encoder-decoder's encoder needs input_ids (text) or "
                             "input_features (speech); inputs_embeds alone carry no token identities")
        self.pending = features.shape[0]

    def first_block(self, stack: Stack, hidden: torch.Tensor) -> None:
        if stack.name != "encoder" or self.pending is None:
            return
        batch, n_frames = self.pending, hidden.shape[1]
        self.pending = None
        tokens = [[f"frame {i}" for i in range(n_frames)] for _ in range(batch)]
        segments = [[Segment("audio", 0, n_frames, label="audio")] for _ in range(batch)]
        self.rec.begin_pass("encoder", tokens, segments, torch.ones(batch, n_frames, dtype=torch.bool))

    def decoder_start(self, runner: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = _by_name(runner, args, kwargs)
        _text_pass(self.rec, self.model, self.tokenizer, (), kwargs, stack="main")
        queries = self.rec.stacks["main"].passes[-1]
        self.rec.begin_pass("cross", queries.tokens, queries.segments, queries.token_mask, keys=self._keys(kwargs))

    def _keys(self, kwargs: dict) -> tuple:
        """``(tokens, segments, token_mask [B, K])`` of the encoder tokens the decoder attends to."""
        encoder = self.rec.stacks["encoder"].passes
        hidden = kwargs.get("encoder_hidden_states")
        if encoder and (hidden is None or encoder[-1].token_mask.shape[1] == hidden.shape[1]):
            return encoder[-1].tokens, encoder[-1].segments, encoder[-1].token_mask
        if hidden is None:
            raise ValueError("attnlab capture of cross-attention needs the decoder's encoder_hidden_states; run the "
                             "whole encoder-decoder model (or its generate) inside attach")
        batch, n_keys = hidden.shape[:2]
        mask = kwargs.get("encoder_attention_mask")
        mask = torch.ones(batch, n_keys, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask.bool().cpu()
        return [[f"enc {i}" for i in range(n_keys)] for _ in range(batch)], [[] for _ in range(batch)], mask


@contextlib.contextmanager
def attach_hf(model: nn.Module, rec: Recorder, tokenizer=None, model_id: str | None = None) -> Iterator[Recorder]:
    """Install attnlab's attention on a HF model for the duration of the block."""
    ensure_registered()
    modules = dict(model.named_modules())  # one walk of the model, read by each step below
    stacks = find_stacks(model, modules)  # refuses what cannot be captured, naming the module and why
    model_id = model_id or getattr(model.config, "_name_or_path", "") or type(model).__name__
    for stack in stacks:
        rec.add_stack(stack.name, stack_meta(model, stack, model_id), main=stack.name == "main")
    configs = {id(cfg): cfg for cfg in map(_config_of, modules.values())
               if cfg is not None and hasattr(cfg, "_attn_implementation_internal")}
    saved = {key: cfg._attn_implementation_internal for key, cfg in configs.items()}
    handles, sited = [], []
    vision = VisionPasses(rec, {})
    encdec = EncoderDecoderPasses(rec, model, tokenizer) if any(s.role == "cross" for s in stacks) else None
    try:
        for cfg in configs.values():
            cfg._attn_implementation_internal = IMPL_NAME
        handles += _pass_starters(model, rec, tokenizer, stacks, vision, encdec)
        for stack in stacks:
            if stack.vision:
                n_distill = _n_distill(modules, stack)
                first: Callable | None = lambda st, h, n=n_distill: vision.first_block(st, n, h)  # noqa: E731
            else:
                first = encdec.first_block if encdec is not None else None
            handles += _site_stack(modules, rec, stack, first, sited)
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


def _config_of(module: nn.Module):
    """``module.config``, or ``None``: read from the instance's attributes, where Hugging Face modules keep it (asking
    each of a model's modules with ``hasattr`` raised and caught an AttributeError in most of them), else from a class
    attribute such as a property."""
    cfg = vars(module).get("config")
    return cfg if cfg is not None or not hasattr(type(module), "config") else getattr(module, "config", None)


def _pass_starters(model: nn.Module, rec: Recorder, tokenizer, stacks: list[Stack], vision: VisionPasses,
                   encdec: "EncoderDecoderPasses | None") -> list:
    """The hooks that start each stack's pass where its inputs arrive; returns their handles.

    The model's own forward starts the main pass (and, after it, checks that attention reached attnlab); a tower
    called on its own (CLIP's ``get_text_features``) starts it at its entry module; image towers at their owner;
    an encoder-decoder's encoder and decoder at their own ``forward``.
    """
    main = next(s for s in stacks if s.name == "main")
    before: dict[str, int] = {}
    inside = {"top": False}  # whether the model's own forward is running (its hook started the main pass)

    def top_hook(_mod, args, kwargs):
        inside["top"] = True
        before.update({name: len(st.passes) for name, st in rec.stacks.items()})
        if encdec is not None:  # the encoder's and decoder's own hooks start their passes
            return
        if main.vision:
            vision.start(main, _input(args, kwargs, "pixel_values"))
        else:
            _text_pass(rec, model, tokenizer, args, kwargs)

    def top_done(*_):
        inside["top"] = False
        _check_recorded(rec, before)

    handles = [model.register_forward_pre_hook(top_hook, with_kwargs=True),
               model.register_forward_hook(top_done, always_call=True)]
    text_entry = entry_module(model, main.prefix, "input_ids") if encdec is None and not main.vision else None
    if text_entry is not None:
        handles.append(text_entry.register_forward_pre_hook(
            lambda m, a, kw: None if inside["top"] else _text_pass(rec, model, tokenizer, (), _by_name(m, a, kw)),
            with_kwargs=True))
    for stack in stacks:
        if stack.vision and stack.name != "main":
            owner = model.get_submodule(stack.owner) if stack.owner else (
                entry_module(model, stack.prefix, "pixel_values") or model)
            handles.append(owner.register_forward_pre_hook(
                lambda _m, a, kw, s=stack: vision.start(s, _input(a, kw, "pixel_values"), _input(a, kw, "grid_thw", 1)),
                with_kwargs=True))
        if encdec is not None and stack.role == "self":
            start = encdec.encoder_start if stack.name == "encoder" else encdec.decoder_start
            handles.append(model.get_submodule(stack.runner).register_forward_pre_hook(
                lambda m, a, kw, f=start: f(m, a, kw), with_kwargs=True))
    return handles


def _site_stack(modules: dict[str, nn.Module], rec: Recorder, stack: Stack, first_block: Callable | None,
                sited: list) -> list:
    """Tell each attention module of ``stack`` its site and hook its blocks; returns the hook handles.

    ``first_block(stack, hidden [B, N, d])`` runs before the first block (a pass that starts once its token count
    is known). A cross-attention stack shares its blocks with the decoder's self-attention, which records them.
    """
    handles = []

    def block_in(_m, args, kwargs, layer):
        hidden = _input(args, kwargs, "hidden_states")
        if layer == min(stack.attn_names) and first_block is not None:
            first_block(stack, hidden)
        rec.block_input(stack.name, layer, hidden)

    for layer, attn_name in stack.attn_names.items():
        module = modules[attn_name]
        setattr(module, SITE_ATTR, Site(rec, stack.name, layer))
        sited.append(module)
        if stack.role == "cross":
            continue
        block = modules[f"{stack.prefix}.{layer}"]
        # a hook on a block costs every call of it torch's slow path: only where something reads the hidden state
        if rec.reads_block_inputs(stack.name) or (first_block is not None and layer == min(stack.attn_names)):
            handles.append(block.register_forward_pre_hook(
                lambda _m, a, kw, i=layer: block_in(_m, a, kw, i), with_kwargs=True))
        if rec.capture.resid:
            handles.append(block.register_forward_hook(
                lambda _m, _a, out, i=layer: rec.block_output(stack.name, i, out[0] if isinstance(out, tuple) else out)))
    return handles
