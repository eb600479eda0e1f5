"""Attention modules that compute their scores inside ``forward`` instead of calling transformers'
``AttentionInterface``, given a ``forward`` that does call attnlab's attention function.

Inside :func:`adapted` (which ``attach`` enters) each such module's ``forward`` is replaced, on the instance, by
one written here: the same projections, cache update and output projection as the module's own, with the
scores handed to :func:`attnlab.hooks.hf.attnlab_attention_forward` (which computes them with attnlab's kernels,
or with SDPA on layers the capture does not want). On exit the instances get their own ``forward`` back. Each
adapter is tested against the module's own eager attention (``tests/zoo/test_coverage_matrix.py``).

- ``DisentangledSelfAttention`` (DeBERTa-v2/v3, He et al., 2021): the disentangled relative-position terms join
  the additive mask the same way.
- ``BloomAttention`` (BLOOM, BigScience 2022): ALiBi (Press et al., 2022), ``alibi [B*H, 1, K]``, is added to the
  scaled scores inside the module; here it joins the additive mask, whose finite part reaches the kernels as
  their ``bias`` term (as Falcon's ALiBi does).
- ``VisionAttention`` (Qwen2-VL's vision tower, Wang et al., 2024): every image of a batch is packed into one
  sequence ``[S, D]`` and the module attends within each image (``cu_seqlens``), one call per image. Here the
  images become the rows of one padded batch ``[n_images, H, n_max, d]`` with padded keys masked, so attnlab sees
  one call per layer and the vision Trace has one item per image (:func:`pack_images`).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn


def bloom_attention_forward(self, hidden_states: torch.Tensor, residual: torch.Tensor, alibi: torch.Tensor,
                            attention_mask: torch.Tensor | None, layer_past=None, use_cache: bool = False,
                            output_attentions: bool = False, **kwargs):
    """``BloomAttention.forward`` through attnlab's attention function. hidden_states/residual ``[B, Q, D]``,
    alibi ``[B*H, 1, K]``, attention_mask ``[B, 1, Q, K]`` (bool: allowed, or additive float) or ``None``.

    Returns:
        ``(output [B, Q, D], pattern [B, H, Q, K] or None)`` as the module's own forward.
    """
    from transformers.models.bloom.modeling_bloom import dropout_add

    from .hf import attnlab_attention_forward

    batch, q_len, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))  # each (B, H, Q, d)
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    bias = alibi.view(batch, self.num_heads, 1, key.shape[2]).to(query.dtype)  # (B, H, 1, K)
    if attention_mask is None:
        mask = bias
    elif attention_mask.dtype == torch.bool:
        mask = bias.masked_fill(~attention_mask, torch.finfo(query.dtype).min)
    else:
        mask = bias + attention_mask  # (B, H, Q, K): HF's large negative where masked
    out, pattern = attnlab_attention_forward(self, query, key, value, mask.expand(batch, -1, q_len, -1),
                                             scaling=self.inv_norm_factor,
                                             dropout=self.attention_dropout.p if self.training else 0.0,
                                             is_causal=True)  # (B, Q, H, d)
    context = out.reshape(batch, q_len, self.num_heads * self.head_dim)
    if self.pretraining_tp > 1 and self.slow_but_exact:
        step = self.hidden_size / self.pretraining_tp
        output = torch.zeros_like(context)
        for i in range(self.pretraining_tp):
            cols = slice(int(i * step), int((i + 1) * step))
            output = output + nn.functional.linear(context[:, :, cols], self.dense.weight[:, cols])
    else:
        output = self.dense(context)
    return dropout_add(output, residual, self.hidden_dropout, self.training), pattern


def deberta_v2_attention_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                                 output_attentions: bool = False, query_states: torch.Tensor | None = None,
                                 relative_pos: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None):
    """``DisentangledSelfAttention.forward`` (DeBERTa-v2/v3) through attnlab's attention function.

    The content-to-position and position-to-content terms (He et al., 2021, Eq. 4) come from the module's own
    ``disentangled_attention_bias`` and reach the kernels as their ``bias`` term; ``q k^T`` is scaled by
    ``1 / sqrt(d * (1 + number of relative terms))`` as in the module. hidden_states ``[B, N, D]``, attention_mask
    ``[B, 1, N, N]`` (nonzero: allowed).

    Returns:
        ``(context [B, N, D], pattern [B, H, N, N] or None)`` as the module's own forward.
    """
    from transformers.models.deberta_v2.modeling_deberta_v2 import scaled_size_sqrt

    from .hf import attnlab_attention_forward

    query_states = hidden_states if query_states is None else query_states
    n_heads = self.num_attention_heads
    query = self.transpose_for_scores(self.query_proj(query_states), n_heads)  # (B*H, Q, d)
    key = self.transpose_for_scores(self.key_proj(hidden_states), n_heads)  # (B*H, K, d)
    value = self.transpose_for_scores(self.value_proj(hidden_states), n_heads)
    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = float(scaled_size_sqrt(query, scale_factor))
    batch, q_len, k_len = hidden_states.shape[0], query.shape[1], key.shape[1]
    bias = torch.zeros(batch * n_heads, q_len, k_len, dtype=query.dtype, device=query.device)
    if self.relative_attention:
        bias = self.disentangled_attention_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings),
                                                scale_factor)  # (B*H, Q, K)
    mask = bias.view(batch, n_heads, q_len, k_len).masked_fill(~attention_mask.bool(), torch.finfo(query.dtype).min)
    split = (batch, n_heads, -1, query.shape[-1])
    out, pattern = attnlab_attention_forward(self, query.view(split), key.view(split), value.view(split), mask,
                                             scaling=1.0 / scale, dropout=self.dropout.p if self.training else 0.0,
                                             is_causal=False)  # (B, Q, H, d)
    return out.reshape(batch, q_len, -1), pattern


def pack_images(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[n_images, n_max]`` bool: which slots of a padded per-image batch hold one of a packed sequence's tokens.

    ``cu_seqlens`` ``[n_images + 1]`` are the images' start offsets in the packed sequence (and its length); in
    row-major order the True slots are the packed tokens in their order, so ``padded[slots] = packed`` fills it.
    """
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # (n_images,)
    n_max = int(lengths.max()) if lengths.numel() else 0
    return torch.arange(n_max, device=lengths.device)[None, :] < lengths[:, None]


