"""TransformerLens backend: hook points of a TransformerLens 4.x ``TransformerBridge``.

Inside ``attach`` the bridge gets TransformerLens hooks (through ``bridge.hooks(...)``, which removes
them on exit, also when the forward raises) plus one torch pre-hook on the wrapped Hugging Face model
that reads the token ids of each forward call.

A capture without a plan reads what the bridge computed itself (:func:`_reading_hooks`): the pattern from
``hook_pattern``, the scaled scores from ``hook_attn_scores`` (for ``lse``), ``z`` from ``hook_z``; the recorder turns
them into the kernels' statistics (:meth:`Recorder.observe`). Attention is not computed twice, and every attention
bridge that fires those hook points is captured (GPT-2, LLaMA, GPT-NeoX/Pythia, Phi-3, OPT ...), in whatever order
they fire.

A plan needs attnlab's own attention: the layer's post-rotary ``q``, ``k`` and ``v`` are stashed from their hook
points, the mask the bridge applied is read off ``hook_attn_scores`` (masked scores sit at the dtype's minimum or
``-inf``), and at ``hook_z`` the recorder recomputes attention and its result replaces ``z``. Patching ``z`` rather
than ``hook_pattern`` is deliberate: the bridge's generic attention path discards edits to the pattern. So do
captured queries and keys, which must be the ones that reach the softmax: only attention bridges whose hook points
carry exactly those are routed (see :func:`attention_source`): GPT-2-style fused QKV (``JointQKVAttentionBridge``)
and LLaMA-style rotary attention (``PositionEmbeddingsAttentionBridge``, whose ``hook_rot_q``/``hook_rot_k`` fire
after RoPE; its ``hook_q``/``hook_k`` fire before it). The pre-4.x ``HookedTransformer`` is not supported.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from attnlab.core.trace import TraceMeta

from .recorder import Recorder
from .segments import text_segments, text_tokens

#: Attention bridge class -> hook names (under ``blocks.{L}.attn.``) of the q and k that reach the softmax.
QK_SOURCES = {
    "JointQKVAttentionBridge": ("hook_q", "hook_k"),
    "PositionEmbeddingsAttentionBridge": ("hook_rot_q", "hook_rot_k"),
}

HookFn = Callable[[torch.Tensor, object], "torch.Tensor | None"]


@dataclass
class LayerScratch:
    """What one layer's hook points handed over before ``hook_z`` fires; cleared after it."""

    q: torch.Tensor | None = None  # (B, N, H, d)
    k: torch.Tensor | None = None  # (B, N, Hkv, d)
    v: torch.Tensor | None = None  # (B, N, Hkv, d)
    allowed: torch.Tensor | None = None  # (B, H, Q, K) bool
    pattern: torch.Tensor | None = None  # (B, H, Q, K)
    scores: torch.Tensor | None = None  # (B, H, Q, K)
    z: torch.Tensor | None = None  # (B, Q, H, d)

    def clear(self) -> None:
        self.q = self.k = self.v = self.allowed = self.pattern = self.scores = self.z = None


@dataclass
class LayerSite:
    """How to recompute one layer's attention: its q/k hook names and score scale."""

    layer: int
    q_hook: str
    k_hook: str
    scale: float
    scratch: LayerScratch = field(default_factory=LayerScratch)


