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


def load_audio(paths: list[str | Path], sampling_rate: int, max_seconds: float | None = None) -> list:
    """Read mono float waveforms ``[n_samples]`` (float32 in [-1, 1]) for a speech model's feature extractor.

    A ``.wav`` file must be PCM (8-, 16- or 32-bit) at ``sampling_rate``; its channels are averaged. A ``.npy``
    file holds one 1-D float array, taken to be at ``sampling_rate`` already.

    Raises:
        ValueError: a missing or unreadable file, another sampling rate (naming both rates and the fix), or a
            recording longer than the model's window ``max_seconds`` (which the feature extractor would cut).
    """
    import wave

    import numpy as np

    waves = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"Audio file {path} does not exist")
        if path.suffix.lower() == ".npy":
            samples = np.load(path, allow_pickle=False)
            if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
                raise ValueError(f"Audio file {path} must hold one 1-D float array (got {samples.dtype} "
                                 f"{samples.shape})")
            samples = samples.astype(np.float32)
        else:
            try:
                with wave.open(str(path), "rb") as wav:
                    rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
                    raw = wav.readframes(wav.getnframes())
            except (wave.Error, EOFError, OSError) as err:
                raise ValueError(f"Audio file {path} is not a PCM .wav file ({err}); give a .wav or a .npy "
                                 "waveform") from err
            if rate != sampling_rate:
                raise ValueError(f"Audio file {path} is sampled at {rate} Hz but the model's feature extractor "
                                 f"reads {sampling_rate} Hz; resample it (e.g. sox in.wav -r {sampling_rate} out.wav)")
            if width not in (1, 2, 4):
                raise ValueError(f"Audio file {path} has {8 * width}-bit samples; give 8-, 16- or 32-bit PCM")
            ints = np.frombuffer(raw, dtype={1: np.uint8, 2: np.int16, 4: np.int32}[width]).astype(np.float64)
            if width == 1:  # 8-bit PCM is unsigned, centred on 128
                ints = ints - 128.0
            samples = (ints.reshape(-1, channels).mean(axis=1) / float(2 ** (8 * width - 1))).astype(np.float32)
        if max_seconds is not None and samples.shape[0] > max_seconds * sampling_rate:
            raise ValueError(f"Audio file {path} lasts {samples.shape[0] / sampling_rate:.2f} s, longer than the "
                             f"model's {max_seconds:g} s window; cut it into pieces of at most {max_seconds:g} s")
        waves.append(samples)
    return waves


def without_image(prompt: str) -> str:
    """An LVLM prompt with its image placeholder removed: the prompt of the text-only pass (VHD, VHR)."""
    return prompt.replace(IMAGE_PLACEHOLDER, " ").strip()


