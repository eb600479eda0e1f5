"""``load(name_or_path)``: a model, its tokenizer/processor and a spec, from the zoo or a local directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .minilm import minilm_dir

#: model_type -> (loader kind, modality)
SUPPORTED = {
    "gpt2": ("causal-lm", "text"),
    "llama": ("causal-lm", "text"),
    "mistral": ("causal-lm", "text"),
    "qwen2": ("causal-lm", "text"),
    "bert": ("encoder", "text"),
    "vit": ("vision", "vision"),
    "dinov2": ("vision", "vision"),
    "dinov2_with_registers": ("vision", "vision"),
    "clip_vision_model": ("clip-vision", "vision"),
    "clip": ("clip-vision", "vision"),
    "llava": ("llava", "vision-language"),
}


@dataclass(frozen=True)
class ModelSpec:
    """What attnlab needs to know about a loaded model.

    Attributes:
        name: zoo name or the directory it came from.
        family: HF ``model_type`` (``gpt2``, ``llama``, ``bert``, ``vit``, ``dinov2``, ``llava``, ...).
        modality: ``text``, ``vision`` or ``vision-language``.
        n_layers: attention layers of the main stack.
        n_heads: query heads per layer.
        causal: whether the main stack is causal.
        image_token_id: LVLM image placeholder id (image tokens sit where it appears), else ``None``.
        path: the checkpoint directory.
    """

    name: str
    family: str
    modality: str
    n_layers: int
    n_heads: int
    causal: bool
    image_token_id: int | None
    path: str


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
                     f"(nothing is downloaded). Supported architectures: {', '.join(sorted(SUPPORTED))}")


def _model_type(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED:
        raise ValueError(f"Architecture {mtype!r} in {path} is not supported; supported: {', '.join(sorted(SUPPORTED))}")
    return mtype


def _load_model(kind: str, path: Path):
    import transformers as tf

    cls = {"causal-lm": tf.AutoModelForCausalLM, "encoder": tf.AutoModel, "vision": tf.AutoModel,
           "clip-vision": tf.CLIPVisionModel, "llava": tf.LlavaForConditionalGeneration}[kind]
    return cls.from_pretrained(path, local_files_only=True).eval()


def _load_processor(kind: str, path: Path):
    import transformers as tf

    if kind in ("causal-lm", "encoder"):
        return tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    if kind == "llava":
        return tf.AutoProcessor.from_pretrained(path, local_files_only=True)
    if not (path / "preprocessor_config.json").exists():
        return None
    return tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")


def peek(name_or_path: str) -> tuple[str, Path, str, str]:
    """``(name, directory, family, modality)`` without loading weights; same errors as :func:`load`."""
    name, path = resolve(name_or_path)
    mtype = _model_type(path)
    return name, path, mtype, SUPPORTED[mtype][1]


def load(name_or_path: str):
    """Load a model for analysis, offline.

    Args:
        name_or_path: a zoo name (``minilm``, ``toy-gpt``, ...) or a local Hugging Face directory.

    Returns:
        ``(model, processor, spec)``: the model in eval mode, its tokenizer (text models), image
        processor (vision models) or ``LlavaProcessor`` (LVLMs), and a :class:`ModelSpec`.

    Raises:
        ValueError: unknown name, missing directory or unsupported architecture, naming what is supported.
    """
    name, path, mtype, modality = peek(name_or_path)
    kind = SUPPORTED[mtype][0]
    model = _load_model(kind, path)
    processor = _load_processor(kind, path)
    from attnlab.hooks.hf import find_stacks, stack_meta

    main = next(s for s in find_stacks(model) if s.name == "main")
    meta = stack_meta(model, main, name)
    image_id = getattr(model.config, "image_token_id", None) if kind == "llava" else None
    spec = ModelSpec(name=name, family=mtype, modality=modality, n_layers=meta.n_layers, n_heads=meta.n_heads,
                     causal=meta.causal, image_token_id=image_id, path=str(path))
    return model, processor, spec
