"""Sparse attention decomposition, circuit graphs and known-circuit scores.

Oracles: the queries and keys the attention kernel actually received (captured q/k), the paper's
augmented QK matrix built literally from the unfolded Hugging Face weights, hand-made term vectors,
hand-built attention patterns, and, on toy-gpt, ablations of the named heads against random heads.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.probes.attention_svd import gpt2_weights, normalise, ov_svd, qk_svd, score_terms, select_components
from attnlab.probes.circuits import circuit_graph
from attnlab.probes.head_scores import induction_scores, previous_token_scores, repeat_period

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9], [1, 9, 8, 7, 6, 5, 4, 9, 8, 7, 6]])
FULL = Capture(pattern=True, qk=True, head_out=True, resid=True)


def random_gpt2(seed: int = 0, n_layer: int = 3):
    """A tiny GPT-2 whose biases and LayerNorm parameters are random too (so folding them is tested)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=32, n_layer=n_layer, n_head=4)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
            elif "c_attn.weight" in name:
                p.mul_(8.0)  # sharper attention, so heads fire (attention >= 0.5)
    return model


def capture(model, ids=IDS, cap=FULL):
    with torch.no_grad(), attach(model, cap) as rec:
        model(input_ids=ids)
    return rec.trace()


@pytest.fixture(scope="module")
def model():
    return random_gpt2()


@pytest.fixture(scope="module")
def trace(model):
    return capture(model)


def test_decomposition_sums_to_the_score_the_kernel_saw(model, trace):
    w = gpt2_weights(model)
    for layer in range(3):
        x, _ = normalise(trace.resid_in(layer).double(), w.eps[layer])  # (B, N, d+1)
        rec = trace.layer(layer)
        for head in range(4):
            terms = score_terms(qk_svd(w, layer, head), x[:, :, None], x[:, None, :])  # (B, Q, K, r)
            real = rec.q[:, head].double() @ rec.k[:, head].double().transpose(-1, -2) * w.scale[layer]
            assert terms.shape[-1] == 8  # truncated to d_head
            assert torch.allclose(terms.sum(-1), real, atol=1e-4), (layer, head)


def test_folded_svd_matches_the_papers_augmented_matrix(model, trace):
    """Ω̃ = [[W_Q W_Kᵀ, W_Q b_Kᵀ], [b_Q W_Kᵀ, b_Q·b_K]] on x̃ = [ln_1(h); 1], built from the raw HF weights."""
    layer, head = 1, 2
    block = model.transformer.h[layer]
    d, dh = 32, 8
    w = block.attn.c_attn.weight.detach().double()
    b = block.attn.c_attn.bias.detach().double()
    cols_q, cols_k = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    wq, wk, bq, bk = w[:, cols_q], w[:, cols_k], b[cols_q], b[cols_k]
    omega = torch.cat([torch.cat([wq @ wk.T, (wq @ bk)[:, None]], 1),
                       torch.cat([(bq @ wk.T)[None], (bq @ bk).reshape(1, 1)], 1)]) / dh**0.5  # (d+1, d+1)
    ln = block.ln_1
    x = torch.nn.functional.layer_norm(trace.resid_in(layer).double(), (d,), ln.weight.double(), ln.bias.double(), ln.eps)
    x = torch.cat([x, torch.ones_like(x[..., :1])], -1)  # (B, N, d+1)
    paper = x @ omega @ x.transpose(-1, -2)  # (B, Q, K)
    ours, _ = normalise(trace.resid_in(layer).double(), block.ln_1.eps)
    f = qk_svd(gpt2_weights(model), layer, head)
    assert torch.allclose(score_terms(f, ours[:, :, None], ours[:, None, :]).sum(-1), paper, atol=1e-8)
    assert torch.linalg.matrix_rank(omega) <= dh
    assert torch.all(f.s[:-1] >= f.s[1:]) and torch.allclose(f.u.T @ f.u, torch.eye(dh, dtype=torch.float64))


def test_ov_svd_reconstructs_w_v_w_o(model):
    w = gpt2_weights(model)
    f = ov_svd(w, 2, 1)
    assert torch.allclose(f.matrix(), w.w_v[2, 1] @ w.w_o[2, 1], atol=1e-10)
    assert f.u.shape == (32, 8)


@pytest.mark.parametrize("terms,threshold,kept", [
    ([0.1, 3.0, -0.5, 2.0], 0.7, [1, 3]),     # 3.0 / 4.6 = 0.65 < 0.7; + 2.0 -> 1.09
    ([0.1, 3.0, -0.5, 2.0], 0.6, [1]),
    ([-3.0, 0.5, -1.0, -0.2], 0.7, [0]),      # negative sum: sorted ascending, -3 / -3.7 = 0.81
    ([-3.0, 0.5, -1.0, -0.2], 0.9, [0, 2]),
    ([1.0, 1.0, 1.0, 1.0], 1.0, [0, 1, 2, 3]),
    ([1.0, -1.0, 0.0, 0.0], 0.7, [0, 1, 2, 3]),  # zero sum: keep everything
])
def test_select_components_on_hand_made_terms(terms, threshold, kept):
    mask = select_components(torch.tensor(terms, dtype=torch.float64), threshold)
    assert torch.nonzero(mask).flatten().tolist() == kept


