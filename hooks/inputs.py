"""Turn texts and images into model inputs for a zoo spec, and capture one Trace from them."""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.core.capture import Capture
from attnlab.core.trace import Trace
from attnlab.kernels.plan import Plan

from .attach import attach

IMAGE_PLACEHOLDER = "<image>"


def load_images(paths: list[str | Path]):
    """Open images as RGB PIL images; a missing or unreadable file is a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"Image {path} does not exist")
        try:
            images.append(Image.open(path).convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"Image {path} could not be read ({err})") from err
    return images


def without_image(prompt: str) -> str:
    """An LVLM prompt with its image placeholder removed: the prompt of the text-only pass (VHD, VHR)."""
    return prompt.replace(IMAGE_PLACEHOLDER, " ").strip()


def prepare_inputs(processor, spec, texts: list[str], images: list | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for a spec's modality.

    Args:
        processor: tokenizer, image processor or LLaVA processor from :func:`attnlab.zoo.load`.
        spec: the :class:`~attnlab.zoo.load.ModelSpec`.
        texts: prompts (text, vision-language and text-image models); each non-empty.
        images: PIL images (vision, vision-language and text-image models); one per text for LVLMs (or none, for
            a text-only pass of the language model: prompts without the image placeholder), any number for a dual
            encoder such as CLIP (which embeds texts and images separately).

    Returns:
        Keyword arguments for ``model(**inputs)``; for a text encoder-decoder (T5, BART) also the decoder's
        (:func:`decoder_inputs`).
    """
    images = list(images or [])
    check_request(spec.name, spec.modality, texts, images)
    if spec.modality == "text":
        inputs = dict(processor(texts, return_tensors="pt", padding=True))
        start = getattr(spec, "decoder_start_token_id", None)
        if start is not None:  # an encoder-decoder (T5, BART): the decoder reads the text too
            inputs.update(decoder_inputs(inputs["input_ids"], inputs.get("attention_mask"), start))
        return inputs
    if spec.modality == "vision":
        if processor is None:
            raise ValueError(f"{spec.path} has no processor_config.json or preprocessor_config.json; save an image "
                             "processor with the model (processor.save_pretrained(path))")
        return dict(processor(images=images, return_tensors="pt"))
    if spec.modality == "text-image":
        return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    if not images:  # an LVLM's language model on the prompts alone
        return dict(tokenizer_of(processor)(texts, return_tensors="pt", padding=True))
    prompts = [t if IMAGE_PLACEHOLDER in t else f"{IMAGE_PLACEHOLDER} {t}" for t in texts]
    return dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))


