"""The coverage matrix: every architecture of docs/models.md, as a tiny random checkpoint saved to disk.

Each captured architecture goes through the CLI (``attnlab capture --model DIR``) and its patterns must
equal Hugging Face's eager ``output_attentions`` (the independent oracle) within 1e-5; through the API,
capturing must leave the model's outputs unchanged. Each refused architecture must be refused when
``attach`` starts, naming the attention module and the reason docs/models.md gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.capture import Capture
from attnlab.core.runs import Run
from attnlab.hooks import attach
from attnlab.hooks.hf_stacks import kernel_score_terms
from attnlab.hooks.inputs import prepare_inputs, tokenizer_of
from attnlab.zoo import load, peek
from attnlab.zoo.tiny import TINY_WORDS, _image_processor, save_tiny
from attnlab.zoo.tokenizers import word_tokenizer

TEXTS = ["the cat sat on the mat .", "a dog"]
TOK = word_tokenizer(TINY_WORDS, extra_special=["<image>"])
IDS = dict(pad_token_id=TOK.pad_token_id, bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id)
T = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
         max_position_embeddings=64, **IDS)
V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
         patch_size=8)
GQA = dict(num_key_value_heads=2)

#: architecture -> (model class, config factory); text checkpoints get the word tokenizer, vision ones a processor
TEXT = {
    "gpt2": ("GPT2LMHeadModel", lambda: tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                       n_positions=64, **IDS)),
    "llama": ("LlamaForCausalLM", lambda: tf.LlamaConfig(**T, **GQA)),
    "mistral": ("MistralForCausalLM", lambda: tf.MistralConfig(**T, **GQA, sliding_window=4)),
    "qwen2": ("Qwen2ForCausalLM", lambda: tf.Qwen2Config(**T, **GQA)),
    "qwen3": ("Qwen3ForCausalLM", lambda: tf.Qwen3Config(**T, **GQA, head_dim=8)),
    "gemma": ("GemmaForCausalLM", lambda: tf.GemmaConfig(**T, **GQA, head_dim=8)),
    "gemma2": ("Gemma2ForCausalLM", lambda: tf.Gemma2Config(**T, **GQA, head_dim=8, sliding_window=4,
                                                            attn_logit_softcapping=None,
                                                            final_logit_softcapping=None)),
    "phi3": ("Phi3ForCausalLM", lambda: tf.Phi3Config(**T, **GQA)),
    "gpt_neox": ("GPTNeoXForCausalLM", lambda: tf.GPTNeoXConfig(**T)),
    "falcon": ("FalconForCausalLM", lambda: tf.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=4, **IDS)),
    "opt": ("OPTForCausalLM", lambda: tf.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                                                   max_position_embeddings=64, **IDS)),
    "bert": ("BertForMaskedLM", lambda: tf.BertConfig(**T)),
    "roberta": ("RobertaForMaskedLM", lambda: tf.RobertaConfig(**T)),
    "distilbert": ("DistilBertForMaskedLM", lambda: tf.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
        pad_token_id=TOK.pad_token_id)),
}
# BLOOM computes ALiBi inside BloomAttention; attach runs it through attnlab's attention (hooks/module_adapters.py)
# DeBERTa-v2/v3 computes its disentangled relative-position terms inside DisentangledSelfAttention (same mechanism)
TEXT["deberta-v2"] = ("DebertaV2Model", lambda: tf.DebertaV2Config(
    **T, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=16,
    share_att_key=True, norm_rel_ebd="layer_norm"))
TEXT["bloom"] = ("BloomForCausalLM", lambda: tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4, **IDS))
VISION = {
    "vit": ("ViTModel", lambda: tf.ViTConfig(**V)),
    "deit": ("DeiTModel", lambda: tf.DeiTConfig(**V)),
    "dinov2": ("Dinov2Model", lambda: tf.Dinov2Config(**V)),
    "dinov2_with_registers": ("Dinov2WithRegistersModel",
                              lambda: tf.Dinov2WithRegistersConfig(**V, num_register_tokens=4)),
    "clip_vision_model": ("CLIPVisionModel", lambda: tf.CLIPVisionConfig(**V)),
    "siglip_vision_model": ("SiglipVisionModel", lambda: tf.SiglipVisionConfig(**V)),
}
REFUSED = {  # architecture -> (model class, config factory, what the refusal must say)
    "falcon-alibi": ("FalconForCausalLM", lambda: tf.FalconConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                                 num_attention_heads=4, alibi=True, **IDS),
                     r"\(FalconAttention\): ALiBi position biases \(alibi=True\)"),
    "gemma2-softcap": ("Gemma2ForCausalLM", lambda: tf.Gemma2Config(**T, **GQA, head_dim=8),
                       r"'model\.layers\.0\.self_attn' \(Gemma2Attention\): attention logit soft-capping"),
}
REFUSED["t5-encoder"] = ("T5EncoderModel", lambda: tf.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                                                num_layers=2, num_heads=4, **IDS),
                         r"\(T5Attention\): its relative position bias \(Raffel et al., 2020\) needs")
# Soft-capping (Gemma 2) and additive biases (Falcon's ALiBi, T5's relative positions) are captured once the kernels
# take them, refused before.
for _arch, _term in (("gemma2-softcap", "softcap"), ("falcon-alibi", "bias"), ("t5-encoder", "bias")):
    if _term in kernel_score_terms():
        TEXT[_arch] = REFUSED.pop(_arch)[:2]
# Stays refused (a planted positive for the refusal path): an image encoder-decoder, whose cross-attention has no
# text or audio encoder stack to take its keys from.
REFUSED["vision-encoder-decoder"] = ("VisionEncoderDecoderModel", lambda: tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
    tf.ViTConfig(**V), tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, is_decoder=True,
                                     add_cross_attention=True, **IDS)),
    r"'decoder\.transformer\.h\.0\.crossattention' \(GPT2Attention\): vision-encoder-decoder has cross-attention but")
MULTI = ("clip", "llava", "paligemma", "qwen2_vl")  # qwen2_vl: tests/zoo/test_qwen2_vl.py has its vision tower
#: encoder-decoders (zoo/tiny.py): three Traces each, the decoder's (main), trace.encoder and trace.cross
ENCODER_DECODER = ("t5", "bart")
#: speech encoder-decoders: captured through the Python API (tests/zoo/test_encoder_decoder.py); the CLI has no audio
AUDIO = ("whisper",)
CAPTURED = [*TEXT, *VISION, *MULTI, *ENCODER_DECODER]


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (32, 32, 3), dtype=np.uint8))


def _save_multi(arch: str, path):
    if arch in ("llava", "qwen2_vl"):
        return save_tiny(arch, path)
    proc_img = _image_processor(32)
    if arch == "clip":
        cfg = tf.CLIPConfig(text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=64, **IDS),
                            vision_config=tf.CLIPVisionConfig(**V).to_dict(), projection_dim=16)
        model, proc = tf.CLIPModel(cfg), tf.CLIPProcessor(image_processor=proc_img, tokenizer=TOK)
    else:  # paligemma: SigLIP tower (no [CLS]) + Gemma, prefix attention over image and prompt
        image_id = TOK.convert_tokens_to_ids("<image>")
        cfg = tf.PaliGemmaConfig(vision_config=tf.SiglipVisionConfig(**V, projection_dim=32).to_dict(),
                                 text_config=dict(model_type="gemma", **T, **GQA, head_dim=8),
                                 image_token_id=image_id, projection_dim=32)
        model = tf.PaliGemmaForConditionalGeneration(cfg)
        proc_img.image_seq_length = 16  # (32 / 8)^2 patches
        tok = word_tokenizer(TINY_WORDS, extra_special=["<image>"])  # the processor adds tokens to its tokenizer
        proc = tf.PaliGemmaProcessor(image_processor=proc_img, tokenizer=tok)
    model.eval().save_pretrained(path)
    proc.save_pretrained(path)
    return path


def save_arch(arch: str, path):
    """Build, save and return the directory of a tiny random checkpoint of ``arch``."""
    torch.manual_seed(0)
    if arch in MULTI:
        return _save_multi(arch, path)
    if arch in ENCODER_DECODER or arch in AUDIO:
        return save_tiny(arch, path)
    cls_name, make = (TEXT.get(arch) or VISION.get(arch) or REFUSED[arch][:2])
    model = getattr(tf, cls_name)(make()).eval()
    model.save_pretrained(path)
    if arch in VISION:
        _image_processor(32).save_pretrained(path)
    else:
        TOK.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    built = {}

    def get(arch: str):
        if arch not in built:
            built[arch] = save_arch(arch, tmp_path_factory.mktemp(arch.replace("-", "_")) / "ckpt")
        return built[arch]

    return get


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for seed in (0, 1):
        paths.append(root / f"img{seed}.png")
        image(seed).save(paths[-1])
    return paths


def cli_args(modality: str, images) -> list[str]:
    if modality == "text":
        return [a for t in TEXTS for a in ("--text", t)]
    if modality == "vision":
        return [a for p in images for a in ("--image", str(p))]
    if modality == "vision-language":
        return ["--text", "is there a cat ?", "--image", str(images[0])]
    return [*cli_args("text", images), "--image", str(images[0])]


def api_inputs(spec, proc) -> dict:
    imgs = [image(0), image(1)]
    texts = {"text": TEXTS, "vision": [], "vision-language": ["is there a cat ?"], "text-image": TEXTS}[spec.modality]
    imgs = {"text": [], "vision": imgs, "vision-language": imgs[:1], "text-image": imgs[:1]}[spec.modality]
    return prepare_inputs(proc, spec, texts, imgs)


def outputs_of(out) -> list[torch.Tensor]:
    for name in ("logits_per_image", "logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return [getattr(out, name)]
    raise AssertionError(f"no output tensor in {type(out).__name__}")


def eager_attentions(path, cls, inputs) -> dict[str, tuple]:
    eager = cls.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager(**inputs, output_attentions=True)
    if getattr(out, "text_model_output", None) is not None:  # CLIP: a text stack and an image stack
        return {"main": out.text_model_output.attentions, "vision": out.vision_model_output.attentions}
    if getattr(out, "encoder_attentions", None) is not None:  # an encoder-decoder: the decoder's is the main stack
        return {"main": out.decoder_attentions, "encoder": out.encoder_attentions, "cross": out.cross_attentions}
    return {"main": out.attentions}


def assert_patterns_match(trace, reference) -> None:
    assert len(reference) == trace.meta.n_layers == len(trace.layers)
    for i, ref in enumerate(reference):
        pattern = trace.layer(i).pattern  # (B, H, Q, K)
        assert pattern.shape == ref.shape, f"layer {i}: {tuple(pattern.shape)} vs {tuple(ref.shape)}"
        rows = trace.token_mask[:, None, :, None].expand_as(pattern)  # padded query rows carry no meaning
        assert (pattern[rows] - ref[rows]).abs().max() <= 1e-5, f"layer {i}"


@pytest.mark.parametrize("arch", CAPTURED)
def test_cli_capture_matches_hf_eager_and_outputs_are_unchanged(arch, ckpt, image_files, tmp_path):
    path = ckpt(arch)
    model, proc, spec = load(str(path))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["capture", "--model", str(path), *cli_args(spec.modality, image_files),
                                      "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    trace = Run.open(run_dir).trace("main")
    inputs = api_inputs(spec, proc)
    reference = eager_attentions(path, type(model), inputs)
    assert_patterns_match(trace, reference["main"])
    real_rows = trace.token_mask[:, None, :, None]  # (B, 1, Q, 1): padded query rows carry no meaning
    assert trace.meta.causal == all(bool((ref.triu(1) * real_rows == 0).all()) for ref in reference["main"])
    for nested in ("vision", "encoder", "cross"):
        if nested in reference:
            assert_patterns_match(getattr(trace, nested), reference[nested])
    assert not any(ch in tok for row in trace.tokens for tok in row for ch in "ĠĊ▁")

    with torch.no_grad():
        base = outputs_of(model(**inputs))
        with attach(model, Capture(pattern=True, stats=True), tokenizer=tokenizer_of(proc)) as rec:
            captured = outputs_of(model(**inputs))
    live = rec.trace().token_mask
    for b, c in zip(base, captured):
        diff = (c - b).abs()
        if diff.dim() == 3 and diff.shape[:2] == live.shape:
            diff = diff[live]  # outputs at padded positions are not compared
        assert diff.max() <= 1e-5


@pytest.mark.parametrize("arch", list(REFUSED))
def test_refused_at_attach_time_naming_module_and_reason(arch, ckpt, image_files, tmp_path):
    path = ckpt(arch)
    image_args = [] if peek(str(path))[3] == "text" else ["--image", str(image_files[0])]
    result = CliRunner().invoke(app, ["capture", "--model", str(path), "--text", TEXTS[0], *image_args, "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "attnlab cannot capture attention module" in result.output and "docs/models.md" in result.output
    assert not (tmp_path / "run").exists()
    model = getattr(tf, REFUSED[arch][0]).from_pretrained(path).eval()
    with pytest.raises(ValueError, match=REFUSED[arch][2]):
        with attach(model, Capture(pattern=True)):
            pass


def test_vision_tokens_name_cls_distillation_registers_and_patches(ckpt):
    """DeiT leads with [CLS] and a distillation token, DINOv2-reg with [CLS] and 4 registers, SigLIP with patches."""
    expected = {"deit": ["[CLS]", "[DIST]", "patch(0,0)"], "dinov2_with_registers": ["[CLS]", "[REG0]", "[REG1]"],
                "siglip_vision_model": ["patch(0,0)", "patch(0,1)", "patch(0,2)"]}
    for arch, lead in expected.items():
        model, proc, spec = load(str(ckpt(arch)))
        with torch.no_grad(), attach(model, Capture(pattern=True)) as rec:
            model(**api_inputs(spec, proc))
        trace = rec.trace()
        assert trace.tokens[0][:3] == lead, arch
        image_seg = next(s for s in trace.segments[0] if s.kind == "image")
        assert (image_seg.end - image_seg.start, image_seg.grid) == (16, (4, 4)), arch


def test_processor_config_json_is_read(ckpt):
    """transformers 5 saves ``processor_config.json`` (CLIP, LLaVA), older versions ``preprocessor_config.json``."""
    path = ckpt("clip")
    assert (path / "processor_config.json").exists() and not (path / "preprocessor_config.json").exists()
    _, proc, spec = load(str(path))
    assert spec.modality == "text-image" and type(proc.image_processor).__name__.endswith("Pil")


def test_docs_models_lists_every_architecture_of_the_matrix():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    captured, refused = text.split("### Refused")
    for arch in [*CAPTURED, *AUDIO]:
        assert f"\n| {arch} |" in captured, arch
    for arch in REFUSED:
        assert f"\n| {arch.split('-')[0] if arch != 'deberta-v2' else arch}" in refused, arch


@pytest.mark.parametrize("arch", [a for a in ("mistral", "qwen3", "gemma2", "gemma2-softcap", "falcon-alibi", "bloom")
                                  if a in TEXT])
def test_left_padded_generation_is_unchanged_and_its_prefill_matches_eager(arch, ckpt):
    """Sliding windows, soft-capping and ALiBi under left padding and a KV cache: the tokens generated with
    capture on equal those without, and the prefill's patterns equal eager attention on the real query rows."""
    path = ckpt(arch)
    model, tok, _ = load(str(path))
    tok.padding_side = "left"
    inputs = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        with attach(model, Capture(pattern=True), tokenizer=tok) as rec:
            captured = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(plain, captured) and len(rec.traces()) == 3  # prefill + two decoding steps
    trace = rec.trace()
    assert trace.tokens[1][0] == "<pad>" and not trace.token_mask[1, 0]
    assert_patterns_match(trace, eager_attentions(path, type(model), inputs)["main"])


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "gpt2"])
def test_patch_refuses_every_encoder_and_runs_on_a_decoder(arch, ckpt):
    """Activation patching needs next-token logits: encoders are refused by what they are (bidirectional), not by
    family name, in one line before any patching."""
    result = CliRunner().invoke(app, ["patch", "--model", str(ckpt(arch)), "--clean", "the cat sat",
                                      "--corrupt", "the dog sat", "--target", "mat", "--foil", "dog", "--json"])
    if arch == "gpt2":
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and "patch needs a causal language model" in result.output
        assert "bidirectional" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("arch,terms", [("gpt2", ()), ("llama", ()), ("bert", ()), ("mistral", ("mask",)),
                                        ("gemma2-softcap", ("softcap",)), ("bloom", ("bias",))])