def prepare_inputs(processor, spec, texts: list[str], images: list | None = None,
                   audio: list | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for a spec's modality.

    Args:
        processor: tokenizer, image processor or LLaVA processor from :func:`attnlab.zoo.load`.
        spec: the :class:`~attnlab.zoo.load.ModelSpec`.
        texts: prompts (text, vision-language and text-image models); each non-empty. For a speech model, the
            decoder's text, one per recording (optional).
        images: PIL images (vision, vision-language and text-image models); one per text for LVLMs (or none, for
            a text-only pass of the language model: prompts without the image placeholder), any number for a dual
            encoder such as CLIP (which embeds texts and images separately).
        audio: waveforms ``[n_samples]`` at the feature extractor's rate (:func:`load_audio`), for a speech model.

    Returns:
        Keyword arguments for ``model(**inputs)``; for an encoder-decoder (T5, BART, Whisper) also the decoder's
        (:func:`decoder_inputs`).
    """
    images = list(images or [])
    audio = list(audio or [])
    check_request(spec.name, spec.modality, texts, images, audio)
    if spec.modality == "audio":
        return speech_inputs(processor, spec, texts, audio)
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
    if spec.modality == "text-image":  # a dual encoder: texts, images or both
        if not images:
            return dict(tokenizer_of(processor)(texts, return_tensors="pt", padding=True))
        if not texts:
            return dict(processor.image_processor(images=images, return_tensors="pt"))
        return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))
    if not images:  # an LVLM's language model on the prompts alone
        return dict(tokenizer_of(processor)(texts, return_tensors="pt", padding=True))
    prompts = [t if IMAGE_PLACEHOLDER in t else f"{IMAGE_PLACEHOLDER} {t}" for t in texts]
    return dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))


def speech_inputs(processor, spec, texts: list[str], audio: list) -> dict[str, torch.Tensor]:
    """A speech encoder-decoder's inputs (Whisper): ``input_features [B, n_mels, frames]`` from the waveforms, and
    the decoder's tokens: each text teacher-forced behind the start token (:func:`decoder_inputs`), or the start
    token alone without texts."""
    features = processor.feature_extractor(audio, sampling_rate=processor.feature_extractor.sampling_rate,
                                           return_tensors="pt")
    inputs = {"input_features": features["input_features"]}
    start = spec.decoder_start_token_id
    if texts:
        tokens = processor.tokenizer(texts, return_tensors="pt", padding=True)
        inputs.update(decoder_inputs(tokens["input_ids"], tokens.get("attention_mask"), start))
    else:
        inputs["decoder_input_ids"] = torch.full((len(audio), 1), start, dtype=torch.long)
    return inputs


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


def check_request(name: str, modality: str, texts: list[str], images: list, audio: list = ()) -> None:
    """Validate texts/images/audio against a model's modality before anything is loaded or run."""
    if modality == "audio":
        if not audio:
            raise ValueError(f"{name} is a speech model (Whisper type): give --audio FILE (.wav or .npy), one per "
                             "recording, and optionally one --text per recording for its decoder")
        if images:
            raise ValueError(f"{name} is a speech model; drop --image")
        if texts and len(texts) != len(audio):
            raise ValueError(f"Give one --text per --audio for {name}'s decoder, or none (got {len(texts)} texts, "
                             f"{len(audio)} recordings)")
        return
    if audio:
        raise ValueError(f"{name} takes no audio; drop --audio or choose a speech model (Whisper type)")
    if modality == "text-image" and not (texts or images):
        raise ValueError(f"{name} embeds texts and images: give --text, --image or both")
    if any(not t.strip() for t in texts) or (modality in ("text", "vision-language") and not texts):
        raise ValueError("Give a non-empty --text (empty prompts cannot be captured)")
    if modality == "text" and images:
        raise ValueError(f"{name} is a text-only model; drop --image or choose a vision(-language) model")
    if modality == "vision" and texts:
        raise ValueError(f"{name} is a vision model; give --image only, not --text")
    if modality == "vision-language" and not images:  # a text-only pass, e.g. the second run VHD compares against
        if any(IMAGE_PLACEHOLDER in t for t in texts):
            raise ValueError(f"A prompt holds {IMAGE_PLACEHOLDER} but no --image was given; give one --image per "
                             f"--text, or drop {IMAGE_PLACEHOLDER} for a text-only pass of {name}")
    elif modality not in ("text", "text-image") and not images:
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
    run, tower = model, None
    if spec.modality == "text-image" and ("input_ids" not in inputs or "pixel_values" not in inputs):
        # a dual encoder (CLIP) on texts alone or images alone runs that tower only
        run, tower = ((model.get_text_features, None) if "input_ids" in inputs else
                      (model.get_image_features, "vision"))
    with torch.no_grad(), attach(model, capture, plan, tokenizer=tokenizer_of(processor), impl=impl,
                                 model_id=spec.name) as rec, layer_progress(model, "capturing", enabled=long):
        run(**inputs)
    return rec.trace() if tower is None else rec.traces(tower)[0]