def scatter_packed(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """A packed sequence ``[S, ...]`` padded into its batch ``[B, N, ...]`` (zeros where ``slots`` ``[B, N]`` is
    False; :func:`pack_images`)."""
    out = x.new_zeros(*slots.shape, *x.shape[1:])
    out[slots.to(x.device)] = x
    return out


def qwen2_vl_vision_attention_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                      position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                                      max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
    """Qwen2-VL's ``VisionAttention.forward`` through attnlab's attention function, one call for every image.

    hidden_states ``[S, D]`` (the batch's images packed), cu_seqlens ``[n_images + 1]``, position_embeddings
    (cos, sin) ``[S, d]``. The images are padded into ``[n_images, H, n_max, d]``; each attends over its own
    tokens (padded keys masked), as the module's per-image calls do.

    Returns:
        ``[S, D]`` as the module's own forward.
    """
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    from .hf import attnlab_attention_forward

    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # (S, H, d)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    slots = pack_images(cu_seqlens)  # (n_images, n_max)

    q, k, v = (scatter_packed(x, slots).transpose(1, 2) for x in (q, k, v))  # each (n_images, H, n_max, d)
    allowed = slots[:, None, None, :].expand(-1, 1, slots.shape[1], -1)  # (n_images, 1, n_max, n_max)
    out, _ = attnlab_attention_forward(self, q, k, v, allowed, scaling=self.scaling, dropout=0.0,
                                       is_causal=False)  # (n_images, n_max, H, d)
    return self.proj(out[slots].reshape(seq, -1))


#: ``model_type.ClassName`` of an attention module -> the ``forward`` attnlab runs in its place
ADAPTERS = {"bloom.BloomAttention": bloom_attention_forward,
            "deberta_v2.DisentangledSelfAttention": deberta_v2_attention_forward,
            "qwen2_vl.VisionAttention": qwen2_vl_vision_attention_forward}


def adapter_key(cls: type) -> str | None:
    """``model_type.ClassName`` of a transformers attention class (``qwen2_vl.VisionAttention``), else ``None``."""
    parts = cls.__module__.split(".")
    if parts[:2] != ["transformers", "models"] or len(parts) < 4:
        return None
    return f"{parts[2]}.{cls.__name__}"


def has_adapter(cls: type) -> bool:
    """Whether attnlab rewrites ``cls.forward`` to call its attention function (see :data:`ADAPTERS`)."""
    return adapter_key(cls) in ADAPTERS


@contextlib.contextmanager
def adapted(modules: list[nn.Module]) -> Iterator[None]:
    """Run each module of ``modules`` that has an adapter with it inside the block; the instances get their own
    ``forward`` back on exit, also when the block raises."""
    saved = []
    try:
        for module in modules:
            if has_adapter(type(module)):
                saved.append((module, module.__dict__.get("forward")))
                module.forward = types.MethodType(ADAPTERS[adapter_key(type(module))], module)
        yield
    finally:
        for module, own in saved:
            if own is None:
                del module.forward
            else:
                module.forward = own