def test_select_components_batched_and_bad_threshold():
    t = torch.tensor([[0.1, 3.0, -0.5, 2.0], [-3.0, 0.5, -1.0, -0.2]])
    assert select_components(t).tolist() == [[False, True, False, True], [True, False, False, False]]
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        select_components(t, 1.5)


def test_exact_weighting_writers_sum_to_the_kept_part_of_the_score(model, trace):
    g = circuit_graph(trace, model, weighting="exact", attn_threshold=0.3)
    assert len(g.firings) > 10 and g.score_error < 1e-4
    w = gpt2_weights(model)
    xs = [normalise(trace.resid_in(layer).double(), w.eps[layer])[0] for layer in range(3)]
    svds = {(l, h): qk_svd(w, l, h) for l in range(3) for h in range(4)}
    for f, (b, layer, head, i, j) in enumerate(g.firings.tolist()):
        terms = score_terms(svds[layer, head], xs[layer][b, i], xs[layer][b, j])  # (r,)
        kept = terms[torch.from_numpy(g.selected[f])].sum().item()
        assert terms.sum().item() == pytest.approx(g.scores[f], abs=1e-9)
        assert np.nansum(g.contrib_dest[f]) == pytest.approx(kept, abs=1e-8)
        assert np.nansum(g.contrib_src[f]) == pytest.approx(kept, abs=1e-8)
        assert kept / terms.sum().item() >= 0.7 - 1e-9
        n_up = 1 + layer * 5  # embed + (4 heads + mlp) per earlier layer
        assert np.isnan(g.contrib_src[f, n_up:-1]).all() and not np.isnan(g.contrib_src[f, :n_up]).any()


def test_firings_follow_the_papers_filters(model, trace):
    g = circuit_graph(trace, model)
    frame = g.firings_frame()
    assert (frame["attention"] >= 0.5).all() and (frame["score"] > 0).all()
    assert (frame["src"] > 0).all() and (frame["src"] <= frame["dest"]).all()
    pattern = np.stack([trace.layer(int(l)).pattern[b, h, i, j].item() for b, l, h, i, j in g.firings])
    assert np.allclose(pattern, frame["attention"])


def test_a_head_that_writes_nothing_gets_no_edge():
    model = random_gpt2(seed=1, n_layer=2)
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.weight[8:16] = 0.0  # head 0.1 writes nothing
    g = circuit_graph(capture(model), model, min_share=0.0, attn_threshold=0.3)
    col = g.writers.index("0.1")
    later = g.firings[:, 1] == 1
    assert later.any()
    assert np.allclose(g.contrib_src[later, col], 0.0) and np.allclose(g.contrib_dest[later, col], 0.0)
    frame = g.to_frame()
    assert (frame.loc[frame["upstream"] == "0.1", "strength"] == 0).all()
    assert frame.loc[frame["upstream"] == "0.0", "strength"].abs().sum() > 0


def test_edge_strengths_are_shares_among_upstream_heads(model, trace):
    g = circuit_graph(trace, model, min_share=-1.0)  # keep every head pair
    frame = g.to_frame()
    for (down, side), group in frame.groupby(["downstream", "side"]):
        layer = int(down.split(".")[0])
        assert len(group) == 4 * layer and set(group["upstream"].str[0].astype(int)) <= set(range(layer))
        rows = np.flatnonzero((g.firings[:, 1] == layer) & (g.firings[:, 2] == int(down.split(".")[1])))
        contrib = (g.contrib_src if side == "src" else g.contrib_dest)[rows]
        heads = [g.writers.index(u) for u in group["upstream"]]
        share = contrib[:, heads] / np.abs(contrib[:, heads]).sum(1, keepdims=True)
        assert np.allclose(group["strength"], share.mean(0))
        assert (group["firings"] == len(rows)).all() and (group["share_of_all"].abs() <= group["strength"].abs() + 1e-12).all()
    writers = g.writer_frame()
    sums = writers.groupby(["downstream", "side"])["share"].apply(lambda x: x.abs().sum())
    assert (sums <= 1 + 1e-9).all() and {"embed", "mlp0", "bias"} <= set(writers["writer"])


