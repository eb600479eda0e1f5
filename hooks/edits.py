"""Edits: replace or record a transformer's head outputs, queries/keys/values and MLP outputs during a forward pass.

The sites of each layer (:func:`layer_sites`) are read and written by hooks that live only inside
:func:`edited`: a forward pre-hook on the output projection (``c_proj``/``o_proj``) sees the merged per-head
output ``z`` (before ``W_O``); forward hooks on the q/k/v projections and the MLP see their outputs. Zeroing,
patching and scaling a head are all one :class:`Edits` value. Hugging Face GPT-2 and LLaMA-type models are
supported, and a TransformerLens ``TransformerBridge`` for head outputs (through ``hook_z``). Activation and path
patching (:mod:`attnlab.interventions.patching`) are built on these edits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

QKV = "qkv"


@dataclass(frozen=True)
class LayerSites:
    """Where one layer's head outputs, queries/keys/values and MLP output can be read and replaced.

    Attributes:
        out_proj: module whose input is the merged per-head output ``[B, N, H * d_head]``.
        qkv: ``{"q"|"k"|"v": (module, first column)}``; the head's slice starts there.
        mlp: the MLP module (its output is added to the residual).
        n_heads, n_kv_heads, d_head: shapes.
    """

    out_proj: nn.Module
    qkv: dict
    mlp: nn.Module
    n_heads: int
    n_kv_heads: int
    d_head: int


def layer_sites(model: nn.Module) -> list[LayerSites]:
    """The patchable sites of a Hugging Face GPT-2 or LLaMA-type model (alone, or as the language model of a
    LLaVA-type LVLM); ValueError for other models."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family == "gpt2":
        out = []
        for block in getattr(model, "transformer", model).h:
            attn, d = block.attn, block.attn.embed_dim
            qkv = {"q": (attn.c_attn, 0), "k": (attn.c_attn, d), "v": (attn.c_attn, 2 * d)}  # c_attn packs q, k, v
            out.append(LayerSites(attn.c_proj, qkv, block.mlp, attn.num_heads, attn.num_heads, attn.head_dim))
        return out
    decoder = getattr(model, "model", model)
    if getattr(decoder, "layers", None) is None and hasattr(model, "get_decoder"):
        decoder = model.get_decoder()  # a vision-language model's language model (LLaVA: model.language_model)
    layers = getattr(decoder, "layers", None)
    if layers is not None and all(hasattr(lay, "self_attn") and hasattr(lay.self_attn, "o_proj") for lay in layers):
        cfg = getattr(decoder, "config", model.config)
        n_heads = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        return [LayerSites(lay.self_attn.o_proj, {n: (getattr(lay.self_attn, f"{n}_proj"), 0) for n in QKV},
                           lay.mlp, n_heads, n_kv, d_head) for lay in layers]
    raise ValueError(f"Head patching supports Hugging Face GPT-2 and LLaMA-type models (and TransformerLens bridges "
                     f"for activation patching), not {family or type(model).__name__}")


