"""Tiny random checkpoints of every supported family, saved in Hugging Face format.

They exist so that loading and capture code paths are exercised on real architectures without
downloading anything: tests, notebooks and benchmarks save one to a directory and load it back
through :func:`attnlab.zoo.load`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizers import word_tokenizer

TINY_FAMILIES = ("gpt2", "llama", "bert", "vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "llava",
                 "t5", "bart", "whisper", "qwen2_vl")
#: Whisper's tiny audio front end: 8 mel bins, 16 encoder positions = 32 feature frames of 500 samples at 16 kHz
TINY_WHISPER = dict(num_mel_bins=8, max_source_positions=16, max_target_positions=32, sampling_rate=16000,
                    hop_length=500, chunk_length=1)
TINY_WORDS = tuple("the a cat dog sat on mat red blue circle square is there in image yes no . , ?".split())


def _save_text(model, path: Path, tok) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _vision_config(family: str, image_size: int, patch: int):
    from transformers import CLIPVisionConfig, Dinov2Config, Dinov2WithRegistersConfig, ViTConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=image_size, patch_size=patch)
    if family == "vit":
        return ViTConfig(**common)
    if family == "dinov2":
        return Dinov2Config(**common)
    if family == "dinov2_with_registers":
        return Dinov2WithRegistersConfig(**common, num_register_tokens=4)
    return CLIPVisionConfig(**common, projection_dim=32)


def _image_processor(image_size: int):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    # Pillow-only processor: the torchvision backend does not import beside the CPU torch build.
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def save_tiny(family: str, path: str | Path, seed: int = 0, image_size: int = 32, patch: int = 8) -> Path:
    """Build a tiny random model of ``family`` and save it (with tokenizer / processor) to ``path``.

    Args:
        family: one of :data:`TINY_FAMILIES`.
        path: target directory.
        seed: torch seed for the random weights.
        image_size: image side for vision families; ``patch`` the patch side.

    Returns:
        The directory.
    """
    from transformers import (AutoModel, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)

    path = Path(path)
    torch.manual_seed(seed)
    if family not in TINY_FAMILIES:
        raise ValueError(f"Unknown tiny family {family!r}; choose from {TINY_FAMILIES}")
    if family == "gpt2":
        tok = word_tokenizer(TINY_WORDS)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return _save_text(GPT2LMHeadModel(cfg).eval(), path, tok)
    if family == "llama":
        tok = word_tokenizer(TINY_WORDS)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return _save_text(LlamaForCausalLM(cfg).eval(), path, tok)
    if family == "bert":
        tok = word_tokenizer(TINY_WORDS)
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
        return _save_text(BertModel(cfg).eval(), path, tok)
    if family == "llava":
        return _save_tiny_llava(path, image_size, patch)
    if family == "qwen2_vl":
        return _save_tiny_qwen2_vl(path, patch)
    if family in ("t5", "bart", "whisper"):
        return save_tiny_encoder_decoder(family, path)
    model = AutoModel.from_config(_vision_config(family, image_size, patch)).eval()
    model.save_pretrained(path)
    _image_processor(image_size).save_pretrained(path)
    return path


def _save_tiny_llava(path: Path, image_size: int, patch: int) -> Path:
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = word_tokenizer(TINY_WORDS, extra_special=["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    text_cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vis_cfg = _vision_config("clip_vision_model", image_size, patch)
    cfg = LlavaConfig(vision_config=vis_cfg.to_dict(), text_config=text_cfg.to_dict(), image_token_id=image_id,
                      vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg).eval()
    proc = LlavaProcessor(image_processor=_image_processor(image_size), tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def _save_tiny_qwen2_vl(path: Path, patch: int) -> Path:
    """A Qwen2-VL-type LVLM (Wang et al., 2024): a packed, RoPE vision tower whose 2x2 patch merger gives a variable
    number of image tokens, and a Qwen2 decoder with multimodal RoPE; its processor is attnlab's
    :class:`~attnlab.zoo.patch_merge_processor.PatchMergeProcessor` (images of 32-64 pixels a side)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .patch_merge_processor import PatchMergeProcessor

    markers = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = word_tokenizer(TINY_WORDS, extra_special=["<image>", *markers])
    ids = {m: tok.convert_tokens_to_ids(m) for m in markers}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_scaling=dict(type="mrope", mrope_section=[1, 1, 2]))
    vision = dict(depth=2, embed_dim=32, num_heads=4, hidden_size=32, mlp_ratio=2, patch_size=patch)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"])
    images = Qwen2VLImageProcessorPil(min_pixels=(4 * patch) ** 2, max_pixels=(8 * patch) ** 2, patch_size=patch,
                                      merge_size=2)
    Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(path)
    PatchMergeProcessor(tok, images).save_pretrained(path)
    return path


def encoder_decoder_config(family: str, tok):
    """Config of a tiny random T5, BART or Whisper (2 encoder and 2 decoder layers, 4 heads, width 32)."""
    import transformers as tf

    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               decoder_start_token_id=tok.bos_token_id)
    if family == "t5":
        return tf.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                           relative_attention_num_buckets=8, relative_attention_max_distance=16, **ids)
    common = dict(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **ids)
    if family == "bart":
        return tf.BartConfig(**common, max_position_embeddings=64)
    audio = {k: TINY_WHISPER[k] for k in ("num_mel_bins", "max_source_positions", "max_target_positions")}
    return tf.WhisperConfig(**common, **audio)


def whisper_feature_extractor():
    """A WhisperFeatureExtractor matching :data:`TINY_WHISPER` (1 s of 16 kHz audio -> ``[8, 32]`` features)."""
    from transformers import WhisperFeatureExtractor

    w = TINY_WHISPER
    return WhisperFeatureExtractor(feature_size=w["num_mel_bins"], sampling_rate=w["sampling_rate"],
                                   hop_length=w["hop_length"], chunk_length=w["chunk_length"], n_fft=1024)


def save_tiny_encoder_decoder(family: str, path: str | Path, seed: int = 0) -> Path:
    """A tiny random T5, BART or Whisper ``...ForConditionalGeneration`` with the word tokenizer (and, for
    Whisper, a :func:`whisper_feature_extractor`), saved to ``path``."""
    import transformers as tf

    path = Path(path)
    torch.manual_seed(seed)
    tok = word_tokenizer(TINY_WORDS)
    cls = {"t5": tf.T5ForConditionalGeneration, "bart": tf.BartForConditionalGeneration,
           "whisper": tf.WhisperForConditionalGeneration}[family]
    _save_text(cls(encoder_decoder_config(family, tok)).eval(), path, tok)
    if family == "whisper":
        whisper_feature_extractor().save_pretrained(path)
    return path
