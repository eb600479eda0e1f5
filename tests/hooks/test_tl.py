"""TransformerLens backend: the same tiny weights through HF and TransformerBridge must agree.

Oracles: the Hugging Face model run eagerly (``output_attentions=True``, ``output_hidden_states=True``)
and attnlab's own HF backend for plans.
"""

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from attnlab.core.capture import Capture
from attnlab.hooks import attach, backend_of
from attnlab.hooks.recorder import Recorder
from attnlab.hooks.tl import KV_CACHE_KWARGS, attach_tl
from attnlab.kernels.plan import LayerPlan, Plan
from attnlab.zoo.tiny import save_tiny

bridge_mod = pytest.importorskip("transformer_lens.model_bridge")

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10], [1, 9, 8, 7, 6, 5, 4]])
HEAD0_OFF = Plan({0: LayerPlan(head_scale=(0.0, 1.0, 1.0, 1.0))})


def _load(family: str, root) -> tuple[nn.Module, nn.Module]:
    from transformers import AutoModelForCausalLM

    path = save_tiny(family, root / family)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(path), device="cpu")
    return hf, bridge


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _load("gpt2", tmp_path_factory.mktemp("tl"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _load("llama", tmp_path_factory.mktemp("tl"))


def _n_hooks(bridge: nn.Module) -> int:
    """Hooks left anywhere: TL hook points (its bookkeeping and torch's) plus pre-hooks on the HF model."""
    points = list(bridge.hook_points())
    tl = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in points)
    torch_level = sum(len(hp._forward_hooks) for hp in points)
    return tl + torch_level + len(bridge.original_model._forward_pre_hooks)


def test_bridge_dispatches_to_the_tl_backend(gpt2):
    assert backend_of(gpt2[1]) == "transformer_lens"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_capture_matches_hf_and_changes_nothing(family, request):
    hf, bridge = request.getfixturevalue(family)
    with torch.no_grad():
        ref = hf(IDS, output_attentions=True, output_hidden_states=True)
        base = bridge(IDS)
        with attach(bridge, Capture(pattern=True, stats=True, qk=True, resid=True)) as rec:
            logits = bridge(IDS)
    torch.testing.assert_close(base, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, base, atol=1e-5, rtol=0)
    trace = rec.trace()
    for layer in range(2):
        torch.testing.assert_close(trace.layer(layer).pattern, ref.attentions[layer], atol=1e-5, rtol=0)
        assert trace.layer(layer).q.shape == (2, 4, IDS.shape[1], 8)
    torch.testing.assert_close(trace.embeddings, ref.hidden_states[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(trace.layer(0).resid, ref.hidden_states[1], atol=1e-5, rtol=0)
    assert trace.meta.backend == "transformer_lens" and trace.meta.family == family
    assert (trace.meta.n_layers, trace.meta.n_heads, trace.meta.d_head, trace.meta.causal) == (2, 4, 8, True)
    assert trace.tokens[0] == bridge.tokenizer.convert_ids_to_tokens(IDS[0].tolist())


def test_stats_follow_the_hf_pattern(gpt2):
    hf, bridge = gpt2
    with torch.no_grad():
        ref = hf(IDS, output_attentions=True).attentions[1]  # (B, H, Q, K)
        with attach(bridge, Capture(stats=True)) as rec:
            bridge(IDS)
    stats = rec.trace().layer(1).stats
    entropy = -(ref * ref.clamp_min(1e-30).log()).sum(-1)
    torch.testing.assert_close(stats["entropy"], entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats["mass.first"], ref[..., 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(stats["received"], ref.sum(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_plan_changes_logits_as_through_hf(family, request):
    hf, bridge = request.getfixturevalue(family)
    with torch.no_grad():
        base = bridge(IDS)
        with attach(hf, plan=HEAD0_OFF):
            want = hf(IDS).logits
        with attach(bridge, plan=HEAD0_OFF):
            got = bridge(IDS)
    assert (got - base).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_right_padding_matches_hf_on_real_tokens(gpt2):
    hf, bridge = gpt2
    ids = IDS.clone()
    ids[1, -2:] = bridge.tokenizer.pad_token_id
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, output_attentions=True)
        with attach(bridge, Capture(pattern=True)) as rec:
            logits = bridge(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref.logits[real], atol=1e-5, rtol=0)
    pattern = rec.trace().layer(0).pattern.transpose(1, 2)[real]  # (real queries, H, K)
    torch.testing.assert_close(pattern, ref.attentions[0].transpose(1, 2)[real], atol=1e-5, rtol=0)
    assert rec.trace().token_mask.equal(real)
    assert [s.kind for s in rec.trace().segments[1]] == ["special", "text", "pad"]


def test_hooks_removed_after_block_and_after_errors(gpt2):
    _, bridge = gpt2
    assert _n_hooks(bridge) == 0
    with attach(bridge, Capture(stats=True, resid=True)):
        assert _n_hooks(bridge) > 0
        bridge(IDS)
    assert _n_hooks(bridge) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with attach(bridge, plan=HEAD0_OFF):
            bridge(IDS)
            raise RuntimeError("boom")
    assert _n_hooks(bridge) == 0
    with torch.no_grad():
        torch.testing.assert_close(bridge(IDS), gpt2[0](IDS).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_kwarg", KV_CACHE_KWARGS)
def test_kv_cached_pass_fails_loudly_and_cleans_up(gpt2, cache_kwarg):
    hf, bridge = gpt2
    with torch.no_grad():
        kv = DynamicCache(config=hf.config)
        hf(IDS[:, :4], use_cache=True, **{cache_kwarg: kv})
        assert kv.get_seq_length() == 4  # the HF model filled the cache under this keyword
        with pytest.raises(ValueError, match=f"KV cache .`{cache_kwarg}=`"):
            with attach(bridge, Capture(stats=True)):
                bridge(IDS[:, 4:5], **{cache_kwarg: kv})
    assert _n_hooks(bridge) == 0


def test_non_bridge_is_rejected_with_the_fix():
    rec = Recorder(Capture(stats=True), None)
    with pytest.raises(TypeError, match="boot_transformers"):
        with attach_tl(nn.Linear(2, 2), rec):
            pass


def _tiny_bridge(family: str, root) -> tuple[nn.Module, nn.Module]:
    """A tiny random checkpoint of ``family`` (GPT-NeoX, Phi-3, OPT), saved with the tiny GPT-2's tokenizer, loaded
    as the HF model (eager) and booted as a TransformerBridge."""
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(save_tiny("gpt2", root / "gpt2-tok"))
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64)
    configs = {"gpt_neox": ("GPTNeoXForCausalLM", lambda: tf.GPTNeoXConfig(**text)),
               "phi3": ("Phi3ForCausalLM", lambda: tf.Phi3Config(**text, pad_token_id=0)),
               "opt": ("OPTForCausalLM", lambda: tf.OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                              num_attention_heads=4, ffn_dim=64,
                                                              max_position_embeddings=64, word_embed_proj_dim=32))}
    cls, make = configs[family]
    torch.manual_seed(0)
    path = root / family
    getattr(tf, cls)(make()).save_pretrained(path)
    tok.save_pretrained(path)
    hf = getattr(tf, cls).from_pretrained(path, attn_implementation="eager").eval()
    return hf, bridge_mod.TransformerBridge.boot_transformers(str(path), device="cpu")


def test_weights_give_lse_only_when_their_queries_and_keys_reproduce_them():
    """The derivation behind a generic bridge's lse, against the textbook: with the scores' own q and k it gives
    logsumexp, -sum p log p and the row maxima, with left and right padding and a row whose anchor key weighs
    under float32's normal range (its largest weight is used instead); with a position bias the q.k map lacks (a
    planted mismatch) it refuses."""
    from attnlab.hooks.bridge_scores import weight_rows
    from attnlab.kernels.reference import softmax_row_stats

    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 3, 5, 8, generator=gen), torch.randn(2, 3, 7, 8, generator=gen)
    scale = 8 ** -0.5
    s = (scale * q @ k.transpose(-1, -2)).double()
    s[1, :, :, 5:] = float("-inf")  # item 1's last two keys are padding
    s[0, :, :, :2] = float("-inf")  # item 0's first two are (left padding): its anchor is key 2
    s[0, 1, 3, 2] -= 120.0  # there it weighs ~1e-53 on one row: that row falls back to its largest weight
    p = torch.softmax(s, -1).float()
    assert p[0, 1, 3, 2] == 0
    anchor, p_anchor, dead, spread, p_max = weight_rows(p, (q, k, scale))
    torch.testing.assert_close(p_max, p.amax(-1), atol=0, rtol=0)
    lse, entropy = softmax_row_stats(anchor, p_anchor, dead, spread)
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy.double(), -(torch.softmax(s, -1) * torch.log_softmax(s, -1)).nan_to_num().sum(-1),
                               atol=1e-5, rtol=0)
    biased = torch.softmax(s + torch.arange(7.0, dtype=torch.float64) * 0.3, -1).float()  # ALiBi-like, not in q.k
    assert weight_rows(biased, (q, k, scale)) is None and weight_rows(p, None) is None


@pytest.mark.parametrize("family", ["gpt_neox", "phi3", "opt"])
def test_bridges_without_qk_hook_points_capture_from_their_own_attention(family, tmp_path, monkeypatch):
    """GPT-NeoX, Phi-3 and OPT bridges (whose hook_q/hook_k are not what reaches the softmax) capture patterns,
    statistics and head outputs from the attention the bridge computed (OPT fires hook_pattern after hook_z), with
    no second attention pass: the statistics equal those attnlab's kernels give on the same weights through the
    HF backend; queries and keys, and plans, are refused with the reason."""
    from attnlab.hooks import recorder as recorder_mod

    hf, bridge = _tiny_bridge(family, tmp_path)
    ids = IDS[:, 1:]
    # OPT's generic AttentionBridge hands the weights to hook_attn_scores; its lse and entropy come from its hook_q
    # and hook_k, which reproduce those weights (hooks/bridge_scores.py)
    stats = True
    with torch.no_grad():
        ref = hf(ids, output_attentions=True)
        with attach(hf, Capture(stats=stats)) as hf_rec:
            hf(ids)
        base = bridge(ids)
        with monkeypatch.context() as m:  # the bridge's own attention only: attnlab's must not run
            m.setattr(recorder_mod.Recorder, "attend", lambda *a, **k: pytest.fail("attention computed twice"))
            with attach(bridge, Capture(pattern=True, stats=stats, head_out=True)) as rec:
                logits = bridge(ids)
    torch.testing.assert_close(logits, base, atol=0, rtol=0)
    trace, want = rec.trace(), hf_rec.trace()
    assert sorted(trace.layers) == [0, 1] and trace.meta.causal
    for layer in range(2):
        torch.testing.assert_close(trace.layer(layer).pattern, ref.attentions[layer], atol=1e-5, rtol=0)
        assert trace.layer(layer).head_out.shape == (2, 4, ids.shape[1], 8)
        got = trace.layer(layer).stats
        assert set(got) == set(want.layer(layer).stats)
        for name, value in want.layer(layer).stats.items():
            torch.testing.assert_close(got[name], value, atol=2e-5, rtol=1e-5, msg=f"{family} {layer} {name}")
    with pytest.raises(ValueError, match="queries and keys \\(qk\\) needs"):
        with attach(bridge, Capture(qk=True)):
            pass
    with pytest.raises(ValueError, match="which a plan needs"):
        with attach(bridge, plan=HEAD0_OFF):
            pass


def test_minilm_bridge_gives_every_statistic_equal_to_the_hf_backend():
    """MiniLM's BERT bridge hands weights to hook_attn_scores; lse and the entropy come from its hook_q/hook_k and
    equal what attnlab's kernels give on the Hugging Face model (the real pretrained weights)."""
    from attnlab.zoo import load
    from attnlab.zoo.minilm import minilm_dir

    bridge = bridge_mod.TransformerBridge.boot_transformers(str(minilm_dir()), device="cpu")
    model, tok, _ = load("minilm")
    ids = tok(["The cat sat on the mat, and the dog watched it."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with attach(bridge, Capture(stats=True)) as got:
            bridge(ids)
        with attach(model, Capture(stats=True), tokenizer=tok) as want:
            model(input_ids=ids)
    for layer in range(6):
        for name in ("lse", "entropy", "max", "received"):
            torch.testing.assert_close(got.trace().layer(layer).stats[name], want.trace().layer(layer).stats[name],
                                       atol=1e-5, rtol=1e-5, msg=f"layer {layer} {name}")
