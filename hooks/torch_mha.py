"""Plain torch backend: every ``nn.MultiheadAttention`` of a module, patched inside ``attach``.

Each attention module's ``forward`` is replaced (on the instance, restored on exit, also when the
forward raises) by :func:`mha_forward`, which computes what ``nn.MultiheadAttention`` computes from
the module's own weights but runs the attention itself through the recorder. Layers the recorder
does not need fall through to the original forward. Layer ``i`` is the ``i``-th attention module in
``named_modules()`` order.

Plain torch models carry no token identities: tokens are ``"#<position>"``, a row is one text span
(plus ``pad`` spans where the first attention call's ``key_padding_mask`` ignores keys). A pass starts
at the first attention call after the model's own forward is entered.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.core.trace import TraceMeta

from .recorder import Recorder
from .segments import text_segments


@dataclass
class PassState:
    """Whether the next attention call starts a new recorder pass."""

    pending: bool = True


def find_attention(model: nn.Module) -> list[nn.MultiheadAttention]:
    """The ``nn.MultiheadAttention`` modules of ``model`` in ``named_modules()`` order (the layer index)."""
    return [m for _, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def torch_meta(model: nn.Module, layers: list[nn.MultiheadAttention], model_id: str | None) -> TraceMeta:
    """TraceMeta of the attention stack (head counts and widths from the widest layer)."""
    widest = max(layers, key=lambda m: m.embed_dim)
    dtype = str(widest.out_proj.weight.dtype).replace("torch.", "")
    return TraceMeta(model=model_id or type(model).__name__, family="torch", n_layers=len(layers),
                     n_heads=max(m.num_heads for m in layers), d_head=widest.head_dim, d_model=widest.embed_dim,
                     causal=False, dtype=dtype, backend="torch")


def _begin_pass(rec: Recorder, query: torch.Tensor, key_padding_mask: torch.Tensor | None,
                batch_first: bool) -> None:
    """Start a pass from the first attention call: ``#<position>`` tokens over the query length."""
    batched = query.dim() == 3
    n = query.shape[1 if (batch_first and batched) else 0]
    bsz = query.shape[0 if batch_first else 1] if batched else 1
    token_mask = torch.ones(bsz, n, dtype=torch.bool)
    if key_padding_mask is not None and key_padding_mask.shape[-1] == n:
        token_mask = _kept_keys(key_padding_mask.reshape(bsz, n)).cpu()
    segments = text_segments(torch.zeros(bsz, n, dtype=torch.long), token_mask, set())
    rec.begin_pass("main", [[f"#{i}" for i in range(n)] for _ in range(bsz)], segments, token_mask)


