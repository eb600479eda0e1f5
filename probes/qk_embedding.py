"""Joint query-key embeddings of attention heads.

Paper: AttentionViz (Yeh, Chen, Wu, Chen, Viégas, Wattenberg, IEEE VIS / TVCG 2023, arXiv 2305.03210).
The queries and keys of one head, over every real token of many inputs, are put in one space where a
short query-key distance means a large attention logit, then projected TOGETHER to 2-D or 3-D with
t-SNE, UMAP or PCA (queries green, keys pink in the paper's figures).

The paper's normalisation and what this module does:

1. Queries are pre-scaled by ``1/sqrt(d)`` so that ``q . k`` is the attention logit. Here the factor is
   ``logit_scale`` (default ``1/sqrt(d_head)``, the softmax scale of every family attnlab captures).
2. Key translation: ``softmax_j(q . (k_j + a)) = softmax_j(q . k_j)`` because ``q . a`` is the same for
   every key of a row, so the keys are translated until their centroid is the query centroid.
3. Scaling: ``q -> c q``, ``k -> k / c`` leaves every ``q . k`` unchanged, and ``c`` puts queries and keys
   on a comparable scale. The exact rule for ``c`` could not be checked against the paper's text; the
   readings in circulation are equal mean norms (not verified against the text of Yeh et al. 2023) and ``c``
   maximising the (weighted) correlation between distance and dot product (second-hand; it is how
   co-author C. Chen's project page "Visualizing Attention" frames the two free parameters).

Choices here: ``scale="norm"`` (default) makes the mean query norm equal the mean key norm. Applied
one after the other, translation then scaling would move the centroids apart again (to ``c mu_q`` and
``mu_q / c``), so the keys are scaled first and then translated, ``k'' = k / c + (c mu_q - mu_k / c)``,
and ``c`` is solved so that the norms are equal *after* the translation: both properties hold at once.
``scale="correlation"`` picks, on a log grid around that ``c``, the one with the most negative
(unweighted) Spearman correlation between query-key distance and logit over sampled same-input pairs;
a number sets ``c`` directly. ``correlation_`` reports that Spearman correlation, the paper's validation
metric (its released code ships precomputed data only, so nothing here follows released code).

Methods: ``pca`` (eigendecomposition, signs fixed with scikit-learn's ``svd_flip`` rule: deterministic),
``umap`` (umap-learn; seeded runs are single-threaded, umap-learn's rule for reproducibility), ``tsne``
(openTSNE when installed, ``pip install attnlab[fast]``: Barnes-Hut below 10k points, FFT-accelerated
above; else scikit-learn's Barnes-Hut t-SNE).

Example (the embedded MiniLM, a few seconds)::

    >>> from attnlab.core.capture import Capture
    >>> from attnlab.hooks.inputs import capture_trace
    >>> from attnlab.zoo import load
    >>> model, tok, spec = load("minilm")                                                   # doctest: +SKIP
    >>> trace = capture_trace(model, tok, spec, Capture(qk=True), ["The cat sat.", "A dog ran."])  # doctest: +SKIP
    >>> emb = QKEmbedding(method="pca").fit(trace, layer=2, head=3)                         # doctest: +SKIP
    >>> emb.points_[["kind", "token", "x", "y"]].head()                                     # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .qk_vectors import QKVectors, as_traces, collect_qk, resolve_head, sample_pairs
from .results import jsonable

METHODS = ("tsne", "umap", "pca")
SCALE_RULES = ("norm", "correlation")
#: Same-input query-key pairs sampled for the distance/logit correlation.
N_PAIRS = 20_000
#: From this many points on, 2-D t-SNE uses openTSNE's FFT-accelerated gradient instead of Barnes-Hut.
FFT_MIN_POINTS = 10_000
#: From this many points UMAP starts from a PCA layout instead of the graph's spectral layout: the eigen-solve on
#: a 100k-point graph costs ~15 s of a ~50 s fit (measured in ``benchmarks/qk_embedding.py``), PCA ~0.2 s.
UMAP_PCA_INIT_POINTS = 10_000
#: Below this many points UMAP computes exact neighbours (cheap there); above, nearest-neighbour descent.
UMAP_EXACT_MAX_POINTS = 1_000
def _norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def _norm_balancing_scale(q: np.ndarray, k_centred: np.ndarray, mu_q: np.ndarray) -> float:
    """``c`` with mean ``|c q|`` = mean ``|k_centred / c + c mu_q|``, i.e. ``s = c^2`` root of
    ``s mean|q| - mean|k_centred + s mu_q|`` (concave in ``s``, negative at 0: one root)."""
    from scipy.optimize import brentq

    mean_q = _norms(q).mean()

    def gap(s: float) -> float:
        return s * mean_q - _norms(k_centred + s * mu_q).mean()

    hi = 1.0
    while gap(hi) <= 0 and hi < 1e12:
        hi *= 4.0
    if gap(0.0) >= 0 or gap(hi) <= 0:  # degenerate clouds (all keys equal, or all queries collinear)
        return math.sqrt(_norms(k_centred).mean() / max(mean_q, 1e-30))
    return math.sqrt(brentq(gap, 0.0, hi, xtol=1e-300, rtol=1e-13, maxiter=500))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _correlation_scale(qc: np.ndarray, kc: np.ndarray, pairs, logits: np.ndarray, c0: float) -> float:
    """The ``c`` (on a log grid around ``c0``) whose distances anti-correlate most with the logits.

    With centred queries ``qc`` and keys ``kc``, ``|c qc - kc / c|^2 = c^2 |qc|^2 + |kc|^2 / c^2 - 2 qc . kc``,
    so every grid point costs one pass over the sampled pairs.
    """
    from scipy.stats import rankdata

    qs, ks = qc[pairs[0]], kc[pairs[1]]  # (P, d)
    qq, kk, qk = (np.einsum("ij,ij->i", x, y) for x, y in ((qs, qs), (ks, ks), (qs, ks)))  # (P,)
    logit_rank = rankdata(logits)
    grid = c0 * 2.0 ** np.linspace(-4, 4, 49)
    scores = [np.corrcoef(rankdata(c * c * qq + kk / (c * c) - 2 * qk), logit_rank)[0, 1] for c in grid]
    return float(grid[int(np.argmin(scores))])


def nearest_key_hits(vectors: QKVectors, q_scaled: np.ndarray, k_raw: np.ndarray,
                     *spaces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every query and every coordinate space: is its nearest visible key its most attended key?

    Args:
        vectors: the gathered vectors (``tokens["input"]`` groups the inputs, ``rank`` orders tokens in each).
        q_scaled, k_raw: ``[M, d]`` queries times the softmax scale and raw keys: ``q . k`` is the attention logit,
            whose row arg-max is the most attended key (the softmax is monotonic; a shift of every key moves a
            whole row of logits and keeps its arg-max).
        spaces: ``[2M, C]`` coordinates to measure distance in, queries first then keys (the joint space, the
            layout, ...).

    Returns:
        ``(hits [S, M] bool, visible [M] int)``: per space, whether the nearest key is the arg-max-logit key; and
        how many keys each query could attend to (its own input's keys; those at or before it for a causal
        head), so that ``mean(1 / visible)`` is the hit rate of a random key.
    """
    groups = vectors.tokens["input"].to_numpy()
    m = len(groups)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], m]
    hits = np.zeros((len(spaces), m), dtype=bool)
    visible = np.zeros(m, dtype=np.int64)
    for a, b in zip(starts, ends):
        hidden = vectors.rank[a:b][None, :] > vectors.rank[a:b][:, None] if vectors.causal else None  # (n, n)
        visible[a:b] = vectors.rank[a:b] + 1 if vectors.causal else b - a
        logits = q_scaled[a:b] @ k_raw[a:b].T  # (n, n)
        attended = (logits if hidden is None else np.where(hidden, -np.inf, logits)).argmax(axis=1)  # (n,)
        for s, coords in enumerate(spaces):
            dist = ((coords[a:b, None, :] - coords[None, m + a : m + b, :]) ** 2).sum(-1)  # (n, n)
            hits[s, a:b] = (dist if hidden is None else np.where(hidden, np.inf, dist)).argmin(axis=1) == attended
    return hits, visible


