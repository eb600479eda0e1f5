"""The weight-level decomposition behind circuit tracing: GPT-2 attention weights with ``ln_1`` folded in, the
exact SVD of each head's augmented QK (and OV) matrix, and the per-component terms of an attention score.

See :mod:`attnlab.probes.circuits` for the method (Franco & Crovella 2024) and its departures from the released code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPT2Weights:
    """Attention weights of a GPT-2 with ``ln_1`` folded into the reading weights (float64).

    Attributes:
        w_q, w_k, w_v: ``[L, H, d_model, d_head]`` gain folded in, centred over ``d_model``.
        b_q, b_k, b_v: ``[L, H, d_head]`` with ``ln_1``'s bias folded in.
        w_o: ``[L, H, d_head, d_model]`` rows of ``c_proj`` for each head.
        scale: ``[L]`` factor applied to ``q·k`` before the softmax.
        eps: ``[L]`` ``ln_1`` epsilon.
    """

    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    b_q: torch.Tensor
    b_k: torch.Tensor
    b_v: torch.Tensor
    w_o: torch.Tensor
    scale: tuple[float, ...]
    eps: tuple[float, ...]

    @property
    def n_layers(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.w_q.shape[1])


@dataclass(frozen=True)
class SVDFactors:
    """``M = u diag(s) vᵀ`` of rank ``r``: ``u`` ``[rows, r]``, ``s`` ``[r]`` descending, ``v`` ``[cols, r]``."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    def matrix(self) -> torch.Tensor:
        """The full matrix (for checks)."""
        return self.u @ torch.diag(self.s) @ self.v.T


def gpt2_blocks(model) -> list:
    """The ``GPT2Block`` list of a Hugging Face GPT-2; ValueError naming what is supported otherwise."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family != "gpt2":
        raise ValueError(
            f"Sparse attention decomposition supports Hugging Face GPT-2 models, not {family or type(model).__name__}: "
            "rotary (LLaMA-type) models have position-dependent QK matrices. Pass a GPT2LMHeadModel or GPT2Model.")
    return list(getattr(model, "transformer", model).h)


def _fold(w: torch.Tensor, b: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, n_heads: int):
    """``ln_1`` folded into one projection: ``w`` ``[d, H*dh]`` -> ``([H, d, dh], [H, dh])``."""
    d = w.shape[0]
    w_h = w.reshape(d, n_heads, -1).permute(1, 0, 2)  # (H, d, dh)
    b_h = b.reshape(n_heads, -1) + torch.einsum("d,hde->he", bias, w_h)  # (H, dh)
    w_h = gain[None, :, None] * w_h
    return w_h - w_h.mean(dim=1, keepdim=True), b_h


def gpt2_weights(model) -> GPT2Weights:
    """Read a Hugging Face GPT-2's attention weights with ``ln_1`` folded in (see the module docstring)."""
    per = {k: [] for k in ("w_q", "w_k", "w_v", "b_q", "b_k", "b_v", "w_o")}
    scale, eps = [], []
    for block in gpt2_blocks(model):
        attn, n_heads = block.attn, block.attn.num_heads
        w = attn.c_attn.weight.detach().double()  # (d, 3d)
        b = attn.c_attn.bias.detach().double()  # (3d,)
        gain, bias = block.ln_1.weight.detach().double(), block.ln_1.bias.detach().double()
        d = w.shape[0]
        for i, name in enumerate("qkv"):
            w_h, b_h = _fold(w[:, i * d:(i + 1) * d], b[i * d:(i + 1) * d], gain, bias, n_heads)
            per[f"w_{name}"].append(w_h)
            per[f"b_{name}"].append(b_h)
        per["w_o"].append(attn.c_proj.weight.detach().double().reshape(n_heads, -1, d))  # (H, dh, d)
        scale.append(float(attn.scaling))
        eps.append(float(block.ln_1.eps))
    return GPT2Weights(**{k: torch.stack(v) for k, v in per.items()}, scale=tuple(scale), eps=tuple(eps))


def low_rank_svd(a: torch.Tensor, b: torch.Tensor) -> SVDFactors:
    """Exact SVD of ``a bᵀ`` (``a`` ``[m, r]``, ``b`` ``[n, r]``) through QR; signs fixed as ``svd_flip``."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b)
    um, s, vmt = torch.linalg.svd(ra @ rb.T)
    u, v = qa @ um, qb @ vmt.T
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))[0]  # (r,)
    signs[signs == 0] = 1.0
    return SVDFactors(u * signs, s, v * signs)


def qk_svd(weights: GPT2Weights, layer: int, head: int) -> SVDFactors:
    """SVD of the augmented, scaled QK matrix ``Ω̃`` of one head; ``u``, ``v`` are ``[d_model + 1, d_head]``."""
    a = torch.cat([weights.w_q[layer, head], weights.b_q[layer, head][None]]) * weights.scale[layer]  # (d+1, dh)
    b = torch.cat([weights.w_k[layer, head], weights.b_k[layer, head][None]])  # (d+1, dh)
    return low_rank_svd(a, b)


def ov_svd(weights: GPT2Weights, layer: int, head: int) -> SVDFactors:
    """SVD of one head's ``W_V W_O`` (``[d_model, d_model]``, rank ``d_head``; ``ln_1`` folded into ``W_V``).

    The value bias is left out: attention rows sum to one, so ``b_V W_O`` is a constant the head adds.
    """
    return low_rank_svd(weights.w_v[layer, head], weights.w_o[layer, head].T)


def normalise(resid: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̃ [..., d+1], ln scale [...])``: LayerNorm without gain and bias, with a constant 1 appended."""
    centred = resid - resid.mean(-1, keepdim=True)
    scale = torch.sqrt(centred.pow(2).mean(-1) + eps)
    x = centred / scale[..., None]
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1), scale


def score_terms(factors: SVDFactors, x_dest: torch.Tensor, x_src: torch.Tensor) -> torch.Tensor:
    """Per-singular-vector terms ``σ_k (x̃_i·u_k)(v_k·x̃_j)`` ``[..., r]``; they sum to the score."""
    return (x_dest @ factors.u) * factors.s * (x_src @ factors.v)


def select_components(terms: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """The smallest set of terms carrying ``>= threshold`` of their sum (the paper's sparsity rule).

    Terms are sorted descending when the sum is positive (ascending otherwise); the shortest prefix
    whose cumulative fraction of the sum reaches ``threshold`` is kept. A zero sum keeps every term.

    Args:
        terms: ``[..., r]``.
        threshold: fraction in ``(0, 1]``.

    Returns:
        ``[..., r]`` bool mask of the kept terms.

    Example:
        >>> select_components(torch.tensor([0.1, 3.0, -0.5, 2.0]), 0.7).tolist()
        [False, True, False, True]
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    total = terms.sum(-1, keepdim=True)
    sign = torch.where(total < 0, -1.0, 1.0).to(terms.dtype)
    ordered, order = torch.sort(terms * sign, dim=-1, descending=True)
    fraction = ordered.cumsum(-1) / (total * sign).clamp_min(torch.finfo(terms.dtype).tiny)
    reached = fraction >= threshold * (1 - 1e-9)
    count = torch.where(reached.any(-1), reached.to(torch.int8).argmax(-1), terms.shape[-1] - 1) + 1  # (...)
    keep_sorted = torch.arange(terms.shape[-1], device=terms.device) < count[..., None]
    keep_sorted |= (total == 0)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