def _kept_keys(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """torch's key_padding_mask (bool True = ignore, or additive float) -> bool ``[B, S]``, True = attend."""
    if key_padding_mask.dtype == torch.bool:
        return ~key_padding_mask
    return _additive_to_bool(key_padding_mask, "key_padding_mask")


def _additive_to_bool(mask: torch.Tensor, name: str) -> torch.Tensor:
    """An additive float mask (0 or -inf / large negative) -> bool, True = attend."""
    allowed = mask > torch.finfo(mask.dtype).min / 2
    if (mask[allowed] != 0).any():
        raise ValueError(f"attnlab capture supports {name} as bool or 0/-inf floats, not additive attention biases; "
                         "pass a bool mask, or attach without capture or plan")
    return allowed


def _attn_allowed(attn_mask: torch.Tensor, bsz: int, n_heads: int) -> torch.Tensor:
    """torch's attn_mask (``[L, S]`` or ``[B*H, L, S]``; bool True = NOT allowed, or additive float)
    -> bool ``[B, 1|H, L, S]``, True = allowed."""
    allowed = ~attn_mask if attn_mask.dtype == torch.bool else _additive_to_bool(attn_mask, "attn_mask")
    if allowed.dim() == 2:
        return allowed.expand(bsz, 1, *allowed.shape)  # (B, 1, L, S)
    if allowed.dim() == 3 and allowed.shape[0] == bsz * n_heads:
        return allowed.view(bsz, n_heads, *allowed.shape[1:])  # (B, H, L, S)
    raise ValueError(f"attn_mask must be [L, S] or [B*num_heads, L, S]; got {tuple(attn_mask.shape)}")


def _project(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input projections; batch-first ``[B, L|S, E]`` in and out."""
    e = mha.embed_dim
    b_q, b_k, b_v = (None, None, None) if mha.in_proj_bias is None else mha.in_proj_bias.split(e)
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = mha.in_proj_weight.split(e)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, N, E]`` -> ``[B, H, N, E / H]``."""
    bsz, n, e = x.shape
    return x.view(bsz, n, n_heads, e // n_heads).transpose(1, 2)


def _extra_keys(mha: nn.MultiheadAttention, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Append ``bias_k``/``bias_v`` and the ``add_zero_attn`` zero key as torch does.

    Args:
        k, v: ``[B, H, S, d]``.

    Returns:
        ``(k, v, n_extra)`` with ``S + n_extra`` keys.
    """
    bsz, n_heads, _, d = k.shape
    extra = 0
    if mha.bias_k is not None:
        k = torch.cat([k, mha.bias_k.view(1, n_heads, 1, d).expand(bsz, -1, -1, -1)], dim=2)
        v = torch.cat([v, mha.bias_v.view(1, n_heads, 1, d).expand(bsz, -1, -1, -1)], dim=2)
        extra += 1
    if mha.add_zero_attn:
        k = torch.cat([k, k.new_zeros(bsz, n_heads, 1, d)], dim=2)
        v = torch.cat([v, v.new_zeros(bsz, n_heads, 1, d)], dim=2)
        extra += 1
    return k, v, extra


def _masks(mha: nn.MultiheadAttention, bsz: int, n_q: int, n_k: int, n_extra: int,
           key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, is_causal: bool,
           need_weights: bool) -> tuple[bool, torch.Tensor | None, torch.Tensor | None]:
    """torch's masks -> ``(causal, key_mask [B, K] | None, attn_mask [B, 1|H, L, K] | None)``, True = attend.

    ``n_k`` counts the extra keys; those are always attendable (torch pads its masks with zeros).
    """
    if is_causal and attn_mask is None:
        raise ValueError("is_causal=True needs an attn_mask in nn.MultiheadAttention (it is only a hint); pass "
                         "attn_mask=nn.Transformer.generate_square_subsequent_mask(L)")
    key_mask = None
    if key_padding_mask is not None:
        key_mask = _kept_keys(key_padding_mask.reshape(bsz, -1))  # (B, S)
        key_mask = F.pad(key_mask, (0, n_extra), value=True)  # (B, K)
    if is_causal and key_padding_mask is None and not need_weights:
        # torch then ignores attn_mask and runs SDPA's causal mask, aligned top-left when L != K.
        if n_q == n_k:
            return True, key_mask, None
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=attn_mask.device).tril()  # (L, K)
        return False, key_mask, causal.expand(bsz, 1, n_q, n_k)
    allowed = None
    if attn_mask is not None:
        allowed = F.pad(_attn_allowed(attn_mask, bsz, mha.num_heads), (0, n_extra), value=True)  # (B, 1|H, L, K)
    return False, key_mask, allowed


def _to_batch_first(x: torch.Tensor, batch_first: bool, batched: bool) -> torch.Tensor:
    if not batched:
        return x.unsqueeze(0)
    return x if batch_first else x.transpose(0, 1)


def _from_batch_first(x: torch.Tensor, batch_first: bool, batched: bool) -> torch.Tensor:
    if not batched:
        return x.squeeze(0)
    return x if batch_first else x.transpose(0, 1)


def _check_supported(mha: nn.MultiheadAttention, query: torch.Tensor) -> None:
    if mha.training and mha.dropout > 0:
        raise ValueError("attnlab capture runs attention without dropout; call model.eval() (or set dropout=0) "
                         "before attaching to a module in training mode")
    if query.is_nested:
        raise ValueError("attnlab capture does not take nested tensors; pass padded tensors with a key_padding_mask")


def mha_forward(mha: nn.MultiheadAttention, rec: Recorder, layer: int, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` with the attention run by the recorder.

    Args and returns as ``nn.MultiheadAttention.forward``: query ``[B, L, E]`` (``[L, B, E]`` unless
    ``batch_first``, ``[L, E]`` unbatched), key/value ``[B, S, E_k|E_v]``; returns the output in the
    query's layout and, with ``need_weights``, the applied attention ``[B, H, L, S]`` (averaged over
    heads to ``[B, L, S]`` when ``average_attn_weights``).
    """
    _check_supported(mha, query)
    batched = query.dim() == 3
    q_in, k_in, v_in = (_to_batch_first(x, mha.batch_first, batched) for x in (query, key, value))
    if not batched and key_padding_mask is not None:
        key_padding_mask = key_padding_mask.unsqueeze(0)
    q, k, v = _project(mha, q_in, k_in, v_in)  # (B, L, E), (B, S, E), (B, S, E)
    q, k, v = (_heads(x, mha.num_heads) for x in (q, k, v))  # (B, H, L|S, d)
    k, v, n_extra = _extra_keys(mha, k, v)  # (B, H, K, d)
    bsz, _, n_q, _ = q.shape
    causal, key_mask, allowed = _masks(mha, bsz, n_q, k.shape[2], n_extra, key_padding_mask, attn_mask,
                                       is_causal, need_weights)
    out, pattern = rec.attend("main", layer, q, k, v, causal=causal, key_mask=key_mask, attn_mask=allowed,
                              scale=None, return_pattern=need_weights)
    out = out.transpose(1, 2).reshape(bsz, n_q, mha.embed_dim)  # (B, L, E)
    out = _from_batch_first(F.linear(out, mha.out_proj.weight, mha.out_proj.bias), mha.batch_first, batched)
    if not need_weights:
        return out, None
    weights = pattern.to(q.dtype)  # (B, H, L, K)
    if average_attn_weights:
        weights = weights.mean(dim=1)  # (B, L, K)
    return out, (weights if batched else weights.squeeze(0))


def _patched_forward(mha: nn.MultiheadAttention, rec: Recorder, layer: int, state: PassState, original):
    """The instance ``forward`` installed inside ``attach``."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if state.pending:
            state.pending = False
            _begin_pass(rec, query, key_padding_mask, mha.batch_first)
        if not rec.wants("main", layer):
            return original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        return mha_forward(mha, rec, layer, query, key, value, key_padding_mask, need_weights, attn_mask,
                           average_attn_weights, is_causal)

    return forward


@contextlib.contextmanager
def _mha_fastpath_disabled(model: nn.Module) -> Iterator[None]:
    """Turn off torch's fused encoder-layer path, which bypasses ``self_attn.forward``, for the block."""
    uses_fastpath = any(isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer)) for m in model.modules())
    saved = torch.backends.mha.get_fastpath_enabled()
    try:
        if uses_fastpath:
            torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(saved)


@contextlib.contextmanager
def attach_torch(model: nn.Module, rec: Recorder, tokenizer=None, model_id: str | None = None) -> Iterator[Recorder]:
    """Patch every ``nn.MultiheadAttention`` of ``model`` for the duration of the block."""
    layers = find_attention(model)
    if not layers:
        raise ValueError(f"No nn.MultiheadAttention found in {type(model).__name__}; attnlab's plain-torch backend "
                         "captures nn.MultiheadAttention layers only (or pass a Hugging Face / TransformerLens model)")
    rec.add_stack("main", torch_meta(model, layers, model_id), main=True)
    state = PassState()
    patched: list[tuple[nn.Module, object]] = []
    handle = model.register_forward_pre_hook(lambda _m, _a: setattr(state, "pending", True))
    try:
        for layer, mha in enumerate(layers):
            patched.append((mha, mha.__dict__.get("forward")))
            mha.forward = _patched_forward(mha, rec, layer, state, mha.forward)
        with _mha_fastpath_disabled(model):
            yield rec
    finally:
        handle.remove()
        for mha, own in reversed(patched):
            if own is None:
                del mha.forward
            else:
                mha.forward = own