def test_meta_says_what_the_scores_hold_besides_q_dot_k(arch, terms, ckpt):
    """A map rebuilt from stored q and k is the applied one only for plain scaled scores: the Trace records the
    scale and names the rest (Mistral's window of 4 over the 8-token text, Gemma 2's soft-capping, BLOOM's ALiBi).
    The oracle for the scale is the model's own attention module (its ``scaling``), for the rest the config."""
    model, proc, spec = load(str(ckpt(arch)))
    with torch.no_grad(), attach(model, Capture(qk=True), tokenizer=tokenizer_of(proc)) as rec:
        model(**api_inputs(spec, proc))
    meta = rec.trace().meta
    assert meta.score_terms == terms
    module = next(m for m in model.modules() if type(m).__name__.endswith("Attention"))
    want = getattr(module, "scaling", None) or getattr(module, "inv_norm_factor", None) or meta.d_head ** -0.5
    assert meta.score_scale == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("side", ["text", "image"])
def test_full_clip_captures_texts_alone_or_images_alone(side, ckpt, image_files, tmp_path):
    """A dual encoder takes text, images or both: ``--text`` alone runs the text tower (``get_text_features``),
    ``--image`` alone the image tower, each compared with that tower's eager ``output_attentions``."""
    path = ckpt("clip")
    model, proc, _ = load(str(path))
    args = cli_args("text", image_files) if side == "text" else ["--image", str(image_files[0])]
    result = CliRunner().invoke(app, ["capture", "--model", str(path), *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    trace = Run.open(tmp_path / "run").trace("main")
    eager = type(model).from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        if side == "text":
            tokens = tokenizer_of(proc)(TEXTS, return_tensors="pt", padding=True)
            reference = eager.text_model(**tokens, output_attentions=True).attentions
        else:
            pixels = proc.image_processor(images=[image(0)], return_tensors="pt").pixel_values
            reference = eager.vision_model(pixel_values=pixels, output_attentions=True).attentions
    assert_patterns_match(trace, reference)
    assert (trace.tokens[0][0] == "patch(0,0)" or trace.tokens[0][0] == "[CLS]") == (side == "image")