def _require_bridge(model: nn.Module) -> None:
    """Raise TypeError unless ``model`` is a TransformerBridge wrapping a local HF model."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - only with TransformerLens < 3
        raise TypeError(
            f"attnlab supports TransformerLens through TransformerBridge (TransformerLens >= 3); got "
            f"{type(model).__name__}. Upgrade TransformerLens, or attach() to the Hugging Face model itself."
        ) from err
    if not isinstance(model, TransformerBridge):
        raise TypeError(
            f"attnlab supports TransformerLens models as TransformerBridge, not {type(model).__name__}. "
            "Boot one with TransformerBridge.boot_transformers(name_or_path), or attach() to the HF model."
        )
    if not isinstance(getattr(model, "original_model", None), nn.Module):
        raise TypeError("attnlab needs a TransformerBridge over a local Hugging Face model (bridge.original_model); "
                        "remote or vLLM drivers are not supported")


def attention_source(attn: nn.Module) -> tuple[str, str] | str:
    """The ``(q_hook, k_hook)`` of an attention bridge, or why its attention cannot be recomputed.

    Args:
        attn: ``bridge.blocks[L].attn``.

    Returns:
        Hook names relative to ``blocks.{L}.attn``, or a string naming the unsupported feature.
    """
    name = type(attn).__name__
    if name not in QK_SOURCES:
        return f"its attention bridge {name} has no hook points for the q and k that reach the softmax"
    hf_attn = attn.original_component
    cfg = attn.config
    if name == "PositionEmbeddingsAttentionBridge":
        if getattr(hf_attn, "attn_logit_softcapping", None) is not None:
            return "it soft-caps attention scores"
        if getattr(hf_attn, "sinks", None) is not None:
            return "it has learned attention sinks"
        if getattr(cfg, "gated_q_proj", False) or "gate" in attn._modules:
            return "it gates the attention output"
        if getattr(cfg, "qk_norm_after_rope", False) and "q_norm" in attn._modules:
            return "it normalises q and k after the rotary embedding"
    return QK_SOURCES[name]


def _scale(attn: nn.Module, layer: int) -> float:
    """The score scale the bridge itself uses for this attention module."""
    cfg = attn.config
    d_head = int(cfg.d_head)
    if type(attn).__name__ == "PositionEmbeddingsAttentionBridge":
        return float(getattr(attn.original_component, "scaling", d_head**-0.5))
    scale = d_head**-0.5
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        idx = getattr(attn, "_layer_idx", None)
        scale /= float((layer if idx is None else idx) + 1)
    return scale


def layer_sites(bridge: nn.Module) -> dict[int, LayerSite] | str:
    """One :class:`LayerSite` per block, or the reason the first unsupported block gives."""
    sites = {}
    for layer, block in enumerate(bridge.blocks):
        source = attention_source(block.attn)
        if isinstance(source, str):
            return f"block {layer}: {source}"
        sites[layer] = LayerSite(layer, source[0], source[1], _scale(block.attn, layer))
    return sites


def tl_meta(bridge: nn.Module, model_id: str | None) -> TraceMeta:
    """TraceMeta from ``bridge.cfg`` (family from the wrapped HF model's ``model_type``)."""
    cfg = bridge.cfg
    hf_cfg = getattr(bridge.original_model, "config", None)
    family = getattr(hf_cfg, "model_type", None) or str(cfg.architecture or "unknown").lower()
    model_id = model_id or getattr(cfg, "model_name", None) or type(bridge).__name__
    dtype = str(getattr(cfg, "dtype", torch.float32)).replace("torch.", "")
    return TraceMeta(model=str(model_id), family=family, n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads),
                     d_head=int(cfg.d_head), d_model=int(cfg.d_model), causal=cfg.attention_dir == "causal",
                     dtype=dtype, backend="transformer_lens")


def _special_ids(bridge: nn.Module, tokenizer) -> set[int]:
    if tokenizer is not None:
        return set(tokenizer.all_special_ids)
    cfg = bridge.original_model.config
    names = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {v for v in (getattr(cfg, n, None) for n in names) if isinstance(v, int)}


#: keyword names a KV cache reaches the HF model under: transformers 5.25 renamed ``past_key_values`` to ``cache``
#: (the old name is still accepted with a deprecation warning), and ``generate`` passes whichever its version uses
KV_CACHE_KWARGS = ("cache", "past_key_values")


def _kv_cache_kwarg(kwargs: dict) -> str | None:
    """The name under which a non-empty KV cache was passed, or None for a full-sequence pass."""
    for name in KV_CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is None:
            continue
        length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 1
        if length:
            return name
    return None