def decoder_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, start_id: int) -> dict:
    """Teacher-forced decoder inputs of an encoder-decoder reading its own input back (as when the input is the
    training target): each item's real tokens shifted right by one behind ``start_id`` (the model's
    ``decoder_start_token_id``), its last real token dropped, at the same padded positions.

    Args:
        input_ids: ``[B, N]`` the encoder's tokens; attention_mask: ``[B, N]`` its real tokens (``None``: all).
        start_id: the decoder's first token.

    Returns:
        ``{"decoder_input_ids": [B, N], "decoder_attention_mask": [B, N]}``.

    Example:
        >>> decoder_inputs(torch.tensor([[5, 6, 7]]), None, 1)["decoder_input_ids"]
        tensor([[1, 5, 6]])
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    dec = input_ids.clone()
    for b in range(input_ids.shape[0]):
        real = torch.nonzero(mask[b], as_tuple=False).flatten()  # (n,)
        shifted = torch.cat([input_ids.new_tensor([start_id]), input_ids[b, real][:-1]])
        dec[b, real] = shifted
    return {"decoder_input_ids": dec, "decoder_attention_mask": mask.clone()}


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest token sequence ``model`` has position embeddings for (``None`` when it has no fixed limit)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config  # a LLaVA's language model
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(inputs: dict, model: torch.nn.Module) -> None:
    """Refuse, before the forward pass, token sequences longer than the model's position limit.

    Raises:
        ValueError: naming the length and the limit (a longer input would fail inside the model, or silently run
            past the positions it was trained on).
    """
    ids = inputs.get("input_ids")
    limit = max_positions(model)
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and limit is not None and ids.shape[1] > limit:
        raise ValueError(f"The input is {ids.shape[1]} tokens long but the model takes at most {limit} positions; "
                         "shorten the --text (or split it)")


def on_model_device(inputs: dict, model: torch.nn.Module) -> dict:
    """``inputs`` with every tensor moved to the device of ``model``'s parameters (a no-op on CPU models).

    Every path to a forward pass goes through here, so it also refuses inputs longer than the model's positions
    (:func:`check_positions`).
    """
    check_positions(inputs, model)
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per launched rank), else the CPU."""
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def check_request(name: str, modality: str, texts: list[str], images: list) -> None:
    """Validate texts/images against a model's modality before anything is loaded or run."""
    if modality == "audio":
        raise ValueError(f"{name} is a speech model reading audio features (Whisper type); the CLI takes no audio "
                         "input yet. Capture it from Python: attach(model, capture) around model(input_features=..., "
                         "decoder_input_ids=...), input_features from the processor saved with the model "
                         "(see docs/models.md)")
    if modality in ("text", "vision-language", "text-image") and (not texts or any(not t.strip() for t in texts)):
        raise ValueError("Give a non-empty --text (empty prompts cannot be captured)")
    if modality == "text" and images:
        raise ValueError(f"{name} is a text-only model; drop --image or choose a vision(-language) model")
    if modality == "vision" and texts:
        raise ValueError(f"{name} is a vision model; give --image only, not --text")
    if modality == "vision-language" and not images:  # a text-only pass, e.g. the second run VHD compares against
        if any(IMAGE_PLACEHOLDER in t for t in texts):
            raise ValueError(f"A prompt holds {IMAGE_PLACEHOLDER} but no --image was given; give one --image per "
                             f"--text, or drop {IMAGE_PLACEHOLDER} for a text-only pass of {name}")
    elif modality != "text" and not images:
        raise ValueError(f"{name} takes images; give at least one --image")
    if modality == "vision-language" and images and len(images) != len(texts):
        raise ValueError(f"Give one --image per --text for {name} (got {len(images)} images, {len(texts)} texts)")


def tokenizer_of(processor):
    """The tokenizer inside a processor (or the processor itself when it is a tokenizer; ``None`` for images)."""
    if processor is None:
        return None
    if hasattr(processor, "convert_ids_to_tokens"):
        return processor
    return getattr(processor, "tokenizer", None)


def capture_trace(model, processor, spec, capture: Capture, texts: list[str], images: list | None = None,
                  plan: Plan | None = None, impl: str = "auto", progress: bool = False) -> Trace:
    """One forward pass under :func:`attach` on the texts and images; returns the Trace (with the vision tower's for
    LVLMs). :func:`trace_inputs` does the same on inputs already prepared."""
    inputs = prepare_inputs(processor, spec, texts, images)
    return trace_inputs(model, processor, spec, capture, inputs, plan=plan, impl=impl, progress=progress)


def trace_inputs(model, processor, spec, capture: Capture, inputs: dict, plan: Plan | None = None,
                 impl: str = "auto", progress: bool = False) -> Trace:
    """One forward pass on ``inputs`` (from :func:`prepare_inputs`) under :func:`attach`; returns the Trace.

    With ``progress``, inputs of :data:`~attnlab.hooks.progress.LONG_INPUT_TOKENS` or more show a bar per layer.
    """
    from .progress import LONG_INPUT_TOKENS, layer_progress

    inputs = on_model_device(inputs, model)
    ids = inputs.get("input_ids")
    long = progress and ids is not None and ids.shape[-1] >= LONG_INPUT_TOKENS
    with torch.no_grad(), attach(model, capture, plan, tokenizer=tokenizer_of(processor), impl=impl,
                                 model_id=spec.name) as rec, layer_progress(model, "capturing", enabled=long):
        model(**inputs)
    return rec.trace()
