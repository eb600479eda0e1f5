"""``load(name_or_path)``: a model, its tokenizer/processor and a spec, from the zoo or a local directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .minilm import minilm_dir
from .pretrained import load_pretrained
from .patch_merge_processor import PatchMergeProcessor, is_patch_merge_checkpoint

#: modalities :func:`peek` tells apart from a checkpoint's config (``text-image``: a dual encoder such as CLIP;
#: ``audio``: a speech encoder-decoder such as Whisper, reading ``input_features``)
MODALITIES = ("text", "vision", "vision-language", "text-image", "audio")
MODELS_DOC = "docs/models.md"


@dataclass(frozen=True)
class ModelSpec:
    """What attnlab needs to know about a loaded model.

    Attributes:
        name: zoo name or the directory it came from.
        family: HF ``model_type`` (``gpt2``, ``llama``, ``bert``, ``vit``, ``dinov2``, ``llava``, ...).
        modality: ``text``, ``vision``, ``vision-language`` (an LVLM: image tokens inside the text) or
            ``text-image`` (a dual encoder such as CLIP: a text stack and an image stack).
        n_layers: attention layers of the main stack.
        n_heads: query heads per layer.
        causal: whether the main stack is causal.
        image_token_id: LVLM image placeholder id (image tokens sit where it appears), else ``None``.
        path: the checkpoint directory.
        decoder_start_token_id: an encoder-decoder's (T5, BART, Whisper) first decoder token, which
            :func:`attnlab.hooks.inputs.prepare_inputs` puts before the teacher-forced decoder input; ``None`` for
            other models.
    """

    name: str
    family: str
    modality: str
    n_layers: int
    n_heads: int
    causal: bool
    image_token_id: int | None
    path: str
    decoder_start_token_id: int | None = None


def _zoo_dirs() -> dict[str, Path]:
    from .registry import CHECKPOINTS as ckpts

    dirs = {"minilm": None}
    if ckpts.is_dir():
        dirs.update({d.name: d for d in sorted(ckpts.iterdir()) if (d / "config.json").exists()})
    return dirs


def resolve(name_or_path: str) -> tuple[str, Path]:
    """Map a zoo name or a directory to ``(name, directory)``; clear ValueErrors otherwise."""
    zoo = _zoo_dirs()
    if name_or_path == "minilm":
        return "minilm", minilm_dir()
    if name_or_path in zoo:
        return name_or_path, zoo[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} has no config.json; point --model at a Hugging Face checkpoint directory")
        return str(path), path
    if path.exists():
        raise ValueError(f"{path} is a file; point --model at a Hugging Face checkpoint directory")
    looks_like_path = "/" in name_or_path or name_or_path.startswith(".")
    what = f"No directory {path}" if looks_like_path else f"Unknown model {name_or_path!r}"
    raise ValueError(f"{what}. Use a zoo model ({', '.join(zoo)}) or a local Hugging Face checkpoint directory "
                     f"(nothing is downloaded); {MODELS_DOC} lists the architectures attnlab captures")


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def modality_of(cfg: dict) -> str:
    """The modality of a checkpoint from its ``config.json`` (one of :data:`MODALITIES`)."""
    if cfg.get("image_token_id") is not None or cfg.get("image_token_index") is not None:
        return "vision-language"
    if "vision_config" in cfg and "text_config" in cfg:
        return "text-image"
    if cfg.get("patch_size") is not None and "vocab_size" not in cfg:
        return "vision"
    if cfg.get("num_mel_bins") is not None:  # a speech model (Whisper) reads log-mel input_features
        return "audio"
    return "text"


def _model_class(cfg: dict, path: Path):
    """The class to load: the saved class for decoders, LVLMs and base models, else the base model (``AutoModel``).

    Encoders and vision towers load without their task head (a classifier's logits are not what attention
    analysis looks at), as ``AutoModel`` gives; decoders and LVLMs keep their LM head.
    """
    import transformers as tf

    names = cfg.get("architectures") or []
    if names and getattr(tf, names[0], None) is None:
        raise ValueError(f"{path} was saved from {names[0]!r}, which is not a transformers class (custom code); "
                         "attnlab does not run trust_remote_code checkpoints")
    # "...Model" classes are base models already (BertModel, CLIPVisionModel, T5EncoderModel, where AutoModel would
    # give the whole T5); the others are task heads, replaced by the base model.
    keep = names and names[0].endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "Model"))
    return getattr(tf, names[0]) if keep else tf.AutoModel


def spec_of(model, name: str, path: str | Path = "", modality: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a model in memory (a loaded checkpoint, or one a trainer just built).

    Args:
        model: a transformers model.
        name: what to call it.
        path: its checkpoint directory, ``""`` when it has none yet.
        modality: from the checkpoint's ``config.json`` (:func:`modality_of`); by default from ``model.config``.

    Raises:
        ValueError: when attach() cannot capture the model's attention (naming the module and the reason).
    """
    from attnlab.hooks.hf import main_stack, stack_meta

    cfg = model.config.to_dict()
    modality = modality or modality_of(cfg)
    meta = stack_meta(model, main_stack(model), name)
    image_id = None
    if modality == "vision-language":
        image_id = cfg.get("image_token_id")
        image_id = image_id if image_id is not None else cfg.get("image_token_index")
    start = cfg.get("decoder_start_token_id") if cfg.get("is_encoder_decoder") else None
    return ModelSpec(name=name, family=cfg.get("model_type", ""), modality=modality, n_layers=meta.n_layers,
                     n_heads=meta.n_heads, causal=meta.causal, image_token_id=image_id, path=str(path),
                     decoder_start_token_id=start if isinstance(start, int) else None)