def _begin_pass(rec: Recorder, bridge: nn.Module, tokenizer, args: tuple, kwargs: dict) -> None:
    """Start a recorder pass from the ids (``[B, N]``) and 2-D mask the bridge hands the HF model."""
    cached = _kv_cache_kwarg(kwargs)
    if cached is not None and _routes_attention(rec):
        raise ValueError(f"attnlab's TransformerLens capture got a KV cache (`{cached}=`): hook_k/hook_v then see "
                         "only the new tokens. Run the bridge on the full sequence without a KV cache, or attach() "
                         "to the Hugging Face model to capture generation")
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    if input_ids is None or input_ids.is_floating_point():
        raise ValueError("attnlab capture needs token ids; call the bridge with a string or an id tensor, "
                         "not with embeddings or start_at_layer")
    mask = kwargs.get("attention_mask")
    token_mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask.bool()
    token_mask = token_mask[:, -input_ids.shape[1]:].cpu()
    segments = text_segments(input_ids.cpu(), token_mask, _special_ids(bridge, tokenizer))
    rec.begin_pass("main", text_tokens(input_ids, tokenizer), segments, token_mask)


def recompute_z(rec: Recorder, site: LayerSite, z: torch.Tensor) -> torch.Tensor:
    """attnlab's attention for a layer from its stashed q, k, v and mask.

    Args:
        z: the bridge's own per-head output ``[B, Q, H, d]`` (only its dtype and shape are used).

    Returns:
        The new ``z`` ``[B, Q, H, d]``.
    """
    s = site.scratch
    if s.q is None or s.k is None or s.v is None or s.allowed is None:
        raise RuntimeError(f"TransformerLens hook points of layer {site.layer} did not fire before hook_z; "
                           "this bridge is not supported by attnlab")
    if s.allowed.shape[-1] != s.k.shape[1]:
        raise ValueError("attnlab's TransformerLens capture recomputes attention from hook_k/hook_v, which see only "
                         "the new tokens when a KV cache is used; run the bridge on the full sequence without "
                         "past_key_values/use_cache, or attach() to the Hugging Face model to capture generation")
    q = s.q.transpose(1, 2)  # (B, H, Q, d)
    k = s.k.transpose(1, 2)  # (B, Hkv, K, d)
    v = s.v.transpose(1, 2)  # (B, Hkv, K, d)
    out, _ = rec.attend("main", site.layer, q, k, v, causal=False, key_mask=None, attn_mask=s.allowed,
                        scale=site.scale)
    return out.transpose(1, 2).to(z.dtype).contiguous().view(z.shape)  # (B, Q, H, d)


def _attention_hooks(rec: Recorder, site: LayerSite) -> list[tuple[str, HookFn]]:
    """TL hooks that route one layer's attention through the recorder when it wants that layer."""
    prefix = f"blocks.{site.layer}.attn."
    scratch = site.scratch

    def stash(name: str) -> HookFn:
        def save(x: torch.Tensor, hook) -> None:
            if rec.wants("main", site.layer):
                setattr(scratch, name, x)

        return save

    def stash_mask(scores: torch.Tensor, hook) -> None:
        if rec.wants("main", site.layer):
            scratch.allowed = scores > torch.finfo(scores.dtype).min / 2  # (B, H, Q, K)

    def patch_z(z: torch.Tensor, hook) -> torch.Tensor | None:
        if not rec.wants("main", site.layer):
            return None
        try:
            return recompute_z(rec, site, z)
        finally:
            scratch.clear()

    return [(prefix + site.q_hook, stash("q")), (prefix + site.k_hook, stash("k")), (prefix + "hook_v", stash("v")),
            (prefix + "hook_attn_scores", stash_mask), (prefix + "hook_z", patch_z)]


