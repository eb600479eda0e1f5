"""Encoder-decoder models (T5, BART, Whisper): three Traces, each against Hugging Face's eager attention.

The oracle is the eager model's ``encoder_attentions``, ``decoder_attentions`` and ``cross_attentions``; the
invariances are capture on/off (logits), padding (each item of a padded batch equals the item captured alone) and
generation (tokens unchanged). The CLI path of T5 and BART is in ``test_coverage_matrix.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.capture import Capture
from attnlab.core.runs import Run, RunInfo, save_run
from attnlab.hooks import attach
from attnlab.hooks.hf_stacks import find_stacks
from attnlab.hooks.inputs import decoder_inputs, prepare_inputs
from attnlab.probes.flow import attention_flow
from attnlab.probes.head_scores import induction_scores, previous_token_scores
from attnlab.probes.registry import runnable
from attnlab.probes.rollout import attention_rollout
from attnlab.probes.sinks import sink_tokens
from attnlab.zoo import load
from attnlab.zoo.tiny import save_tiny

TEXTS = ["the cat sat on the mat .", "a dog"]
STACKS = {"main": "decoder_attentions", "encoder": "encoder_attentions", "cross": "cross_attentions"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = load(str(save_tiny(family, tmp_path_factory.mktemp(family) / "ckpt")))
        return built[family]

    return get


def _audio_inputs(proc, n: int = 2) -> dict:
    audio = [np.random.RandomState(i).randn(16000 - 3000 * i).astype("float32") for i in range(n)]
    features = proc.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    dec = proc.tokenizer(["the cat", "a dog is red"][:n], return_tensors="pt", padding=True)
    return dict(input_features=features, decoder_input_ids=dec.input_ids, decoder_attention_mask=dec.attention_mask)


def _inputs(family: str, proc, spec, texts=TEXTS) -> dict:
    return _audio_inputs(proc, len(texts)) if family == "whisper" else prepare_inputs(proc, spec, texts)


def _tokenizer(family: str, proc):
    return proc.tokenizer if family == "whisper" else proc


def _capture(model, proc, family, inputs, capture=None):
    with torch.no_grad(), attach(model, capture or Capture(pattern=True, stats=True),
                                 tokenizer=_tokenizer(family, proc)) as rec:
        logits = model(**inputs).logits
    return rec.trace(), logits


def _eager(model, inputs):
    eager = type(model).from_pretrained(model.config._name_or_path, attn_implementation="eager").eval()
    with torch.no_grad():
        return eager(**inputs, output_attentions=True)


def _nested(trace, name):
    return trace if name == "main" else getattr(trace, name)


def _max_diff(trace, reference) -> float:
    """Largest |pattern - eager| over every layer, on real query rows."""
    worst = 0.0
    for i, ref in enumerate(reference):
        pattern = trace.layer(i).pattern  # (B, H, Q, K)
        assert pattern.shape == ref.shape
        rows = trace.token_mask[:, None, :, None].expand_as(pattern)
        worst = max(worst, float((pattern[rows] - ref[rows]).abs().max()))
    return worst


def test_stacks_are_named_by_role():
    """A decoder block holds self- and cross-attention; they are two stacks, not a refusal."""
    import transformers as tf

    from attnlab.zoo.tiny import TINY_WORDS, encoder_decoder_config
    from attnlab.zoo.tokenizers import word_tokenizer

    model = tf.T5ForConditionalGeneration(encoder_decoder_config("t5", word_tokenizer(TINY_WORDS)))
    stacks = {s.name: s for s in find_stacks(model)}
    assert set(stacks) == {"main", "encoder", "cross"}
    assert stacks["encoder"].prefix == "encoder.block" and stacks["main"].prefix == "decoder.block"
    assert stacks["cross"].attn_names[1] == "decoder.block.1.layer.1.EncDecAttention"
    assert (stacks["cross"].role, stacks["main"].role) == ("cross", "self")


@pytest.mark.parametrize("family", ["t5", "bart", "whisper"])
def test_three_traces_match_hf_eager_and_logits_are_unchanged(family, tiny):
    model, proc, spec = tiny(family)
    inputs = _inputs(family, proc, spec)
    with torch.no_grad():
        base = model(**inputs).logits
    trace, logits = _capture(model, proc, family, inputs)
    out = _eager(model, inputs)
    for name, field in STACKS.items():
        assert _max_diff(_nested(trace, name), getattr(out, field)) <= 1e-5, name
    live = trace.token_mask  # (B, Q): outputs at padded decoder positions are not compared
    assert (logits - base).abs()[live].max() <= 1e-5
    assert trace.meta.causal and not trace.encoder.meta.causal and not trace.cross.meta.causal
    cross = trace.cross
    assert cross.tokens == trace.tokens and cross.key_tokens == trace.encoder.tokens
    assert torch.equal(cross.key_mask, trace.encoder.token_mask)
    if family == "whisper":
        assert trace.encoder.tokens[0][:2] == ["frame 0", "frame 1"]
        assert [s.kind for s in trace.encoder.segments[0]] == ["audio"]
    else:
        assert trace.encoder.tokens[1][:3] == ["<bos>", "a", "dog"] and not trace.encoder.token_mask[1, -1]


@pytest.mark.parametrize("family", ["t5", "bart", "whisper"])
def test_cross_statistics_are_those_of_the_eager_pattern(family, tiny):
    """entropy, max, received (over real decoder rows) and mass on the encoder's text from the eager cross map."""
    model, proc, spec = tiny(family)
    inputs = _inputs(family, proc, spec)
    trace, _ = _capture(model, proc, family, inputs, Capture(stats=True))
    out = _eager(model, inputs)
    rows = trace.token_mask  # (B, Q)
    text = trace.cross.key_side().key_set("text")  # (B, K)
    for i, p in enumerate(out.cross_attentions):  # (B, H, Q, K)
        st = trace.cross.layer(i).stats
        live = rows[:, None, :].expand(p.shape[:3])
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        assert (st["entropy"][live] - entropy[live]).abs().max() <= 1e-5
        assert (st["max"][live] - p.amax(-1)[live]).abs().max() <= 1e-5
        received = (p * rows[:, None, :, None]).sum(-2)  # (B, H, K)
        assert st["received"].shape == received.shape and (st["received"] - received).abs().max() <= 1e-5
        mass = (p * text[:, None, None, :]).sum(-1)
        assert (st["mass.text"][live] - mass[live]).abs().max() <= 1e-5