def _is_bridge(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformer_lens")


def forward_logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Logits ``[B, N, V]`` of a Hugging Face model or TransformerLens bridge on ``{input_ids, attention_mask}``."""
    if _is_bridge(model):
        return model(inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    return model(**inputs).logits


@dataclass
class Edits:
    """What one forward pass replaces and records (the argument of :func:`edited`).

    Attributes:
        z: ``{layer: (values [B, N, H, d_head], heads [H] bool)}`` head outputs to write.
        qkv: ``{layer: {"q"|"k"|"v": (values [B, N, H, d_head], heads [H] bool)}}`` projections to write.
        mlp: ``{layer: values [B, N, d_model]}`` MLP outputs to write.
        positions: ``[B, N]`` bool where ``z`` and ``qkv`` edits apply; ``None`` for every position.
        transform_z: ``{layer: fn(z [B, N, H, d_head]) -> z}`` called on every pass through the layer (prefill and
            each decoding step) after the ``z`` writes: edits that depend on what the pass computes (VHR's heads).
        record_z: filled with ``{layer: z [B, N, H, d_head]}`` as the pass computes it (after edits).
        record_qkv: filled with ``{layer: {"q"|"k"|"v": [B, N, H, d_head]}}``.
        record_mlp: filled with ``{layer: [B, N, d_model]}``.
        record_layers: the layers the three ``record_*`` fill; ``None`` for every layer.
    """

    z: dict | None = None
    qkv: dict | None = None
    mlp: dict | None = None
    positions: torch.Tensor | None = None
    transform_z: dict | None = None
    record_z: dict | None = None
    record_qkv: dict | None = None
    record_mlp: dict | None = None
    record_layers: frozenset[int] | None = None

    def records(self, layer: int) -> bool:
        """Whether recordings are kept at ``layer``."""
        return self.record_layers is None or layer in self.record_layers


def _write(current: torch.Tensor, values: torch.Tensor, heads: torch.Tensor, positions) -> torch.Tensor:
    """``current``/``values`` ``[B, N, H, d]``; heads ``[H]`` bool; positions ``[B, N]`` bool or None."""
    where = heads.to(current.device)[None, None, :, None]
    if positions is not None:
        where = where & positions.to(current.device)[:, :, None, None]
    return torch.where(where, values.to(current.dtype), current)


def _hf_hooks(model: nn.Module, edits: Edits, handles: list) -> None:
    for layer, site in enumerate(layer_sites(model)):
        def pre(_m, args, layer=layer, site=site):
            x = args[0]
            z = x.view(*x.shape[:-1], site.n_heads, site.d_head)  # (B, N, H, dh)
            if edits.z and layer in edits.z:
                z = _write(z, *edits.z[layer], edits.positions)
            if edits.transform_z and layer in edits.transform_z:
                z = edits.transform_z[layer](z)
            if edits.record_z is not None and edits.records(layer):
                edits.record_z[layer] = z.detach().clone()
            return (z.reshape(x.shape),) + tuple(args[1:])

        records = edits.records(layer)
        if edits.z and layer in edits.z or edits.transform_z and layer in edits.transform_z or \
                edits.record_z is not None and records:
            handles.append(site.out_proj.register_forward_pre_hook(pre))
        if edits.qkv and layer in edits.qkv or edits.record_qkv is not None and records:
            handles += [module.register_forward_hook(lambda m, _a, out, layer=layer, site=site: _qkv_hook(
                m, out, layer, site, edits)) for module in {id(m): m for m, _ in site.qkv.values()}.values()]
        if edits.mlp and layer in edits.mlp or edits.record_mlp is not None and records:
            handles.append(site.mlp.register_forward_hook(
                lambda _m, _a, out, layer=layer: _mlp_hook(out, layer, edits)))


def _qkv_hook(module, out: torch.Tensor, layer: int, site: LayerSites, edits: Edits) -> torch.Tensor:
    out = out.clone()
    for name, (mod, start) in site.qkv.items():
        if mod is not module:
            continue
        n = site.n_heads if name == "q" else site.n_kv_heads
        cols = slice(start, start + n * site.d_head)
        part = out[..., cols].view(*out.shape[:-1], n, site.d_head)  # (B, N, H, dh)
        if edits.qkv and name in edits.qkv.get(layer, {}):
            part = _write(part, *edits.qkv[layer][name], edits.positions)
            out[..., cols] = part.reshape(*out.shape[:-1], -1)
        if edits.record_qkv is not None and edits.records(layer):
            edits.record_qkv.setdefault(layer, {})[name] = part.detach().clone()
    return out


def _mlp_hook(out: torch.Tensor, layer: int, edits: Edits):
    if edits.mlp and layer in edits.mlp:
        out = edits.mlp[layer].to(out.dtype)
    if edits.record_mlp is not None and edits.records(layer):
        edits.record_mlp[layer] = out.detach().clone()
    return out


def _tl_hooks(model: nn.Module, edits: Edits) -> list:
    if edits.qkv or edits.mlp or edits.transform_z or edits.record_qkv is not None or edits.record_mlp is not None:
        raise ValueError("With a TransformerLens bridge only head outputs (hook_z) can be patched; use the Hugging "
                         "Face model for path patching")
    hooks = []
    for layer in range(int(model.cfg.n_layers)):
        def fn(z, hook, layer=layer):
            if edits.z and layer in edits.z:
                z = _write(z, *edits.z[layer], edits.positions)
            if edits.record_z is not None and edits.records(layer):
                edits.record_z[layer] = z.detach().clone()
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", fn))
    return hooks


@contextlib.contextmanager
def edited(model: nn.Module, edits: Edits) -> Iterator[nn.Module]:
    """Apply ``edits`` to every forward pass of ``model`` inside the block; hooks are removed on exit.

    Example:
        >>> rec = Edits(record_z={})  # doctest: +SKIP
        >>> with edited(model, rec): model(**inputs)  # doctest: +SKIP
        >>> rec.record_z[0].shape  # (B, N, H, d_head)  # doctest: +SKIP
    """
    if _is_bridge(model):
        with model.hooks(fwd_hooks=_tl_hooks(model, edits)):
            yield model
        return
    handles: list = []
    try:
        _hf_hooks(model, edits, handles)
        yield model
    finally:
        for h in handles:
            h.remove()


def run(model: nn.Module, inputs: dict, edits: Edits | None = None) -> torch.Tensor:
    """Logits ``[B, N, V]`` of one forward pass under ``edits`` (no gradients)."""
    with torch.no_grad(), edited(model, edits or Edits()):
        return forward_logits(model, inputs)


def last_positions(inputs: dict) -> torch.Tensor:
    """``[B]`` index of the last real token of each row, whichever side the batch is padded on.

    Args:
        inputs: ``{"input_ids": [B, N], "attention_mask": [B, N] (optional)}``; without a mask every token is real.
    """
    mask = inputs.get("attention_mask")
    ids = inputs["input_ids"]
    if mask is None:
        return torch.full((ids.shape[0],), ids.shape[1] - 1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), positions, -1).amax(1)