def _reading_hooks(rec: Recorder, layer: int, qk_hooks: tuple[str, str] | None,
                   probe: tuple[str, str, float] | None = None) -> list[tuple[str, HookFn]]:
    """TL hooks that record one layer from what the bridge computed: pattern, scores, ``z`` and (``qk_hooks``,
    when queries and keys are captured) the q and k that reach the softmax. Bridges fire these in different orders
    (OPT's ``hook_pattern`` comes after ``hook_z``), so the layer is recorded once all of them have arrived.

    ``probe``: ``(q_hook, k_hook, scale)`` of a bridge whose scores' hook carries the weights, read only to derive
    ``lse`` and the entropy (``Recorder.observe``'s ``score_qk``), never recorded as the Trace's q and k.
    """
    prefix = f"blocks.{layer}.attn."
    scratch = LayerScratch()
    qk_hooks = qk_hooks or (probe[:2] if probe else None)
    wanted = {"pattern", "scores", *(("z",) if rec.capture.head_out else ()), *(("q", "k") if qk_hooks else ())}

    def keep(name: str) -> HookFn:
        def save(x: torch.Tensor, hook) -> None:
            if not rec.wants("main", layer):
                return
            setattr(scratch, name, x.detach())
            if all(getattr(scratch, n) is not None for n in wanted):
                q = scratch.q.transpose(1, 2) if scratch.q is not None else None  # (B, H, Q, d)
                k = scratch.k.transpose(1, 2) if scratch.k is not None else None  # (B, Hkv, K, d)
                z = scratch.z.transpose(1, 2) if scratch.z is not None else None  # (B, H, Q, d)
                try:
                    if probe is not None:
                        rec.observe("main", layer, scratch.pattern, scratch.scores, out=z, score_qk=(q, k, probe[2]))
                    else:
                        rec.observe("main", layer, scratch.pattern, scratch.scores, q=q, k=k, out=z)
                finally:
                    scratch.clear()

        return save

    hooks = [(prefix + "hook_pattern", keep("pattern")), (prefix + "hook_attn_scores", keep("scores"))]
    if "z" in wanted:
        hooks.append((prefix + "hook_z", keep("z")))
    if qk_hooks:
        hooks += [(prefix + qk_hooks[0], keep("q")), (prefix + qk_hooks[1], keep("k"))]
    return hooks


def _weights_probe(bridge: nn.Module, layer: int, rec: Recorder) -> tuple[str, str, float] | None:
    """``(q_hook, k_hook, scale)`` for a generic attention bridge (one whose scores' hook may carry the weights) when
    ``lse`` or the entropy is captured and it has ``hook_q``/``hook_k``; ``None`` otherwise."""
    attn = bridge.blocks[layer].attn
    wanted = {"lse", "entropy"} & set(rec.capture.stat_names)
    names = (f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k")
    if not wanted or not isinstance(attention_source(attn), str) or not all(n in bridge.hook_dict for n in names):
        return None
    return "hook_q", "hook_k", _scale(attn, layer)


def _resid_hooks(rec: Recorder, n_layers: int) -> list[tuple[str, HookFn]]:
    hooks = []
    for layer in range(n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", lambda x, hook, i=layer: rec.block_input("main", i, x)))
        hooks.append((f"blocks.{layer}.hook_resid_post", lambda x, hook, i=layer: rec.block_output("main", i, x)))
    return hooks


def _routes_attention(rec: Recorder) -> bool:
    """Whether any layer may need attnlab's attention (resid alone is read straight off hook points)."""
    return bool(set(rec.capture.captured) - {"resid"}) or (rec.plan is not None and not rec.plan.is_identity)


@contextlib.contextmanager
def attach_tl(model: nn.Module, rec: Recorder, tokenizer=None, model_id: str | None = None) -> Iterator[Recorder]:
    """Hook a TransformerBridge for the duration of the block (hooks removed on exit and on errors)."""
    _require_bridge(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    rec.add_stack("main", tl_meta(model, model_id), main=True)
    hooks = _resid_hooks(rec, int(model.cfg.n_layers))
    planned = rec.plan is not None and not rec.plan.is_identity
    if _routes_attention(rec) and (planned or rec.capture.qk):
        sites = layer_sites(model)
        if isinstance(sites, str):
            need = "a plan" if planned else "queries and keys (qk)"
            raise ValueError(f"attnlab cannot take the attention of this TransformerBridge apart ({sites}), which "
                             f"{need} needs; with TransformerLens it captures patterns, statistics, head outputs "
                             "and resid for it. Attach to the Hugging Face model instead for qk and plans.")
        for site in sites.values():
            hooks.extend(_attention_hooks(rec, site) if planned else
                         _reading_hooks(rec, site.layer, (site.q_hook, site.k_hook)))
    elif _routes_attention(rec):
        for layer in range(int(model.cfg.n_layers)):
            hooks.extend(_reading_hooks(rec, layer, None, _weights_probe(model, layer, rec)))
    handle = model.original_model.register_forward_pre_hook(
        lambda _m, args, kwargs: _begin_pass(rec, model, tokenizer, args, kwargs), with_kwargs=True)
    try:
        with model.hooks(fwd_hooks=hooks):
            yield rec
    finally:
        handle.remove()