@pytest.mark.parametrize("family,side", [("t5", "right"), ("t5", "left"), ("bart", "right")])
def test_a_padded_batch_gives_each_item_what_it_gives_alone(family, side, tiny):
    """Encoder padding masks cross-attention's keys; decoder padding its queries (BART's absolute positions shift
    under left padding in Hugging Face itself, so BART is checked right-padded)."""
    model, tok, spec = tiny(family)
    tok.padding_side = side
    try:
        batch, _ = _capture(model, tok, family, prepare_inputs(tok, spec, TEXTS))
        for b, text in enumerate(TEXTS):
            alone, _ = _capture(model, tok, family, prepare_inputs(tok, spec, [text]))
            item = batch.item(b)
            for name in STACKS:
                got, want = _nested(item, name), _nested(alone, name)
                assert got.tokens == want.tokens and got.key_tokens == want.key_tokens, name
                for i in want.layers:
                    assert (got.layer(i).pattern - want.layer(i).pattern).abs().max() <= 1e-5, (name, i)
                    for stat, value in want.layer(i).stats.items():
                        assert (got.layer(i).stats[stat] - value).abs().max() <= 1e-5, (name, i, stat)
    finally:
        tok.padding_side = "right"


def test_a_whisper_batch_gives_each_recording_what_it_gives_alone(tiny):
    """Recordings of different lengths (the extractor pads each to the window) and decoder texts of different
    lengths (right-padded): every stack of each item equals the recording captured alone."""
    model, proc, spec = tiny("whisper")
    waves = [np.random.RandomState(i).randn(16000 - 5000 * i).astype(np.float32) * 0.3 for i in range(2)]
    texts = ["the cat sat on the mat", "a dog"]
    batch, _ = _capture(model, proc, "whisper", prepare_inputs(proc, spec, texts, audio=waves))
    for b in range(2):
        alone, _ = _capture(model, proc, "whisper", prepare_inputs(proc, spec, texts[b:b + 1], audio=waves[b:b + 1]))
        item = batch.item(b)
        for name in STACKS:
            got, want = _nested(item, name), _nested(alone, name)
            assert got.tokens == want.tokens, name
            for i in want.layers:
                assert (got.layer(i).pattern - want.layer(i).pattern).abs().max() <= 1e-5, (name, i)
                for stat, value in want.layer(i).stats.items():
                    assert (got.layer(i).stats[stat] - value).abs().max() <= 1e-5, (name, i, stat)


