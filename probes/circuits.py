"""Circuit tracing by sparse attention decomposition, and the known circuits of toy-gpt.

Method (Franco & Crovella, "Sparse Attention Decomposition Applied to Circuit Tracing", 2024,
arXiv 2410.00340, and their released code): per head, the augmented QK matrix with biases

    Ω̃ = [[W_Q W_Kᵀ, W_Q b_Kᵀ], [b_Q W_Kᵀ, b_Q b_Kᵀ]]        ((d_model + 1) x (d_model + 1), rank d_head)

has an SVD ``U Σ Vᵀ``; with ``x̃ = [x; 1]`` (``x`` the LayerNorm-normalised residual) the pre-softmax
score of destination (query) ``i`` and source (key) ``j`` is exactly ``Σ_k σ_k (x̃_i·u_k)(v_k·x̃_j)``.
A few of these ``d_head`` terms carry most of it: the smallest set carrying >= ``threshold`` (0.7,
the paper's ``perc_contrib_thresh``) is kept. The residual at ``i`` and ``j`` is a sum of what the
embeddings, every upstream head (``z W_O``) and MLP wrote; projecting each writer onto the kept
singular vectors (divided by the LayerNorm scale) says which upstream head wrote the signal the head
read, on the source side and on the destination side. Firings traced: attention >= 0.5, score > 0,
source not the first token (the paper's filters).

Departures from the released code, all deliberate:

* Hugging Face GPT-2, not TransformerLens: ``ln_1``'s gain and bias are folded into ``W_Q, b_Q, W_K,
  b_K`` and the reading weights are centred over ``d_model``, which is what TransformerLens' default
  processing does, so ``x`` is the same normalised residual. The score scale (``1/sqrt(d_head)``) is
  folded into ``Ω̃``, so the terms sum to the score the softmax sees.
* The SVD is computed exactly from the rank-``d_head`` factors (QR of ``[W_Q; b_Q]`` and ``[W_K; b_K]``,
  then a ``d_head x d_head`` SVD) instead of a full ``769 x 769`` SVD; signs follow scikit-learn's
  ``svd_flip`` (largest entry of each ``u_k`` positive) so results are deterministic.
* A writer's vector enters as ``[o; 0]``, not ``[o; 1]``: the constant coordinate belongs to the
  biases (reported as the ``bias`` writer). Adding it to every head shifts all heads equally.
* Besides heads, the embeddings and each layer's MLP (which here also carries the attention output
  bias ``b_O``) are writers, so the writers sum exactly to the residual (``writer_frame``). Edges,
  as in the paper, join heads: an upstream head makes an edge when its mean share of the upstream
  heads' absolute contributions reaches ``min_share``, a threshold the paper leaves open.
* ``weighting="exact"`` (not in the paper) weights singular vector ``k`` by ``σ_k (x̃_j·v_k)`` on the
  destination side and ``σ_k (x̃_i·u_k)`` on the source side, so the writers' contributions sum to
  the kept part of the score; ``"paper"`` (default) uses ``sign(x̃_i·u_k) sqrt(σ_k)`` on both sides.

Only GPT-2 (learned absolute positions) is supported: with rotary embeddings (LLaMA-type models) the
QK matrix depends on the positions and has no single SVD.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.core.trace import Trace

from .results import ProbeResult

WEIGHTINGS = ("paper", "exact")


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


@dataclass(frozen=True)
class CircuitEdge:
    """One upstream head -> downstream head link.

    Attributes:
        upstream: ``"L.H"`` of the writing head.
        downstream: ``"L.H"`` of the reading head.
        side: ``"src"`` (written at the key token) or ``"dest"`` (at the query token).
        strength: the writer's mean share of the upstream heads' absolute contributions, over the firings.
        share_of_all: its mean share when the embeddings, MLPs and biases count too.
        count: firings in which its share among heads reached ``min_share``.
        firings: firings of the downstream head.
        components: singular vectors (indices into the reading head's SVD) carrying its contribution.
    """

    upstream: str
    downstream: str
    side: str
    strength: float
    share_of_all: float
    count: int
    firings: int
    components: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class CircuitGraph(ProbeResult):
    """Which upstream writers each head's attention read, from the sparse attention decomposition.

    Attributes:
        edges: the :class:`CircuitEdge` links (``strength >= min_share``).
        firings: ``[F, 5]`` int ``(batch, layer, head, dest, src)`` of the traced firings.
        scores: ``[F]`` pre-softmax scores (sum of all terms); ``attention``: ``[F]`` probabilities.
        selected: ``[F, d_head]`` bool, the singular vectors kept at each firing.
        writers: names of the contribution columns (``embed``, ``L.H``, ``mlpL``, ``bias``).
        contrib_src, contrib_dest: ``[F, len(writers)]`` contributions (NaN for writers not upstream).
        score_error: largest ``|Σ terms - q·k·scale|`` against the captured q/k (NaN when not captured).
        n_layers, n_heads: model shape; threshold, attn_threshold, min_share, weighting: the settings.
    """

    edges: tuple[CircuitEdge, ...]
    firings: np.ndarray
    scores: np.ndarray
    attention: np.ndarray
    selected: np.ndarray
    writers: tuple[str, ...]
    contrib_src: np.ndarray
    contrib_dest: np.ndarray
    score_error: float
    n_layers: int
    n_heads: int
    threshold: float
    attn_threshold: float
    min_share: float
    weighting: str
    probe = "circuits"

    def to_frame(self) -> pd.DataFrame:
        """The edge table: ``upstream, downstream, side, strength, share_of_all, count, firings, components``."""
        cols = ["upstream", "downstream", "side", "strength", "share_of_all", "count", "firings", "components"]
        rows = [(e.upstream, e.downstream, e.side, e.strength, e.share_of_all, e.count, e.firings, list(e.components))
                for e in self.edges]
        return pd.DataFrame(rows, columns=cols)

    def firings_frame(self) -> pd.DataFrame:
        """One row per traced firing: position, score, attention and the number of kept singular vectors."""
        f = self.firings.reshape(-1, 5)
        return pd.DataFrame({"batch": f[:, 0], "layer": f[:, 1], "head": f[:, 2], "dest": f[:, 3], "src": f[:, 4],
                             "score": self.scores, "attention": self.attention,
                             "n_components": self.selected.sum(-1) if len(f) else np.zeros(0, int)})

    def writer_frame(self) -> pd.DataFrame:
        """Mean share of every writer (heads, ``embed``, ``mlpL``, ``bias``) among all writers, per reading head and side."""
        rows = []
        for side, contrib in (("src", self.contrib_src), ("dest", self.contrib_dest)):
            share = contrib / np.nansum(np.abs(contrib), axis=1, keepdims=True).clip(1e-30)  # (F, C)
            for (layer, head), idx in _group_rows(self.firings):
                cols = np.flatnonzero(np.isfinite(share[idx[0]]))  # the writers upstream of this head
                mean = share[idx][:, cols].mean(0)
                rows += [(f"{layer}.{head}", side, self.writers[c], float(m)) for c, m in zip(cols, mean)]
        return pd.DataFrame(rows, columns=["downstream", "side", "writer", "share"])

    def graph(self):
        """A ``networkx.DiGraph`` of heads (node attrs ``layer``, ``head``); edge attrs ``weight`` (summed
        strength over sides) and ``sides`` (``{side: strength}``)."""
        import networkx as nx

        g = nx.DiGraph()
        for layer in range(self.n_layers):
            for head in range(self.n_heads):
                g.add_node(f"{layer}.{head}", layer=layer, head=head)
        for e in self.edges:
            data = g.get_edge_data(e.upstream, e.downstream) or {"weight": 0.0, "sides": {}}
            sides = {**data["sides"], e.side: e.strength}
            g.add_edge(e.upstream, e.downstream, weight=data["weight"] + e.strength, sides=sides)
        return g


def _group_rows(firings: np.ndarray):
    """``((layer, head), row indices)`` of the firings of each head, in order."""
    keys = sorted({(int(l), int(h)) for l, h in firings[:, 1:3]})
    return [(k, np.flatnonzero((firings[:, 1] == k[0]) & (firings[:, 2] == k[1]))) for k in keys]


def writer_names(n_layers: int, n_heads: int) -> tuple[str, ...]:
    """Writers in residual order: ``embed``, then per layer its heads ``L.H`` and ``mlpL``, then ``bias``."""
    names = ["embed"]
    for layer in range(n_layers):
        names += [f"{layer}.{h}" for h in range(n_heads)] + [f"mlp{layer}"]
    return tuple(names + ["bias"])


def _writers(trace: Trace, weights: GPT2Weights, upto: int) -> list[torch.Tensor]:
    """What each writer added to the residual entering layer ``upto``, each ``[B, N, d]`` (float64)."""
    out = [trace.resid_in(0).double()]
    for layer in range(upto):
        z = trace.layer(layer).head_out
        if z is None:
            raise ValueError(f"circuit_graph needs head_out of layer {layer}; capture with Capture(head_out=True)")
        heads = torch.einsum("bhne,hed->hbnd", z.double(), weights.w_o[layer])  # (H, B, N, d)
        delta = trace.resid_in(layer + 1).double() - trace.resid_in(layer).double()  # (B, N, d)
        out += list(heads) + [delta - heads.sum(0)]
    return out


def _check_trace(trace: Trace, weights: GPT2Weights) -> None:
    for what in ("resid", "head_out"):
        trace.require(what, "circuit_graph")
    m = trace.meta
    if (m.n_layers, m.n_heads) != (weights.n_layers, weights.n_heads) or m.d_model != weights.w_q.shape[2]:
        raise ValueError(f"The Trace ({m.n_layers} layers x {m.n_heads} heads, d_model {m.d_model}) does not come "
                         f"from this model ({weights.n_layers} x {weights.n_heads}); pass the model that was captured")


def circuit_graph(trace: Trace, model, *, threshold: float = 0.7, attn_threshold: float = 0.5,
                  skip_first: bool = True, layers: tuple[int, ...] | None = None, weighting: str = "paper",
                  min_share: float = 0.2) -> CircuitGraph:
    """Trace which upstream heads wrote the signals each head's firings read (Franco & Crovella 2024).

    Args:
        trace: a Trace of a GPT-2 with ``Capture(resid=True, head_out=True)`` on every layer up to the
            deepest one analysed (``pattern`` and ``qk`` are used when present: the pattern picks the
            firings, q/k check the decomposition).
        model: the Hugging Face GPT-2 the Trace came from (only its weights are read).
        threshold: fraction of the score the kept singular vectors must carry (paper: 0.7).
        attn_threshold: attention probability for a pair to count as a firing (paper: 0.5).
        skip_first: ignore firings onto position 0 (the paper's sink filter).
        layers: downstream layers to analyse; ``None`` for all.
        weighting: ``"paper"`` or ``"exact"`` (see the module docstring).
        min_share: an upstream head's mean share of the upstream heads' absolute contributions that makes an edge.

    Returns:
        :class:`CircuitGraph`.

    Example:
        >>> from attnlab.zoo import load  # doctest: +SKIP
        >>> model, tok, spec = load("toy-gpt")  # doctest: +SKIP
        >>> with attach(model, Capture(resid=True, head_out=True), tokenizer=tok) as rec:  # doctest: +SKIP
        ...     model(**tok(["red cold tree lamp red cold tree lamp"], return_tensors="pt"))
        >>> circuit_graph(rec.trace(), model).to_frame()  # doctest: +SKIP
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    weights = gpt2_weights(model)
    _check_trace(trace, weights)
    names = writer_names(weights.n_layers, weights.n_heads)
    chosen = range(weights.n_layers) if layers is None else sorted({int(i) % weights.n_layers for i in layers})
    settings = _Settings(threshold, attn_threshold, skip_first, weighting)
    rows: list[dict] = []
    edges: list[CircuitEdge] = []
    errors = [0.0]
    for layer in chosen:
        x, ln_scale = normalise(trace.resid_in(layer).double(), weights.eps[layer])  # (B, N, d+1), (B, N)
        writers = torch.stack(_writers(trace, weights, layer)) / ln_scale[..., None]  # (C, B, N, d)
        for head in range(weights.n_heads):
            found = _head_firings(trace, weights, (layer, head), x, writers, settings, errors)
            if found is None:
                continue
            rows.append(found)
            edges += _head_edges(found, names, layer, head, min_share, threshold)
    return _assemble(rows, edges, names, weights, threshold, attn_threshold, min_share, weighting, errors)


def _pattern(trace: Trace, layer: int, head: int, scores: torch.Tensor) -> torch.Tensor:
    """The attention pattern ``[B, Q, K]``: the captured one, else the softmax of ``scores`` under the masks."""
    rec = trace.layer(layer)
    if rec.pattern is not None:
        return rec.pattern[:, head].double()
    n = scores.shape[-1]
    allowed = trace.token_mask[:, None, :].clone()
    if trace.meta.causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)


@dataclass(frozen=True)
class _Settings:
    threshold: float
    attn_threshold: float
    skip_first: bool
    weighting: str


def _head_firings(trace: Trace, weights: GPT2Weights, site: tuple[int, int], x: torch.Tensor, writers: torch.Tensor,
                  settings: _Settings, errors: list[float]) -> dict | None:
    """Decompose the firings of one head and the writers' contributions to them; ``None`` when it never fires.

    ``x`` is the augmented normalised residual ``[B, N, d+1]``, ``writers`` what each writer added,
    divided by the LayerNorm scale, ``[C, B, N, d]``.
    """
    layer, head = site
    f = qk_svd(weights, layer, head)
    pu, pv = x @ f.u, x @ f.v  # (B, N, r)
    scores = torch.einsum("bir,r,bjr->bij", pu, f.s, pv)  # (B, Q, K)
    rec = trace.layer(layer)
    if rec.q is not None and rec.k is not None:
        real = rec.q[:, head].double() @ rec.k[:, head].double().transpose(-1, -2) * weights.scale[layer]
        live = trace.token_mask[:, :, None] & trace.token_mask[:, None, :]
        err = float((real - scores).abs()[live].max())
        if err > 1e-3 * max(1.0, float(real.abs()[live].max())):
            raise ValueError(f"The Trace's queries and keys of layer {layer} differ from this model's weights by "
                             f"{err:.3g}; pass the model the Trace was captured from")
        errors.append(err)
    pattern = _pattern(trace, layer, head, scores)
    n = scores.shape[-1]
    fire = (pattern >= settings.attn_threshold) & (scores > 0) & trace.token_mask[:, :, None] & trace.token_mask[:, None, :]
    fire &= torch.ones(n, n, dtype=torch.bool).tril()
    if settings.skip_first:
        fire[:, :, 0] = False
    b, i, j = fire.nonzero(as_tuple=True)
    if b.numel() == 0:
        return None
    terms = pu[b, i] * f.s * pv[b, j]  # (F, r)
    keep = select_components(terms, settings.threshold).to(terms.dtype)
    if settings.weighting == "paper":
        w_dest = w_src = keep * torch.sign(pu[b, i]) * f.s.sqrt()  # (F, r)
    else:
        w_dest, w_src = keep * f.s * pv[b, j], keep * f.s * pu[b, i]
    d = x.shape[-1] - 1
    sv_dest = (writers @ f.u[:d])[:, b, i] * w_dest  # (C, F, r)
    sv_src = (writers @ f.v[:d])[:, b, j] * w_src  # (C, F, r)
    bias_dest, bias_src = w_dest * f.u[d], w_src * f.v[d]  # (F, r)
    return {"layer": layer, "head": head, "index": torch.stack([b, i, j], 1), "score": terms.sum(-1),
            "attention": pattern[b, i, j], "keep": keep.bool(),
            "sv": {"dest": torch.cat([sv_dest, bias_dest[None]]), "src": torch.cat([sv_src, bias_src[None]])}}


def _head_edges(found: dict, names: tuple[str, ...], layer: int, head: int, min_share: float,
                threshold: float) -> list[CircuitEdge]:
    """Edges into one head: upstream heads whose mean share among the heads' contributions reaches ``min_share``."""
    out = []
    n_up = found["sv"]["dest"].shape[0] - 1  # writers before this layer, bias excluded
    heads = [c for c in range(n_up) if "." in names[c]]
    for side in ("src", "dest"):
        sv = found["sv"][side]  # (C+1, F, r)
        contrib = sv.sum(-1)  # (C+1, F)
        of_all = (contrib / contrib.abs().sum(0).clamp_min(1e-30)).mean(1)  # (C+1,)
        share = contrib[heads] / contrib[heads].abs().sum(0).clamp_min(1e-30)  # (heads, F)
        for c, row in zip(heads, share):
            strength = float(row.mean())
            if not heads or strength < min_share:
                continue
            per_sv = sv[c].sum(0)  # (r,)
            kept = select_components(per_sv.clamp_min(0.0), threshold) & (per_sv > 0)
            comps = tuple(int(k) for k in torch.argsort(per_sv, descending=True) if kept[k])
            out.append(CircuitEdge(names[c], f"{layer}.{head}", side, strength, float(of_all[c]),
                                   int((row >= min_share).sum()), int(row.numel()), comps))
    return out


def _assemble(rows, edges, names, weights, threshold, attn_threshold, min_share, weighting, errors) -> CircuitGraph:
    n_all = len(names)
    firings, scores, attn, keep, src, dest = [], [], [], [], [], []
    for r in rows:
        n_up = r["sv"]["dest"].shape[0] - 1
        cols = list(range(n_up)) + [n_all - 1]  # upstream writers, then bias
        n_f = r["index"].shape[0]
        lh = torch.tensor([[r["layer"], r["head"]]]).expand(n_f, 2)
        firings.append(torch.cat([r["index"][:, :1], lh, r["index"][:, 1:]], 1))
        scores.append(r["score"])
        attn.append(r["attention"])
        keep.append(r["keep"])
        for side, out in (("src", src), ("dest", dest)):
            full = torch.full((n_f, n_all), float("nan"), dtype=torch.float64)
            full[:, cols] = r["sv"][side].sum(-1).T
            out.append(full)
    r_dim = int(weights.w_q.shape[-1])

    def cat(parts, shape, dtype=np.float64):
        return torch.cat(parts).numpy() if parts else np.zeros(shape, dtype)

    return CircuitGraph(
        edges=tuple(sorted(edges, key=lambda e: (-e.strength, e.downstream, e.side))),
        firings=cat(firings, (0, 5), np.int64).astype(np.int64), scores=cat(scores, (0,)),
        attention=cat(attn, (0,)), selected=cat(keep, (0, r_dim), bool), writers=names,
        contrib_src=cat(src, (0, n_all)), contrib_dest=cat(dest, (0, n_all)),
        score_error=max(errors) if len(errors) > 1 else float("nan"), n_layers=weights.n_layers,
        n_heads=weights.n_heads, threshold=threshold, attn_threshold=attn_threshold, min_share=min_share,
        weighting=weighting)


# -- known circuits: induction and previous-token heads, and the heads IOI needs ------------------------------


@dataclass(frozen=True, eq=False)
class HeadScores(ProbeResult):
    """One score per head.

    Attributes:
        scores: ``[L, H]`` mean attention along the pattern's stripe (see ``kind``).
        kind: ``induction`` or ``previous_token``.
        n_positions: query positions averaged per head (over the batch).
    """

    scores: np.ndarray
    kind: str
    n_positions: int
    probe = "head-scores"

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, score``."""
        n_layers, n_heads = self.scores.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        return pd.DataFrame({"layer": layer, "head": head, "score": self.scores.reshape(-1)})

    def heads(self, min_score: float) -> list[tuple[int, int]]:
        """Heads scoring at least ``min_score``, highest first."""
        order = np.argsort(-self.scores.reshape(-1), kind="stable")
        n_heads = self.scores.shape[1]
        return [divmod(int(i), n_heads) for i in order if self.scores.reshape(-1)[i] >= min_score]


def repeat_period(tokens: list[str]) -> int:
    """The longest ``L`` such that ``tokens`` ends with two copies of the same ``L`` tokens (0 if none)."""
    n = len(tokens)
    for period in range(n // 2, 0, -1):
        if tokens[n - 2 * period:n - period] == tokens[n - period:]:
            return period
    return 0


def _patterns(trace: Trace, probe: str) -> list[torch.Tensor]:
    trace.require("pattern", probe)
    return [trace.layer(i).pattern.double() for i in range(trace.meta.n_layers)]  # each (B, H, Q, K)


def _stripe_scores(trace: Trace, probe: str, pairs: list[tuple[int, int, int]], kind: str) -> HeadScores:
    """Mean of ``pattern[b, :, i, j]`` over ``(b, i, j)`` in ``pairs``, per layer and head."""
    if not pairs:
        raise ValueError(f"{probe}: the Trace has no query positions to score")
    b, i, j = (torch.tensor(x) for x in zip(*pairs))
    scores = np.stack([p[b, :, i, j].mean(0).numpy() for p in _patterns(trace, probe)])  # (L, H)
    return HeadScores(scores=scores, kind=kind, n_positions=len(pairs))


def induction_scores(trace: Trace, period: int | None = None) -> HeadScores:
    """Induction score per head (Olsson et al. 2022, "In-context learning and induction heads").

    On a sequence ending in a repeated random block of ``L`` tokens (``<bos> x x``), the mean attention
    from each token of the second copy to the token after its earlier occurrence (``i -> i - L + 1``).

    Args:
        trace: a Trace with ``Capture(pattern=True)`` on every layer.
        period: ``L``; ``None`` finds the longest repeat at the end of each item's real tokens.

    Returns:
        :class:`HeadScores` (``kind="induction"``).
    """
    pairs = []
    for b, toks in enumerate(trace.tokens):
        n = int(trace.token_mask[b].sum())
        length = period or repeat_period(toks[:n])
        if length < 1 or 2 * length > n:
            raise ValueError(f"induction_scores: batch item {b} does not end with a repeated block; feed a repeated "
                             "random sequence (e.g. '<bos> x x') or pass period=")
        pairs += [(b, i, i - length + 1) for i in range(n - length, n)]
    return _stripe_scores(trace, "induction_scores", pairs, "induction")


def previous_token_scores(trace: Trace) -> HeadScores:
    """Previous-token score per head: mean attention from each real token (but the first) to the one before it."""
    pairs = [(b, i, i - 1) for b in range(trace.batch_size) for i in range(1, int(trace.token_mask[b].sum()))]
    return _stripe_scores(trace, "previous_token_scores", pairs, "previous_token")
