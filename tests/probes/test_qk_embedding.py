"""Joint query-key embeddings: attention is unchanged by the normalisation, the geometry the paper asks for
holds, scikit-learn behaviour, and real heads whose nearest keys are the keys they attend to."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from attnlab.core.capture import Capture
from attnlab.core.runs import Run
from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta
from attnlab.hooks.inputs import capture_trace
from attnlab.probes.qk_embedding import QKEmbedding, principal_axes
from attnlab.probes.qk_heads import embed_all_heads

SENTENCES = [
    "The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.", "My favourite colour is blue, but my sister prefers green.",
    "Rain fell all night and the river rose.", "He opened the door and walked into the cold kitchen.",
    "Birds sing early in the morning.", "The committee will meet next Tuesday to discuss the budget.",
    "Paris is the capital of France.", "Music can change the way we feel about a place.",
    "Two plus two equals four.", "They planted tomatoes, beans and a row of sunflowers.",
    "Where did you leave the keys?", "The train to Glasgow was late again.",
    "Honey never spoils if it is kept sealed.", "Our neighbours painted their fence bright yellow.",
]


def sharpen_gpt2(model, std: float = 0.6, seed: int = 0) -> None:
    """Random query/key projections large enough for low-entropy heads (a random init attends uniformly)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.transformer.h:
            w = block.attn.c_attn.weight  # (d_model, 3 d_model), queries then keys then values
            d = w.shape[0]
            w[:, : 2 * d] = torch.randn(d, 2 * d, generator=gen) * std


def word_sequences(words, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, int(rng.integers(8, 13)))) for _ in range(n)]


@pytest.fixture(scope="module")
def minilm_trace(minilm):
    model, tok, spec = minilm
    return capture_trace(model, tok, spec, Capture(qk=True, pattern=True), SENTENCES)


@pytest.fixture(scope="module")
def gpt_trace(tiny_dir):
    from attnlab.zoo import load
    from attnlab.zoo.tiny import TINY_WORDS

    model, tok, spec = load(str(tiny_dir("gpt2")))
    sharpen_gpt2(model)
    return capture_trace(model, tok, spec, Capture(qk=True, pattern=True), word_sequences(list(TINY_WORDS[:-4]), 16))


def qk_trace(n_inputs=2, n_tokens=6, n_heads=2, d_head=4, seed=0, qk=True, segments=None) -> Trace:
    """A hand-built Trace with random queries and keys for one layer."""
    rng = np.random.default_rng(seed)
    q, k = (torch.tensor(rng.normal(size=(n_inputs, n_heads, n_tokens, d_head)), dtype=torch.float32) for _ in "qk")
    meta = TraceMeta(model="hand-built", family="vit", n_layers=1, n_heads=n_heads, d_head=d_head, d_model=8,
                     causal=False, captured=("qk",) if qk else ("pattern",))
    layer = LayerRecord(q=q, k=k) if qk else LayerRecord(pattern=torch.ones(n_inputs, n_heads, n_tokens, n_tokens))
    return Trace(tokens=[[f"t{b}.{n}" for n in range(n_tokens)] for b in range(n_inputs)],
                 segments=segments or [[Segment("text", 0, n_tokens)] for _ in range(n_inputs)],
                 layers={0: layer}, meta=meta, token_mask=torch.ones(n_inputs, n_tokens, dtype=torch.bool))