def test_refuses_other_models_and_missing_captures(model, trace, tiny_dir):
    from attnlab.zoo import load

    with pytest.raises(ValueError, match="differ from this model's weights"):
        circuit_graph(trace, random_gpt2(seed=5))
    with pytest.raises(ValueError, match=r"Capture\(head_out=True\)"):
        circuit_graph(capture(model, cap=Capture(resid=True, pattern=True)), model)
    llama, _, _ = load(str(tiny_dir("llama")))
    with pytest.raises(ValueError, match="supports Hugging Face GPT-2 models, not llama"):
        gpt2_weights(llama)


# -- induction and previous-token scores on hand-built patterns ---------------------------------------------


def test_repeat_period():
    assert repeat_period(["<bos>", "a", "b", "c", "a", "b", "c"]) == 3
    assert repeat_period(["a", "b", "a", "c"]) == 0
    assert repeat_period(["x", "a", "a", "a", "a"]) == 2


def test_induction_and_previous_token_scores_on_planted_heads(build_trace):
    toks = ["<bos>", "a", "b", "c", "d", "a", "b", "c", "d"]  # L = 4, n = 9
    n, period = len(toks), 4
    pattern = np.zeros((1, 3, n, n))
    pattern[0, :, 0, 0] = pattern[0, 1:, 1, 1] = 1.0
    for i in range(1, n):
        pattern[0, 0, i, i - 1] = 1.0  # previous-token head
    for i in range(2, n):
        pattern[0, 2, i, 0] = 1.0  # sink head
        pattern[0, 1, i, i - period + 1 if i >= period else i] = 1.0  # induction head (stripe on the 2nd copy)
    tr = build_trace(patterns=[pattern], tokens=[toks], causal=True)
    ind, prev = induction_scores(tr), previous_token_scores(tr)
    assert ind.n_positions == period and prev.n_positions == n - 1
    assert np.allclose(ind.scores, [[0.0, 1.0, 0.0]]) and np.allclose(prev.scores, [[1.0, 0.0, 0.0]])
    assert ind.heads(0.5) == [(0, 1)] and prev.heads(0.5) == [(0, 0)]
    with pytest.raises(ValueError, match="does not end with a repeated block"):
        induction_scores(build_trace(patterns=[pattern], tokens=[list("abcdefghi")], causal=True))
    # The same item left-padded by two positions (LLaMA-style), next to the unpadded one: the same scores.
    padded = np.zeros((2, 3, n + 2, n + 2))
    padded[0, :, 2:, 2:], padded[1, :, :n, :n] = pattern[0], pattern[0]
    tr = build_trace(patterns=[padded], tokens=[["<pad>"] * 2 + toks, toks + ["<pad>"] * 2], causal=True,
                     token_mask=[[False] * 2 + [True] * n, [True] * n + [False] * 2])
    ind, prev = induction_scores(tr), previous_token_scores(tr)
    assert ind.n_positions == 2 * period and prev.n_positions == 2 * (n - 1)
    assert np.allclose(ind.scores, [[0.0, 1.0, 0.0]]) and np.allclose(prev.scores, [[1.0, 0.0, 0.0]])


# -- the CLI ----------------------------------------------------------------------------------------------


def _probe_app():
    import typer

    from attnlab.cli.circuits_cmd import register_probe

    app = typer.Typer()
    probe = typer.Typer()
    register_probe(probe)
    app.add_typer(probe, name="probe")
    return app