def _load_processor(modality: str, path: Path):
    import transformers as tf

    if modality == "text":
        return tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if modality == "audio":  # WhisperProcessor: the feature extractor and the decoder's tokenizer
        return tf.AutoProcessor.from_pretrained(path, local_files_only=True)
    if modality == "vision-language" and is_patch_merge_checkpoint(path):  # Qwen2-VL: no video stack needed
        return PatchMergeProcessor.from_pretrained(path)
    if modality != "vision":
        return tf.AutoProcessor.from_pretrained(path, local_files_only=True, backend="pil")
    # transformers 5 saves processor_config.json; older checkpoints carry preprocessor_config.json.
    if not any((path / f).exists() for f in ("processor_config.json", "preprocessor_config.json")):
        return None
    return tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")


def peek(name_or_path: str) -> tuple[str, Path, str, str]:
    """``(name, directory, family, modality)`` from ``config.json`` alone, without loading weights."""
    name, path = resolve(name_or_path)
    cfg = _config(path)
    if not cfg.get("model_type"):
        raise ValueError(f"{path}/config.json names no model_type; point --model at a Hugging Face checkpoint")
    return name, path, cfg["model_type"], modality_of(cfg)


def load(name_or_path: str):
    """Load a model for analysis, offline.

    Any checkpoint whose attention attnlab can capture loads; there is no list of architectures. Decoders and
    LVLMs load as the class named in ``config.json`` (``architectures``), encoders and vision models as their
    base model (``AutoModel``); the processor comes from the checkpoint.

    Args:
        name_or_path: a zoo name (``minilm``, ``toy-gpt``, ...) or a local Hugging Face directory.

    Returns:
        ``(model, processor, spec)``: the model in eval mode, its tokenizer (text models, T5, BART), image
        processor (vision models, ``None`` when none was saved) or processor (LVLMs, CLIP, Whisper), and a
        :class:`ModelSpec`.

    Raises:
        ValueError: unknown name, missing directory, custom-code checkpoint, or a model whose attention
            attnlab cannot capture (naming the module and the reason; see docs/models.md).
    """
    name, path, mtype, modality = peek(name_or_path)
    cfg = _config(path)
    try:
        model = load_pretrained(_model_class(cfg, path), path)
    except OSError as err:  # no weights, or a file transformers cannot read
        raise ValueError(f"Could not load the weights in {path}: {str(err).splitlines()[0]}") from err
    spec = spec_of(model, name, path, modality)  # refuses what attach() would refuse
    processor = _load_processor(modality, path)
    return model, processor, spec