def joint_softmax(emb: QKEmbedding, trace: Trace, b: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over the visible real keys of transformed ``q . k`` for input ``b``, and its real positions."""
    m = emb.n_queries_
    rows = np.flatnonzero(emb.points_["input"].to_numpy()[:m] == b)
    q, k = emb.joint_[rows], emb.joint_[m + rows]  # (n, d)
    logits = q @ k.T  # (n, n)
    if causal:
        logits = np.where(np.tril(np.ones_like(logits, dtype=bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    return weights / weights.sum(1, keepdims=True), emb.points_["position"].to_numpy()[rows]


@pytest.mark.parametrize("which", ["minilm", "gpt2"])
def test_transform_preserves_every_attention_weight(which, request):
    trace = request.getfixturevalue("minilm_trace" if which == "minilm" else "gpt_trace")
    causal = trace.meta.causal
    assert causal == (which == "gpt2")
    for layer, head in [(0, 0), (trace.meta.n_layers - 1, trace.meta.n_heads - 1), (1, 2)]:
        emb = QKEmbedding(method="pca").fit(trace, layer=layer, head=head)
        assert emb.scale_ != pytest.approx(1.0) and np.abs(emb.shift_).max() > 1e-3  # a real transformation
        pattern = trace.layer(layer).pattern[:, head].double().numpy()  # (B, Q, K)
        for b in range(trace.batch_size):
            weights, pos = joint_softmax(emb, trace, b, causal)
            np.testing.assert_allclose(weights, pattern[b][np.ix_(pos, pos)], atol=1e-5)
            np.testing.assert_allclose(pattern[b][pos].sum(1), 1.0, atol=1e-5)  # padding keys get nothing


def test_centroids_coincide_and_mean_norms_are_equal(minilm_trace):
    for scale in ("norm", "correlation", 0.7):
        emb = QKEmbedding(method="pca", scale=scale).fit(minilm_trace, layer=2, head=5)
        m = emb.n_queries_
        queries, keys = emb.joint_[:m], emb.joint_[m:]
        np.testing.assert_allclose(queries.mean(0), keys.mean(0), atol=1e-10)
        norms = emb.points_["norm"].to_numpy()
        np.testing.assert_allclose(norms, np.linalg.norm(emb.joint_, axis=1))
        if scale == "norm":
            assert norms[:m].mean() == pytest.approx(norms[m:].mean(), rel=1e-9)
        if scale == 0.7:
            assert emb.scale_ == 0.7
    by_norm = QKEmbedding(method="pca").fit(minilm_trace, layer=2, head=5)
    by_corr = QKEmbedding(method="pca", scale="correlation").fit(minilm_trace, layer=2, head=5)
    # the correlation rule searches a grid that contains the norm rule's c, on the same sampled pairs
    assert by_corr.correlation_ <= by_norm.correlation_ + 1e-12
    assert by_norm.correlation_ < 0  # a short distance goes with a large logit


def test_queries_are_prescaled_so_dot_products_are_logits():
    trace = qk_trace(n_inputs=1, d_head=16)
    emb = QKEmbedding(method="pca").fit(trace, layer=0, head=1)
    q, k = trace.layer(0).q[0, 1].double().numpy(), trace.layer(0).k[0, 1].double().numpy()
    m = emb.n_queries_
    logits = emb.joint_[:m] @ emb.joint_[m:].T  # (Q, K)
    expected = q @ k.T / 4.0  # 1/sqrt(16)
    np.testing.assert_allclose(logits - logits[:, :1], expected - expected[:, :1], atol=1e-9)
    assert emb.logit_scale_ == 0.25


def test_deterministic_for_a_fixed_random_state():
    trace = qk_trace(n_inputs=3, n_tokens=12, d_head=8)
    for method in ("tsne", "pca"):
        a = QKEmbedding(method=method, random_state=3).fit_transform(trace, layer=0, head=1)
        b = QKEmbedding(method=method, random_state=3).fit_transform(trace, layer=0, head=1)
        np.testing.assert_array_equal(a, b)


def test_pca_axes_are_sign_fixed_and_match_scikit_learn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(1).normal(size=(200, 6)) * np.arange(1, 7)
    x -= x.mean(0)
    axes = principal_axes(x, 3)
    np.testing.assert_allclose(principal_axes(-x, 3), axes, atol=1e-12)  # the sign does not follow the data's
    ref = PCA(3).fit(x).components_
    np.testing.assert_allclose(np.abs((axes * ref).sum(1)), 1.0, atol=1e-8)
    assert (axes[np.arange(3), np.abs(axes).argmax(1)] > 0).all()


def test_estimator_api_follows_scikit_learn(minilm_trace):
    emb = QKEmbedding(method="pca", n_components=3, perplexity=5.0)
    assert emb.get_params()["perplexity"] == 5.0 and not hasattr(emb, "embedding_")
    assert QKEmbedding(method="nonsense").method == "nonsense"  # __init__ stores, fit validates
    with pytest.raises(NotFittedError):
        emb.transform(minilm_trace)
    assert emb.fit(minilm_trace, layer=-1, head=-1) is emb
    assert (emb.layer_, emb.head_) == (5, 11)
    n_real = int(minilm_trace.token_mask.sum())
    assert emb.embedding_.shape == (2 * n_real, 3) and emb.n_queries_ == n_real
    points = emb.points_
    assert points["kind"].tolist() == ["query"] * n_real + ["key"] * n_real
    expected = {"input", "token", "position", "segment", "category", "patch_row", "patch_col", "norm", "x", "y", "z"}
    assert expected <= set(points)
    first = points.iloc[0]
    assert (first["token"], first["position"], first["segment"]) == ("[CLS]", 0, "special")
    assert "[PAD]" not in set(points["token"])  # padding never becomes a point
    np.testing.assert_allclose(emb.transform(minilm_trace), emb.embedding_, atol=1e-9)
    json.dumps(emb.to_dict())


def test_transform_keeps_the_attention_of_new_inputs():
    first, second = qk_trace(seed=1, d_head=16), qk_trace(seed=2, d_head=16)
    emb = QKEmbedding(method="pca").fit(first, layer=0, head=1)
    joint = emb.joint_vectors(second)  # (2M', d) with the c and shift learned on `first`
    q, k = second.layer(0).q[:, 1].double().numpy(), second.layer(0).k[:, 1].double().numpy()  # (B, N, d)
    n = second.n_tokens
    for b in range(second.batch_size):
        logits = joint[b * n : (b + 1) * n] @ joint[len(joint) // 2 + b * n :][:n].T  # (N, N)
        expected = q[b] @ k[b].T / 4.0
        np.testing.assert_allclose(softmax(logits), softmax(expected), atol=1e-12)
    placed = emb.transform([first, second])
    np.testing.assert_allclose(placed[: emb.n_queries_], emb.embedding_[: emb.n_queries_], atol=1e-9)
    assert placed.shape == (2 * 2 * emb.n_queries_, 2)
    with pytest.raises(ValueError, match="method='pca'.*method='umap'"):
        QKEmbedding(method="tsne").fit(first, layer=0, head=0).transform(second)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.slow  # umap-learn compiles its numba kernels in every new process (about a minute)
def test_umap_fits_and_transforms():
    pytest.importorskip("umap")
    trace = qk_trace(n_inputs=4, n_tokens=15, d_head=8)
    emb = QKEmbedding(method="umap", n_neighbors=10).fit(trace, layer=0, head=0)
    assert emb.backend_ == "umap-learn" and np.isfinite(emb.embedding_).all()
    assert emb.transform(trace).shape == emb.embedding_.shape
    again = QKEmbedding(method="umap", n_neighbors=10).fit(trace, layer=0, head=0)
    np.testing.assert_array_equal(again.embedding_, emb.embedding_)


def test_errors_name_the_fix(minilm_trace):
    with pytest.raises(ValueError, match=r"Capture\(qk=True\)"):
        QKEmbedding(method="pca").fit(qk_trace(qk=False), layer=0, head=0)
    with pytest.raises(ValueError, match="Unknown embedding method 'nonsense'.*tsne"):
        QKEmbedding(method="nonsense").fit(minilm_trace, layer=0, head=0)
    with pytest.raises(ValueError, match="n_components"):
        QKEmbedding(n_components=5).fit(minilm_trace, layer=0, head=0)
    with pytest.raises(ValueError, match="head 12 is outside"):
        QKEmbedding(method="pca").fit(minilm_trace, layer=0, head=12)
    with pytest.raises(ValueError, match="Layer 9 was not captured"):
        QKEmbedding(method="pca").fit(minilm_trace, layer=9, head=0)
    with pytest.raises(ValueError, match="another shape"):
        QKEmbedding(method="pca").fit([minilm_trace, qk_trace()], layer=0, head=0)
    with pytest.raises(TypeError, match="Trace, a Run"):
        QKEmbedding(method="pca").fit(["not a trace"], layer=0, head=0)
    if importlib.util.find_spec("umap") is not None:
        with pytest.raises(ValueError, match="init must be 'auto', 'spectral', 'pca' or 'random'"):
            QKEmbedding(method="umap", init="bogus").fit(minilm_trace, layer=0, head=0)


def test_image_patches_carry_their_grid_position():
    segs = [[Segment("special", 0, 1), Segment("image", 1, 7, grid=(2, 3)), Segment("text", 7, 8)]]
    emb = QKEmbedding(method="pca").fit(qk_trace(n_inputs=1, n_tokens=8, segments=segs), layer=0, head=0)
    queries = emb.points_[emb.points_["kind"] == "query"]
    assert queries["patch_row"].tolist() == [-1, 0, 0, 0, 1, 1, 1, -1]
    assert queries["patch_col"].tolist() == [-1, 0, 1, 2, 0, 1, 2, -1]
    assert queries["segment"].tolist() == ["special"] + ["image"] * 6 + ["text"]


def test_embed_all_heads_matches_single_fits(minilm_trace):
    result = embed_all_heads(minilm_trace, QKEmbedding(method="pca"), layers=[0, -1], heads=[0, 7])
    assert result.layers == (0, 5) and result.heads == (0, 7)
    assert result.coords.shape == (2, 2, 2 * int(minilm_trace.token_mask.sum()), 2)
    single = QKEmbedding(method="pca").fit(minilm_trace, layer=5, head=7)
    np.testing.assert_allclose(result.coords[1, 1], single.embedding_)
    assert result.scales[1, 1] == single.scale_
    assert len(result.to_frame()) == 4 * len(single.points_)
    json.dumps(result.to_dict())


# -- the real check: distance in the joint space stands for attention ---------------------------------------
def head_entropy(trace: Trace) -> np.ndarray:
    """``[L, H]`` mean attention entropy (nats) over real query rows."""
    mask = trace.token_mask.double()[:, None, :]  # (B, 1, Q)
    out = []
    for layer in range(trace.meta.n_layers):
        p = trace.layer(layer).pattern.double()  # (B, H, Q, K)
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (B, H, Q)
        out.append(((ent * mask).sum((0, 2)) / mask.sum((0, 2))).numpy())
    return np.array(out)


def nearest_key_scores(emb: QKEmbedding, trace: Trace, space: str, top: int = 3) -> dict:
    """Score, for every query with at least two visible keys, its nearest visible key of the same input in
    ``space`` (``joint`` or ``2d``) against the captured pattern, next to the chance level of a key drawn
    uniformly from the visible ones:

    * ``hit``: the key is among the query's ``top`` most attended keys (chance ``p = min(top, n) / n``);
    * ``percentile``: the key's attention rank among the ``n`` visible keys, 1 = most attended, 0 = least
      (chance: the mean over all visible keys, 0.5, variance ``(n + 1) / (12 (n - 1))``).

    ``*_z`` is the distance from chance in standard errors of the chance mean.
    """
    m = emb.n_queries_
    coords = emb.joint_ if space == "joint" else emb.embedding_
    points = emb.points_.iloc[:m]
    pattern = trace.layer(emb.layer_).pattern[:, emb.head_].double().numpy()  # (B, Q, K)
    rows_out = []  # (hit, hit chance, percentile, percentile chance, percentile chance variance)
    for b in np.unique(points["batch"]):
        rows = np.flatnonzero(points["batch"].to_numpy() == b)
        pos = points["position"].to_numpy()[rows]
        attn = pattern[b][np.ix_(pos, pos)]  # (n, n) real queries x real keys
        dist = ((coords[rows][:, None] - coords[m + rows][None]) ** 2).sum(-1)  # (n, n)
        for r in range(len(rows)):
            n = r + 1 if trace.meta.causal else len(rows)
            if n < 2:
                continue
            near = int(np.argmin(dist[r, :n]))
            order = np.argsort(-attn[r, :n])  # most attended first
            percentile = 1.0 - np.argsort(order) / (n - 1)  # (n,) per key
            rows_out.append((near in order[:top], min(top, n) / n, percentile[near], percentile.mean(),
                             (n + 1) / (12 * (n - 1))))
    hit, p, pct, pct_chance, pct_var = np.array(rows_out, dtype=float).T
    count = len(hit)
    return {"queries": count, "hit": hit.mean(), "hit_chance": p.mean(),
            "hit_z": (hit.mean() - p.mean()) / (np.sqrt((p * (1 - p)).sum()) / count),
            "percentile": pct.mean(), "percentile_chance": pct_chance.mean(),
            "percentile_z": (pct.mean() - pct_chance.mean()) / (np.sqrt(pct_var.sum()) / count)}


def assert_nearest_keys_are_attended(trace: Trace, n_heads: int, n_embedded: int) -> list:
    """On the ``n_heads`` lowest-entropy heads: nearest keys are attended keys, far above chance."""
    entropy = head_entropy(trace)
    sharpest = [np.unravel_index(i, entropy.shape) for i in np.argsort(entropy, axis=None)[:n_heads]]
    report = []
    for rank, (layer, head) in enumerate(sharpest):
        method = "tsne" if rank < n_embedded else "pca"  # the 2-D check needs t-SNE; PCA suffices for joint_
        emb = QKEmbedding(method=method).fit(trace, layer=int(layer), head=int(head))
        for space in ("joint", "2d") if method == "tsne" else ("joint",):
            s = nearest_key_scores(emb, trace, space)
            report.append((int(layer), int(head), round(float(entropy[layer, head]), 3), space, s))
            assert s["percentile_z"] > 5 and s["hit_z"] > 4, report[-1]
            assert s["percentile"] > s["percentile_chance"] + 0.15 and s["hit"] > s["hit_chance"] + 0.15, report[-1]
    return report


def test_nearest_keys_are_the_attended_keys_minilm(minilm_trace):
    assert_nearest_keys_are_attended(minilm_trace, n_heads=3, n_embedded=1)


def test_nearest_keys_are_the_attended_keys_tiny_gpt2(gpt_trace):
    assert_nearest_keys_are_attended(gpt_trace, n_heads=2, n_embedded=1)


def test_nearest_keys_are_the_attended_keys_toy_gpt():
    from attnlab.zoo import load

    model, tok, spec = load("toy-gpt")  # shipped in the zoo: a missing checkpoint is a failure, not a skip
    words = sorted(w for w in tok.get_vocab() if w.isalpha())
    rng = np.random.default_rng(0)
    halves = [list(rng.choice(words, int(rng.integers(6, 10)), replace=False)) for _ in range(16)]
    # its training distribution: a random sequence said twice (induction)
    trace = capture_trace(model, tok, spec, Capture(qk=True, pattern=True), [" ".join(h + h) for h in halves])
    assert_nearest_keys_are_attended(trace, n_heads=1, n_embedded=1)  # its heads are broad (entropy > 1 nat)


# -- faithfulness of the picture, reported for every head ------------------------------------------------------
def eager_nearest_key(points, coords: np.ndarray, trace: Trace, layer: int, head: int) -> tuple[float, float]:
    """Per query, one at a time: nearest visible key of its input in ``coords`` vs the arg-max of the captured
    pattern row; returns (hit rate, mean 1 / visible keys)."""
    m = len(points) // 2
    pattern = trace.layer(layer).pattern[:, head].double().numpy()  # (B, Q, K)
    hits, chance = [], []
    for i in range(m):
        b, pos = int(points["batch"].iloc[i]), int(points["position"].iloc[i])
        same = np.flatnonzero(points["batch"].to_numpy()[m:] == b)
        if trace.meta.causal:
            same = same[points["position"].to_numpy()[m + same] <= pos]
        near = same[np.argmin(np.linalg.norm(coords[m + same] - coords[i], axis=1))]
        hits.append(int(points["position"].iloc[m + near]) == int(pattern[b, pos].argmax()))
        chance.append(1 / len(same))
    return float(np.mean(hits)), float(np.mean(chance))


@pytest.mark.parametrize("which", ["minilm", "gpt2"])
def test_nearest_key_agreement_matches_a_query_by_query_count(which, request):
    trace = request.getfixturevalue("minilm_trace" if which == "minilm" else "gpt_trace")
    emb = QKEmbedding(method="pca").fit(trace, layer=1, head=1)
    hit, chance = eager_nearest_key(emb.points_, emb.embedding_, trace, 1, 1)
    assert emb.nearest_key_ == pytest.approx(hit, abs=1e-12) and emb.nearest_key_chance_ == pytest.approx(chance)
    hit_joint, _ = eager_nearest_key(emb.points_, emb.joint_, trace, 1, 1)
    assert emb.nearest_key_joint_ == pytest.approx(hit_joint, abs=1e-12)
    if which == "gpt2":  # causal: the first query sees one key, the n-th n keys
        lengths = trace.token_mask.sum(1).numpy()
        want = np.mean([1 / (r + 1) for n in lengths for r in range(n)])
        assert emb.nearest_key_chance_ == pytest.approx(want)


def test_a_two_dimensional_head_loses_nothing_in_a_2d_picture():
    # d_head = 2: PCA to 2-D is a rigid motion of the joint space, so the picture is exactly as faithful
    emb = QKEmbedding(method="pca").fit(qk_trace(n_inputs=3, n_tokens=9, d_head=2, seed=4), layer=0, head=1)
    assert emb.layout_correlation_ == pytest.approx(emb.correlation_, abs=1e-9)
    assert emb.nearest_key_ == emb.nearest_key_joint_
    # a 6-D head projected to 2-D loses some: the layout is a different, weaker ordering
    wide = QKEmbedding(method="pca").fit(qk_trace(n_inputs=3, n_tokens=9, d_head=6, seed=4), layer=0, head=1)
    assert wide.layout_correlation_ != pytest.approx(wide.correlation_, abs=1e-3)


def test_every_head_reports_its_pictures_faithfulness_and_the_figures_show_it(minilm_trace):
    from attnlab.viz.qk import qk_heads_matrix, qk_scatter

    result = embed_all_heads(minilm_trace, QKEmbedding(method="pca"), layers=[0, -1], heads=[0, 7])
    single = QKEmbedding(method="pca").fit(minilm_trace, layer=5, head=7)
    assert result.layout_correlations[1, 1] == single.layout_correlation_
    assert result.nearest_key[1, 1] == single.nearest_key_ and result.nearest_key_chance == single.nearest_key_chance_
    faith = single.faithfulness()
    title = qk_scatter(single).layout.title.text
    assert f"{faith['layout_correlation']:.2f} in this picture" in title and f"{faith['nearest_key']:.0%}" in title
    assert result.head_frame(5, 7).attrs["faithfulness"] == faith
    assert qk_scatter(result.head_frame(5, 7)).layout.title.text == title
    names = [a.text for a in qk_heads_matrix(result).layout.annotations]
    assert names[3] == f"L5 H7 ρ {single.layout_correlation_:+.2f}"
    assert json.loads(json.dumps(result.to_dict()))["nearest_key"][1][1] == pytest.approx(single.nearest_key_)


# -- the CLI command ------------------------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from attnlab.cli.qk_cmd import register
    from attnlab.core.runs import RunInfo, save_run

    probe_app = typer.Typer()
    register(probe_app)

    @probe_app.callback()
    def _group():
        """probe"""

    with_qk = save_run(tmp_path / "run", {"main": qk_trace(n_heads=3)}, RunInfo(model={"name": "hand"}))
    without = save_run(tmp_path / "bare", {"main": qk_trace(qk=False)}, RunInfo(model={"name": "hand"}))
    return CliRunner(), probe_app, with_qk, without


def test_cli_prints_points_as_json_and_writes_figures(cli, tmp_path):
    runner, app, run, _ = cli
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "2", "--method", "pca", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["layer"], data["head"], data["method"], data["n_queries"]) == (0, 2, "pca", 12)
    assert len(data["points"]) == 24 and {"x", "y", "token", "kind", "position"} <= set(data["points"][0])
    fitted = QKEmbedding(method="pca").fit(Run.open(run), layer=0, head=2)
    assert data["layout_correlation"] == pytest.approx(fitted.layout_correlation_)
    assert data["nearest_key"] == pytest.approx(fitted.nearest_key_)
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "2", "--method", "pca"])
    assert f"{fitted.layout_correlation_:.3f} in the picture" in res.stdout
    out = tmp_path / "heads.html"
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "all", "--method", "pca",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout and out.stat().st_size > 10_000 and "3 heads" in out.read_text()
    rhos = " ".join(f"{QKEmbedding(method='pca').fit(Run.open(run), layer=0, head=h).layout_correlation_:+.2f}"
                    for h in range(3))
    assert f"layer 0: {rhos}" in res.stdout


def test_cli_saves_the_heads_embedding_into_the_run(cli):
    """``--save`` stores the all-heads result (one head too) and it comes back equal to a direct call."""
    from attnlab.probes.qk_heads import QKHeadsEmbedding

    runner, app, run, _ = cli
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "all", "--method", "pca",
                              "--save", "heads"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "1", "--method", "pca",
                              "--save", "one"])
    assert res.exit_code == 0, res.output
    opened = Run.open(run)
    assert opened.results_of(QKHeadsEmbedding.table_name) == ["heads", "one"]
    want = embed_all_heads(opened, QKEmbedding(method="pca"), layers=[0])
    got = QKHeadsEmbedding.from_frame(opened.result("heads"))
    np.testing.assert_array_equal(got.coords, want.coords)
    assert got.heads == (0, 1, 2) and QKHeadsEmbedding.from_frame(opened.result("one")).heads == (1,)
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "1", "--components", "3",
                              "--save", "x"])
    assert res.exit_code == 2 and "drop --components 3 or --save" in res.output


def test_cli_errors_exit_2_with_the_fix(cli):
    runner, app, run, bare = cli
    res = runner.invoke(app, ["qk-embed", str(bare), "--layer", "0", "--head", "0"])
    assert res.exit_code == 2 and "Capture again with --capture qk" in res.output
    res = runner.invoke(app, ["qk-embed", str(run), "--layer", "0", "--head", "0", "--method", "mds"])
    assert res.exit_code == 2 and "Unknown embedding method" in res.output
