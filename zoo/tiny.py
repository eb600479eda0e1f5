"""Tiny random checkpoints of every supported family, saved in Hugging Face format.

They exist so that loading and capture code paths are exercised on real architectures without
downloading anything: tests, notebooks and benchmarks save one to a directory and load it back
through :func:`attnlab.zoo.load`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizers import word_tokenizer

TINY_FAMILIES = ("gpt2", "llama", "bert", "vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "llava")
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
