"""Circuit tracing by sparse attention decomposition (induction and previous-token scores: ``head_scores``).

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

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.core.trace import Trace

from .attention_svd import GPT2Weights, gpt2_weights, normalise, qk_svd, select_components
from .results import ProbeResult

WEIGHTINGS = ("paper", "exact")


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