def faithfulness_record(layout_correlation: float, joint_correlation: float, nearest_key: float,
                        nearest_key_joint: float, nearest_key_chance: float) -> dict:
    """The one layout of a head's faithfulness measurements (see :meth:`QKEmbedding.faithfulness`)."""
    return {"layout_correlation": float(layout_correlation), "joint_correlation": float(joint_correlation),
            "nearest_key": float(nearest_key), "nearest_key_joint": float(nearest_key_joint),
            "nearest_key_chance": float(nearest_key_chance)}


class QKEmbedding(BaseEstimator):
    """AttentionViz joint query-key embedding of one attention head (see the module docstring).

    Args:
        method: ``tsne`` | ``umap`` | ``pca``.
        n_components: 2 or 3.
        random_state: seed for every random choice (t-SNE/UMAP initialisation, neighbour search, pair sampling).
        scale: ``"norm"`` (equal mean query and key norms after translation, default), ``"correlation"``, or ``c``.
        logit_scale: the softmax scale of the model; ``None`` = ``1/sqrt(d_head)``.
        perplexity: t-SNE perplexity (capped at ``(n_points - 1) / 3`` for small inputs).
        n_neighbors, min_dist: UMAP parameters.
        n_epochs: UMAP optimisation epochs; ``None`` = umap-learn's default (200 from 10k points, else 500).
        init: UMAP's initial layout: ``"spectral"``, ``"pca"``, ``"random"``, or ``"auto"`` (spectral below
            :data:`UMAP_PCA_INIT_POINTS` points, PCA from there).
        n_jobs: threads for t-SNE, and for UMAP when ``random_state=None`` (umap-learn runs one thread when
            seeded). For ~100k points, ``method="umap", random_state=None, n_jobs=2, n_epochs=100`` is the fast
            path (see ``benchmarks/qk_embedding.py``).

    Attributes (after ``fit``):
        embedding_: ``[2M, n_components]`` coordinates, queries first then keys, in token order.
        points_: one row per point: ``kind`` (query/key), :data:`META_COLUMNS`, ``norm`` (in the joint space),
            ``x``, ``y`` (and ``z``). ``attrs`` hold ``method``, ``layer``, ``head``.
        joint_: ``[2M, d_head]`` float64 vectors of the joint space (after scaling and translation).
        scale_: ``c``; queries are multiplied by ``c * logit_scale_``, keys divided by ``c``.
        shift_: ``[d_head]`` added to every key after the division.
        logit_scale_: the pre-scaling of the queries.
        correlation_: Spearman correlation of distance and logit over sampled same-input pairs in the joint space.
        layout_correlation_: the same correlation for distances in the picture (``embedding_``), which is what a
            reader sees: the projection can lose what the joint space had. Negative = faithful.
        nearest_key_: share of queries whose nearest key in the picture (same input, visible) is the key they
            attend to most; ``nearest_key_joint_`` the same in the joint space; ``nearest_key_chance_`` the share
            a random visible key would get.
        n_queries_: M. layer_, head_: what was fitted. backend_: the library and algorithm used.
    """

    def __init__(self, method: str = "tsne", n_components: int = 2, random_state: int | None = 0,
                 scale: str | float = "norm", logit_scale: float | None = None, perplexity: float = 30.0,
                 n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None, init: str = "auto",
                 n_jobs: int = 1):
        self.method = method
        self.n_components = n_components
        self.random_state = random_state
        self.scale = scale
        self.logit_scale = logit_scale
        self.perplexity = perplexity
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.n_epochs = n_epochs
        self.init = init
        self.n_jobs = n_jobs

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, traces, layer: int, head: int) -> "QKEmbedding":
        """Gather one head's queries and keys over ``traces``, normalise them and embed them together.

        Args:
            traces: a Trace captured with ``Capture(qk=True)``, a Run, or a list of them (one model).
            layer: layer index (negative counts from the end).
            head: head index.

        Returns:
            self.
        """
        self._check_params()
        loaded = as_traces(traces, [layer])
        layer = int(layer) % loaded[0].meta.n_layers if -loaded[0].meta.n_layers <= layer < 0 else int(layer)
        head = resolve_head(loaded[0].meta.n_heads, head)
        return self.fit_vectors(collect_qk(loaded, layer, head), layer=layer, head=head)

    def fit_vectors(self, vectors: QKVectors, layer: int | None = None, head: int | None = None) -> "QKEmbedding":
        """:meth:`fit` on already gathered vectors (``[M, d_head]``, e.g. from :func:`collect_qk`); ``layer`` and
        ``head`` only label the result (and are where :meth:`transform` reads new Traces)."""
        self._check_params()
        q, k = vectors.queries.astype(np.float64), vectors.keys.astype(np.float64)  # (M, d)
        self.logit_scale_ = float(self.logit_scale or 1.0 / math.sqrt(vectors.d_head))
        q = q * self.logit_scale_
        mu_q, mu_k = q.mean(0), k.mean(0)  # (d,)
        pairs = sample_pairs(vectors, N_PAIRS, seed=0 if self.random_state is None else self.random_state)
        logits = np.einsum("ij,ij->i", q[pairs[0]], k[pairs[1]])  # (P,)
        c = _norm_balancing_scale(q, k - mu_k, mu_q)
        if self.scale == "correlation":
            c = _correlation_scale(q - mu_q, k - mu_k, pairs, logits, c)
        elif not isinstance(self.scale, str):
            c = float(self.scale)
        self.scale_, self.shift_ = c, c * mu_q - mu_k / c  # (d,)
        self.joint_ = np.concatenate([c * q, k / c + self.shift_])  # (2M, d)
        m = len(q)
        self.n_queries_, self.layer_, self.head_, self.d_head_ = m, layer, head, vectors.d_head
        self.correlation_ = _spearman(_norms(self.joint_[pairs[0]] - self.joint_[m + pairs[1]]), logits)
        self.embedding_ = self._embed(self.joint_)
        layout = self.embedding_
        self.layout_correlation_ = _spearman(_norms(layout[pairs[0]] - layout[m + pairs[1]]), logits)
        (hits_joint, hits_layout), visible = nearest_key_hits(vectors, q, k, self.joint_, layout)
        self.nearest_key_joint_, self.nearest_key_ = float(hits_joint.mean()), float(hits_layout.mean())
        self.nearest_key_chance_ = float(np.mean(1.0 / visible))
        self.points_ = self._points(vectors.tokens, self.joint_, self.embedding_)
        self.points_.attrs.update(faithfulness=self.faithfulness())
        return self

    def faithfulness(self) -> dict:
        """How far the picture can be trusted: ``{"layout_correlation", "joint_correlation", "nearest_key",
        "nearest_key_joint", "nearest_key_chance"}`` (see the attributes)."""
        check_is_fitted(self, "embedding_")
        return faithfulness_record(self.layout_correlation_, self.correlation_, self.nearest_key_,
                                   self.nearest_key_joint_, self.nearest_key_chance_)

    def fit_transform(self, traces, layer: int, head: int) -> np.ndarray:
        """:meth:`fit`, then the ``[2M, n_components]`` embedding."""
        return self.fit(traces, layer=layer, head=head).embedding_

    def joint_vectors(self, traces) -> np.ndarray:
        """New Traces' queries and keys of the fitted head in the fitted joint space: ``[2M', d_head]``."""
        check_is_fitted(self, "joint_")
        if self.layer_ is None or self.head_ is None:
            raise ValueError("This embedding was fitted on vectors without a layer and head; pass layer= and head= "
                             "to fit_vectors (or use fit) to transform Traces")
        vectors = collect_qk(traces, self.layer_, self.head_)
        if vectors.d_head != self.d_head_:
            raise ValueError(f"These Traces have d_head {vectors.d_head}; the embedding was fitted on {self.d_head_}")
        q = vectors.queries.astype(np.float64) * (self.logit_scale_ * self.scale_)
        return np.concatenate([q, vectors.keys.astype(np.float64) / self.scale_ + self.shift_])

    def transform(self, traces) -> np.ndarray:
        """Place new Traces' queries and keys (fitted layer and head) in the fitted embedding.

        Returns:
            ``[2M', n_components]``, queries first then keys, in token order.

        Raises:
            ValueError: for ``method="tsne"``, which has no out-of-sample mapping.
        """
        check_is_fitted(self, "embedding_")
        if self.method == "tsne":
            raise ValueError("t-SNE cannot place new points in a fitted embedding; fit on all the Traces together "
                             "(fit_transform([...])) or use QKEmbedding(method='pca') or method='umap'")
        x = self.joint_vectors(traces)
        if self.method == "pca":
            return (x - self.mean_) @ self.components_.T
        return np.asarray(self.reducer_.transform(x.astype(np.float32)), dtype=np.float64)

    # -- results ------------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """The points (metadata, norm, coordinates) as a table."""
        check_is_fitted(self, "points_")
        return self.points_.copy()

    def to_dict(self, points: bool = True) -> dict:
        """JSON-ready summary, with every point unless ``points=False``."""
        check_is_fitted(self, "points_")
        out = {"probe": "qk-embedding", "method": self.method, "backend": self.backend_, "layer": self.layer_,
               "head": self.head_, "n_components": self.n_components, "n_points": len(self.points_),
               "n_queries": self.n_queries_, "scale": self.scale_, "logit_scale": self.logit_scale_,
               "correlation": self.correlation_, **self.faithfulness()}
        if points:
            out["points"] = frame_records(self.points_)
        return jsonable(out)

    # -- internals ----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown embedding method {self.method!r}; choose from {METHODS}")
        if self.n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3 (got {self.n_components!r})")
        if isinstance(self.scale, str) and self.scale not in SCALE_RULES:
            raise ValueError(f"Unknown scale rule {self.scale!r}; choose from {SCALE_RULES} or give a number c > 0")
        if not isinstance(self.scale, str) and not float(self.scale) > 0:
            raise ValueError(f"scale c must be positive (got {self.scale!r})")

    def _embed(self, x: np.ndarray) -> np.ndarray:
        if self.method == "pca":
            self.mean_ = x.mean(0)
            self.components_ = principal_axes(x - self.mean_, self.n_components)  # (C, d)
            self.backend_ = "pca"
            return (x - self.mean_) @ self.components_.T
        x32 = x.astype(np.float32)
        if self.method == "umap":
            return self._umap(x32)
        return self._tsne(x32)

    def _umap(self, x: np.ndarray) -> np.ndarray:
        import warnings

        import umap

        jobs = 1 if self.random_state is not None else self.n_jobs
        if self.init not in ("auto", "spectral", "pca", "random"):
            raise ValueError(f"init must be 'auto', 'spectral', 'pca' or 'random', got {self.init!r}")
        init = self.init if self.init != "auto" else ("pca" if len(x) >= UMAP_PCA_INIT_POINTS else "spectral")
        # Between ~1k and 4096 points umap-learn would compute all pairwise distances through a per-pair callable
        # (~20 s for 4000 points) where nearest-neighbour descent takes ~1 s; below ~1k the exact path is cheap.
        self.reducer_ = umap.UMAP(n_components=self.n_components, n_neighbors=min(self.n_neighbors, len(x) - 1),
                                  min_dist=self.min_dist, n_epochs=self.n_epochs, random_state=self.random_state,
                                  n_jobs=jobs, init=init,
                                  force_approximation_algorithm=len(x) > UMAP_EXACT_MAX_POINTS)
        self.backend_ = "umap-learn"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self.reducer_.fit_transform(x), dtype=np.float64)

    def _tsne(self, x: np.ndarray) -> np.ndarray:
        perplexity = float(min(self.perplexity, max((len(x) - 1) / 3.0, 1.0)))
        try:
            import openTSNE
        except ImportError:
            openTSNE = None
        if openTSNE is not None:
            # FFT interpolation has a fixed cost per iteration that only pays off from ~10k points (openTSNE's
            # own "auto" rule); it is also 1-D/2-D only.
            gradient = "fft" if self.n_components <= 2 and len(x) >= FFT_MIN_POINTS else "bh"
            self.backend_ = f"openTSNE ({gradient.upper()})"
            tsne = openTSNE.TSNE(n_components=self.n_components, perplexity=perplexity, n_jobs=self.n_jobs,
                                 negative_gradient_method=gradient, random_state=self.random_state)
            return np.asarray(tsne.fit(x), dtype=np.float64)
        from sklearn.manifold import TSNE

        self.backend_ = "scikit-learn (Barnes-Hut)"
        tsne = TSNE(n_components=self.n_components, perplexity=min(perplexity, len(x) - 1.0), init="pca",
                    random_state=self.random_state, n_jobs=self.n_jobs)
        return tsne.fit_transform(x).astype(np.float64)

    def _points(self, tokens: pd.DataFrame, joint: np.ndarray, coords: np.ndarray) -> pd.DataFrame:
        m = len(tokens)
        frame = pd.concat([tokens, tokens], ignore_index=True)
        frame.insert(0, "kind", ["query"] * m + ["key"] * m)
        frame["norm"] = _norms(joint)
        for axis, name in zip(range(coords.shape[1]), "xyz"):
            frame[name] = coords[:, axis]
        frame.attrs.update(method=self.method, layer=self.layer_, head=self.head_, backend=self.backend_)
        return frame


def principal_axes(x_centred: np.ndarray, n_components: int) -> np.ndarray:
    """Top principal directions ``[C, d]`` of centred rows, each signed so its largest-|value| entry is
    positive (scikit-learn's ``svd_flip`` rule), so the result does not depend on the solver's signs."""
    eigvals, eigvecs = np.linalg.eigh(x_centred.T @ x_centred)  # (d,), (d, d) ascending
    axes = eigvecs[:, np.argsort(eigvals)[::-1][:n_components]].T  # (C, d)
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    return axes * signs[:, None]


def frame_records(frame: pd.DataFrame) -> list[dict]:
    """Rows of a points table as JSON-ready dicts (NaN -> None)."""
    return jsonable(frame.astype(object).where(frame.notna(), None).to_dict("records"))
