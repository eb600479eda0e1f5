"""Activation and path patching of heads.

Oracles: identities (patching every head reproduces the clean logits, patching nothing the corrupted
ones, a last-layer sender's path to the logits is its activation patch), and path patching computed by
hand from the model's modules, block by block.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab.core.capture import Capture
from attnlab.hooks import attach
from attnlab.interventions.known_circuits import abc_corruption
from attnlab.hooks.edits import Edits, edited, last_positions, run
from attnlab.interventions.patching import activation_patching, logit_diff, path_patching, single_token_id

CLEAN = {"input_ids": torch.tensor([[1, 4, 6, 8, 9, 4, 10, 5], [1, 5, 7, 15, 11, 9, 5, 0]]),
         "attention_mask": torch.tensor([[1] * 8, [1] * 7 + [0]])}
# Different tokens before the last real one; the same last token (so the residual there holds no direct difference).
CORRUPT = {"input_ids": torch.tensor([[1, 5, 7, 8, 17, 4, 10, 5], [1, 4, 6, 15, 12, 9, 5, 0]]),
           "attention_mask": CLEAN["attention_mask"].clone()}
TARGET, FOIL = 6, 7


def _gpt2(seed=0, n_layer=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=32, n_layer=n_layer, n_head=4)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_attn.weight" in name or "c_proj.weight" in name:
                p.mul_(4.0)  # larger head effects than the 0.02-std init gives
    return model


@pytest.fixture(scope="module")
def gpt2():
    return _gpt2()


def _final(logits, inputs=CLEAN):
    return logits[torch.arange(logits.shape[0]), last_positions(inputs)]  # (B, V)


def _padded(rows, side):
    n = max(map(len, rows))
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(n - len(row), n) if side == "left" else slice(0, len(row))
        ids[b, cols], mask[b, cols] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


@pytest.mark.parametrize("side", ["left", "right"])
def test_logit_diff_reads_each_rows_last_real_token_on_either_padding_side(gpt2, side):
    rows = [[1, 4, 6, 8, 9, 4, 10, 5], [1, 5, 7, 15, 11, 9, 5]]
    target, foil = torch.tensor([TARGET]), torch.tensor([FOIL])
    alone = torch.cat([logit_diff(run(gpt2, one), one, target, foil)
                       for one in ({"input_ids": torch.tensor([row])} for row in rows)])
    batch = _padded(rows, side)
    assert last_positions(batch).tolist() == ([7, 7] if side == "left" else [7, 6])
    torch.testing.assert_close(logit_diff(run(gpt2, batch), batch, target, foil), alone, atol=1e-5, rtol=0)


def test_patching_every_head_recovers_the_clean_logits(gpt2):
    rec = Edits(record_z={})
    clean_logits = run(gpt2, CLEAN, rec)
    every = {layer: (z, torch.ones(4, dtype=torch.bool)) for layer, z in rec.record_z.items()}
    patched = run(gpt2, CORRUPT, Edits(z=every))
    corrupt = run(gpt2, CORRUPT)
    assert torch.equal(_final(patched), _final(clean_logits))
    assert not torch.allclose(_final(corrupt), _final(clean_logits), atol=1e-3)


def test_patching_nothing_leaves_the_corrupted_logits(gpt2):
    rec = Edits(record_z={})
    run(gpt2, CLEAN, rec)
    none = {layer: (z, torch.zeros(4, dtype=torch.bool)) for layer, z in rec.record_z.items()}
    with torch.no_grad():
        plain = gpt2(**CORRUPT).logits
    assert torch.equal(run(gpt2, CORRUPT, Edits(z=none)), plain)
    assert torch.equal(run(gpt2, CORRUPT, Edits()), plain)


def test_record_layers_keeps_only_those_layers_and_the_same_values(gpt2):
    every = Edits(record_z={}, record_qkv={}, record_mlp={})
    run(gpt2, CLEAN, every)
    some = Edits(record_z={}, record_qkv={}, record_mlp={}, record_layers=frozenset({1}))
    run(gpt2, CLEAN, some)
    assert len(every.record_z) > 1 and set(some.record_z) == set(some.record_qkv) == set(some.record_mlp) == {1}
    assert torch.equal(some.record_z[1], every.record_z[1]) and torch.equal(some.record_mlp[1], every.record_mlp[1])
    assert all(torch.equal(some.record_qkv[1][n], every.record_qkv[1][n]) for n in "qkv")


def test_recorded_z_is_what_attach_captures(gpt2):
    rec = Edits(record_z={})
    run(gpt2, CLEAN, rec)
    with torch.no_grad(), attach(gpt2, Capture(head_out=True)) as cap:
        gpt2(**CLEAN)
    for layer in range(2):
        z = cap.trace().layer(layer).head_out.transpose(1, 2)  # (B, N, H, dh)
        live = CLEAN["attention_mask"].bool()
        assert torch.allclose(rec.record_z[layer][live], z[live], atol=1e-5)


def test_hooks_are_removed_even_on_errors(gpt2):
    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.modules())

    before = n_hooks()
    with pytest.raises(RuntimeError, match="boom"):
        with edited(gpt2, Edits(record_z={}, record_qkv={}, record_mlp={})):
            assert n_hooks() > before
            raise RuntimeError("boom")
    assert n_hooks() == before


def test_activation_patching_table_and_normalisation(gpt2):
    res = activation_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL)
    clean = logit_diff(run(gpt2, CLEAN), CLEAN, torch.tensor([TARGET] * 2), torch.tensor([FOIL] * 2)).mean()
    assert res.clean == pytest.approx(float(clean)) and res.effect.shape == (2, 4)
    assert np.allclose(res.effect, (res.metric - res.corrupted) / (res.clean - res.corrupted))
    noise = activation_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, direction="noise")
    assert not np.allclose(noise.effect, res.effect)
    frame = res.to_frame()
    assert list(frame.columns) == ["layer", "head", "effect", "metric"] and len(frame) == 8
    assert res.top(1)[0] == divmod(int(np.nanargmax(np.abs(res.effect))), 4)
    json.dumps(res.to_dict())


def test_last_layer_path_to_logits_is_its_activation_patch(gpt2):
    act = activation_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL)
    path = path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL)
    assert np.allclose(path.effect[1], act.effect[1], atol=1e-5)
    assert not np.allclose(path.effect[0], act.effect[0], atol=1e-3)  # layer 0 also acts through layer 1's heads


def _by_hand(model, sender, receivers_read_patched: bool):
    """Path patching of sender ``(0, h)`` in a 2-layer GPT-2, computed block by block from the modules."""
    tf, (b0, b1) = model.transformer, model.transformer.h
    n = CLEAN["input_ids"].shape[1]
    mask = CORRUPT["attention_mask"].bool()
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :]  # (B, 1, Q, K)

    def attn(block, x):
        return block.attn(x, attention_mask=causal)[0]

    with torch.no_grad():
        rec = {}
        for name, inputs in (("clean", CLEAN), ("corrupt", CORRUPT)):
            ed = Edits(record_z={})
            run(model, inputs, ed)
            rec[name] = ed.record_z[0][:, :, sender[1]]  # (B, N, dh)
        h0 = tf.wte(CORRUPT["input_ids"]) + tf.wpe(torch.arange(n))
        mid0 = h0 + attn(b0, b0.ln_1(h0))
        h1 = mid0 + b0.mlp(b0.ln_2(mid0))
        w_o = b0.attn.c_proj.weight.view(4, 8, 32)[sender[1]]  # (dh, d)
        mid0_p = mid0 + (rec["clean"] - rec["corrupt"]) @ w_o
        h1_p = mid0_p + b0.mlp(b0.ln_2(mid0_p))  # the MLP recomputes on the patched residual
        if receivers_read_patched:  # every layer-1 head reads q, k, v from h1_p; the skip path carries h1
            mid1 = h1 + attn(b1, b1.ln_1(h1_p))
        else:  # to the logits: layer-1 heads frozen at their corrupted outputs
            mid1 = h1_p + attn(b1, b1.ln_1(h1))
        h2 = mid1 + b1.mlp(b1.ln_2(mid1))
        plain = tf.ln_f(h1 + attn(b1, b1.ln_1(h1)) + b1.mlp(b1.ln_2(h1 + attn(b1, b1.ln_1(h1)))))
        assert torch.allclose(model.lm_head(plain), model(**CORRUPT).logits, atol=1e-4)  # the hand forward is right
        logits = model.lm_head(tf.ln_f(h2))
    return float(logit_diff(logits, CORRUPT, torch.tensor([TARGET] * 2), torch.tensor([FOIL] * 2)).mean())


@pytest.mark.parametrize("to_receivers", [False, True])
def test_path_patching_matches_a_hand_computation(gpt2, to_receivers):
    sender = (0, 2)
    receivers = [(1, h) for h in range(4)] if to_receivers else []
    res = path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, senders=[sender], receivers=receivers)
    assert res.metric[sender] == pytest.approx(_by_hand(gpt2, sender, to_receivers), abs=1e-4)
    assert np.isnan(res.metric[1]).all() and np.isnan(res.metric[0, :2]).all()


def test_path_patching_to_one_receivers_query(gpt2):
    res = path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, receivers=[(1, 3)], receiver_inputs="q")
    assert res.receivers == ((1, 3),) and res.receiver_inputs == "q"
    assert np.isnan(res.effect[1]).all() and np.isfinite(res.effect[0]).all()
    last = torch.zeros_like(CLEAN["attention_mask"], dtype=torch.bool)
    last[torch.arange(2), last_positions(CLEAN)] = True
    only_last = path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, receivers=[(1, 3)], receiver_inputs="q",
                              positions=last)
    # the query is only read at the last position for the final logits of a 2-layer model
    assert np.allclose(only_last.effect[0], res.effect[0], atol=1e-5)


def test_bad_requests_name_the_fix(gpt2):
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(gpt2, CLEAN, {"input_ids": CLEAN["input_ids"][:, :5]}, TARGET, FOIL)
    with pytest.raises(ValueError, match="same logit difference"):
        activation_patching(gpt2, CLEAN, CLEAN, TARGET, FOIL)
    with pytest.raises(ValueError, match="direction must be one of"):
        activation_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, direction="sideways")
    with pytest.raises(ValueError, match="receiver_inputs must be letters"):
        path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, receivers=[(1, 0)], receiver_inputs="x")
    with pytest.raises(ValueError, match="outside the model"):
        path_patching(gpt2, CLEAN, CORRUPT, TARGET, FOIL, receivers=[(5, 0)])


def test_llama_type_models_patch_too(tiny_dir):
    from attnlab.zoo import load

    model, _, _ = load(str(tiny_dir("llama")))
    rec = Edits(record_z={})
    clean_logits = run(model, CLEAN, rec)
    every = {layer: (z, torch.ones(4, dtype=torch.bool)) for layer, z in rec.record_z.items()}
    assert torch.allclose(_final(run(model, CORRUPT, Edits(z=every))), _final(clean_logits), atol=1e-5)
    res = activation_patching(model, CLEAN, CORRUPT, TARGET, FOIL)
    assert np.isfinite(res.effect).all()
    with pytest.raises(ValueError, match="one key/value head per query head"):
        path_patching(model, CLEAN, CORRUPT, TARGET, FOIL, receivers=[(1, 0)])


def test_abc_corruption_and_single_tokens(tiny_dir):
    from attnlab.zoo import load
    from attnlab.zoo.toy_gpt import IOIPrompt

    p = IOIPrompt("When Mary and John went to the store , John gave a drink to", io="Mary", s="John")
    (out,) = abc_corruption([p], ["Mary", "John", "Ann", "Bob", "Cid"], seed=0)
    words = out.split(" ")
    names = [words[1], words[3], words[9]]
    assert sorted(names) == ["Ann", "Bob", "Cid"] and words[4:9] == p.text.split(" ")[4:9]
    _, tok, _ = load(str(tiny_dir("gpt2")))
    assert single_token_id(tok, "cat") == tok.convert_tokens_to_ids("cat")
    with pytest.raises(ValueError, match="not a single token"):
        single_token_id(tok, "zebra")


def test_patch_cli(tiny_dir):
    import typer

    from attnlab.cli.circuits_cmd import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into `patch`
        pass

    ckpt = str(tiny_dir("gpt2"))
    runner = CliRunner()
    args = ["patch", "--model", ckpt, "--clean", "the cat sat on the", "--corrupt", "a dog sat on the", "--target", "mat"]
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert np.asarray(data["effect"]).shape == (2, 4) and data["target"] == "mat" and data["foil"] != "mat"
    res = runner.invoke(app, args + ["--foil", "red"])
    assert res.exit_code == 0 and "logit(mat) - logit(red)" in res.stdout and "layer" in res.stdout
    res = runner.invoke(app, args[:-1] + ["zebra"])
    assert res.exit_code == 2 and "'zebra' is not a single token" in res.stderr
    res = runner.invoke(app, ["patch", "--model", ckpt, "--clean", "the cat sat", "--corrupt", "a dog", "--target", "mat"])
    assert res.exit_code == 2 and "same shape" in res.stderr


@pytest.mark.slow  # importing TransformerLens alone takes ~15 s
def test_transformer_lens_hook_z_patching_agrees_with_hugging_face(tiny_dir):
    bridge_mod = pytest.importorskip("transformer_lens.model_bridge")
    from transformers import AutoModelForCausalLM

    path = str(tiny_dir("gpt2"))
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    bridge = bridge_mod.TransformerBridge.boot_transformers(path, device="cpu")
    clean, corrupt = {"input_ids": CLEAN["input_ids"][:1]}, {"input_ids": CORRUPT["input_ids"][:1]}
    ours, theirs = (activation_patching(m, clean, corrupt, TARGET, FOIL) for m in (hf, bridge))
    assert ours.clean == pytest.approx(theirs.clean, abs=1e-5)
    assert np.allclose(ours.effect, theirs.effect, atol=1e-4)
    with pytest.raises(ValueError, match="only head outputs"):
        path_patching(bridge, clean, corrupt, TARGET, FOIL, receivers=[(1, 0)])