def test_runs_keep_the_key_side(tiny, tmp_path):
    model, tok, spec = tiny("t5")
    trace, _ = _capture(model, tok, "t5", prepare_inputs(tok, spec, TEXTS))
    save_run(tmp_path / "run", {"main": trace}, RunInfo(model={"name": "t5"}))
    run = Run.open(tmp_path / "run")
    assert run.trace_names == ["main", "main.encoder", "main.cross"]
    back = run.trace("main")
    assert back.cross.key_tokens == trace.cross.key_tokens and back.cross.key_segments == trace.cross.key_segments
    assert torch.equal(back.cross.key_mask, trace.cross.key_mask) and back.encoder.key_mask is None
    assert torch.equal(back.cross.layer(1).pattern, trace.cross.layer(1).pattern)
    one = run.trace("main.cross", item=1)
    assert one.key_tokens == [trace.cross.key_tokens[1]] and one.layer(0).pattern.shape[-1] == len(one.key_tokens[0])
    assert torch.equal(back.item(1).cross.layer(0).pattern, trace.item(1).cross.layer(0).pattern)


def test_square_probes_refuse_cross_attention_and_sinks_read_the_encoder(tiny):
    model, tok, spec = tiny("bart")
    trace, _ = _capture(model, tok, "bart", prepare_inputs(tok, spec, TEXTS))
    for probe in (attention_rollout, attention_flow, induction_scores, previous_token_scores):
        with pytest.raises(ValueError, match=r"needs self-attention.*cross-attention Trace.*trace\.encoder"):
            probe(trace.cross)
    attention_rollout(trace.encoder)  # the encoder's and decoder's own Traces are square
    assert "rollout" not in runnable(["pattern"], cross=True) and "sinks" in runnable(["pattern"], cross=True)
    sinks = sink_tokens(trace.cross, rule="act", threshold=0.0)
    rows, keys = trace.token_mask, trace.cross.key_mask  # (B, Q), (B, K)
    out = _eager(model, prepare_inputs(tok, spec, TEXTS))
    for j, p in enumerate(out.cross_attentions):  # every real decoder query sees every real encoder key
        expected = (p * rows[:, None, :, None]).sum(-2) / rows.sum(-1)[:, None, None]  # (B, H, K)
        expected = expected * keys[:, None, :]
        assert np.abs(sinks.scores[j] - expected.numpy()).max() <= 1e-5
    assert sinks.tokens == trace.cross.key_tokens and sinks.categories[1][-1] == ""  # the encoder's padding