def test_probe_circuits_cli(tmp_path, tiny_dir):
    from attnlab.cli.capture_cmd import run_capture

    ckpt = str(tiny_dir("gpt2"))
    text = ["the cat sat on the mat . the cat sat on the mat"]
    good = run_capture(ckpt, text, [], Capture.parse("pattern,qk,head_out,resid"), tmp_path / "good")
    runner = CliRunner()
    res = runner.invoke(_probe_app(), ["probe", "circuits", str(good), "--json", "--attn-threshold", "0.2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == ckpt and data["n_firings"] > 0 and data["score_error"] < 1e-4
    assert {"upstream", "downstream", "side", "strength", "components"} <= set(data["edges"][0])
    poor = run_capture(ckpt, text, [], Capture.parse("pattern,qk"), tmp_path / "poor")
    res = runner.invoke(_probe_app(), ["probe", "circuits", str(poor)])
    assert res.exit_code == 2 and "needs the capture options resid, head_out" in res.stderr
    assert "lacks resid, head_out" in res.stderr
    bert = run_capture(str(tiny_dir("bert")), ["the cat"], [], Capture.parse("resid,head_out"), tmp_path / "bert")
    res = runner.invoke(_probe_app(), ["probe", "circuits", str(bert)])
    assert res.exit_code == 2 and "captured from a GPT-2 model" in res.stderr


# -- toy-gpt: the named heads matter ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_gpt():
    from attnlab.zoo import load
    from attnlab.zoo.registry import CHECKPOINTS

    if not (CHECKPOINTS / "toy-gpt" / "config.json").exists():
        pytest.fail("toy-gpt is not trained (zoo/checkpoints/toy-gpt is missing); `attnlab zoo train toy-gpt`")
    torch.manual_seed(0)
    return load("toy-gpt")


def require_learnt(task: str, model, tok) -> None:
    """Fail when the loaded toy-gpt checkpoint, measured now on held-out data, misses its card's threshold for
    ``task``: a regressed checkpoint is no oracle, and a skip would hide the regression."""
    from attnlab.zoo.registry import card
    from attnlab.zoo.toy_gpt import heldout_ioi_prompts, induction_losses, ioi_logit_diffs

    limits = card("toy-gpt").get("thresholds", {})
    if task == "induction":
        ratio = induction_losses(model, tok, n=64, seed=2)["ratio"]
        if ratio > limits.get("induction_loss_ratio_max", 0.2):
            pytest.fail(f"this toy-gpt checkpoint has not learnt induction (loss ratio {ratio:.3f} on held-out data)")
    if task == "ioi":
        positive = (ioi_logit_diffs(model, tok, heldout_ioi_prompts(64, seed=4)) > 0).float().mean().item()
        if positive < limits.get("ioi_positive_fraction_min", 0.9):
            pytest.fail(f"this toy-gpt checkpoint has not learnt IOI (positive fraction {positive:.2f} held out)")


@pytest.fixture(scope="module")
def toy_report(toy_gpt):
    from attnlab.interventions.known_circuits import trace_circuits

    model, tok, _ = toy_gpt
    return trace_circuits(model, tok, n_prompts=32, n_sequences=16)


def _random_sets(named, n_layers, n_heads, n_sets, seed=0):
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in named]
    rng = np.random.default_rng(seed)
    size = min(len(named), len(others))
    return [[others[i] for i in rng.choice(len(others), size, replace=False)] for _ in range(n_sets)]


def _ablated(model, heads, n_heads, fn):
    from attnlab.interventions.heads import scale_heads_plan

    with torch.no_grad(), attach(model, plan=scale_heads_plan(heads, n_heads)):
        return fn()


def test_toy_gpt_named_induction_heads_carry_induction(toy_gpt, toy_report):
    from attnlab.zoo.toy_gpt import induction_losses

    model, tok, spec = toy_gpt
    require_learnt("induction", model, tok)
    named = list(toy_report.induction_heads) + [h for h in toy_report.previous_token_heads
                                                if h not in toy_report.induction_heads]
    assert toy_report.induction_heads and toy_report.previous_token_heads
    loss = lambda: induction_losses(model, tok, n=24, seed=1)["second"]  # noqa: E731
    base = loss()
    hit = _ablated(model, named, spec.n_heads, loss) - base
    random_hits = [_ablated(model, s, spec.n_heads, loss) - base
                   for s in _random_sets(named, spec.n_layers, spec.n_heads, 4)]
    assert hit > 3 * max(np.mean(random_hits), 0.05), (hit, random_hits)


def test_toy_gpt_named_ioi_heads_carry_ioi(toy_gpt, toy_report):
    from attnlab.zoo.toy_gpt import heldout_ioi_prompts, ioi_logit_diffs

    model, tok, spec = toy_gpt
    require_learnt("ioi", model, tok)
    named = list(toy_report.ioi_heads)
    assert named
    prompts = heldout_ioi_prompts(32, seed=3)
    diff = lambda: ioi_logit_diffs(model, tok, prompts).mean().item()  # noqa: E731
    base = diff()
    drop = base - _ablated(model, named, spec.n_heads, diff)
    random_drops = [base - _ablated(model, s, spec.n_heads, diff)
                    for s in _random_sets(named, spec.n_layers, spec.n_heads, 4)]
    assert drop > 2 * max(np.mean(random_drops), 0.1 * base), (drop, random_drops)


def test_toy_gpt_induction_heads_read_previous_token_heads_on_the_key_side(toy_gpt, toy_report):
    """K-composition (Olsson et al.): an induction head's key side is written by a previous-token head."""
    model, tok, _ = toy_gpt
    require_learnt("induction", model, tok)
    from attnlab.interventions.known_circuits import repeated_sequences

    with torch.no_grad(), attach(model, FULL, tokenizer=tok) as rec:
        model(input_ids=repeated_sequences(tok, 8, 15, seed=2))
    g = circuit_graph(rec.trace(), model, min_share=0.0)
    frame = g.to_frame()
    checked = 0
    for layer, head in toy_report.induction_heads:
        src = frame[(frame["downstream"] == f"{layer}.{head}") & (frame["side"] == "src")]
        if src.empty:  # a weak induction head may never reach attention 0.5
            continue
        best = src.sort_values("strength").iloc[-1]["upstream"]
        assert tuple(int(x) for x in best.split(".")) in toy_report.previous_token_heads, src
        checked += 1
    assert checked >= 1