@pytest.mark.parametrize("family", ["t5", "bart", "whisper"])
def test_generation_is_unchanged_and_each_step_is_a_pass(family, tiny):
    model, proc, spec = tiny(family)
    inputs = _inputs(family, proc, spec)
    inputs = {k: v for k, v in inputs.items() if not k.startswith("decoder")}
    kwargs = dict(max_new_tokens=3, do_sample=False, min_new_tokens=3)
    with torch.no_grad():
        plain = model.generate(**inputs, **kwargs)
        with attach(model, Capture(pattern=True), tokenizer=_tokenizer(family, proc)) as rec:
            captured = model.generate(**inputs, **kwargs)
    assert torch.equal(plain, captured)
    assert len(rec.traces("encoder")) == 1 and len(rec.traces("cross")) == len(rec.traces()) >= 3
    n_keys = rec.trace().encoder.n_tokens
    assert all(t.layer(0).pattern.shape[-2:] == (1, n_keys) for t in rec.traces("cross"))


def test_cli_captures_speech_from_wav_and_npy_files_as_eager_does(tiny, tmp_path):
    """``--audio``: a 16-bit PCM .wav (written by scipy, an independent writer) and a .npy waveform; the decoder reads
    each --text teacher-forced. Oracle: HF eager on features the model's own extractor makes from the same samples."""
    from scipy.io import wavfile

    model, proc, spec = tiny("whisper")
    rng = np.random.RandomState(0)
    pcm = (rng.randn(12000) * 6000).clip(-32768, 32767).astype(np.int16)
    wavfile.write(tmp_path / "a.wav", 16000, pcm)
    wave_b = rng.randn(9000).astype(np.float32) * 0.2
    np.save(tmp_path / "b.npy", wave_b)
    args = ["capture", "--model", spec.path, "--audio", str(tmp_path / "a.wav"), "--audio", str(tmp_path / "b.npy"),
            "--text", "the cat", "--text", "a dog is red", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    trace = Run.open(tmp_path / "run").trace("main")
    features = proc.feature_extractor([pcm.astype(np.float32) / 32768.0, wave_b], sampling_rate=16000,
                                      return_tensors="pt").input_features
    inputs = dict(input_features=features,
                  **decoder_inputs(*proc.tokenizer(["the cat", "a dog is red"], return_tensors="pt",
                                                   padding=True).values(), spec.decoder_start_token_id))
    eager = _eager(model, inputs)
    for name, field in STACKS.items():
        assert _max_diff(_nested(trace, name), getattr(eager, field)) <= 1e-5, name
    assert trace.encoder.tokens[0][:2] == ["frame 0", "frame 1"]


def test_cli_speech_input_errors_name_the_flag_and_the_fix(tiny, tmp_path):
    from scipy.io import wavfile

    spec = tiny("whisper")[2]
    run = tmp_path / "r"

    def fails(*args) -> str:
        result = CliRunner().invoke(app, ["capture", "--model", spec.path, *args, "--out", str(run)])
        assert result.exit_code == 2 and not run.exists(), result.output
        return result.output

    assert "give --audio FILE" in fails("--text", "a cat")
    wavfile.write(tmp_path / "slow.wav", 8000, np.zeros(800, dtype=np.int16))
    assert "8000 Hz" in fails("--audio", str(tmp_path / "slow.wav")) and "16000 Hz" in fails(
        "--audio", str(tmp_path / "slow.wav"))
    np.save(tmp_path / "long.npy", np.zeros(3 * 16000, dtype=np.float32))  # the tiny model's window is 1 s
    assert "longer than the model's 1 s window" in fails("--audio", str(tmp_path / "long.npy"))
    assert "one --text per --audio" in fails("--audio", str(tmp_path / "long.npy"), "--text", "a", "--text", "b")
    assert "takes no audio" in CliRunner().invoke(app, ["capture", "--model", tiny("t5")[2].path, "--text", "a cat",
                                                        "--audio", str(tmp_path / "long.npy"), "--out",
                                                        str(run)]).output


def test_decoder_inputs_shift_each_item_behind_the_start_token():
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    dec = decoder_inputs(ids, mask, 1)
    assert dec["decoder_input_ids"].tolist() == [[1, 5, 6, 7], [0, 0, 1, 9]]
    assert torch.equal(dec["decoder_attention_mask"], mask)
