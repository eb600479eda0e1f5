"""Inputs for LVLMs whose image token count depends on the image (Qwen2-VL, Wang et al., 2024), without a video stack.

transformers' ``Qwen2VLProcessor`` cannot be built where torchvision does not import (as beside the CPU torch
attnlab installs): it insists on a video processor. Images need none of it. :class:`PatchMergeProcessor` pairs
the checkpoint's tokenizer with its PIL image processor and expands each image placeholder into the number of
image tokens that image's patch grid gives after the ``merge_size x merge_size`` patch merger, as the
transformers processor does for images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

#: attnlab's image placeholder in prompts (:data:`attnlab.hooks.inputs.IMAGE_PLACEHOLDER`)
PLACEHOLDER = "<image>"


@dataclass
class PatchMergeProcessor:
    """Tokenizer + image processor of a Qwen2-VL-type checkpoint; called like a transformers processor.

    Attributes:
        tokenizer: the checkpoint's tokenizer (with ``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``).
        image_processor: a PIL image processor returning ``pixel_values`` and ``image_grid_thw``.
        image_token: the token repeated once per merged patch (``<|image_pad|>``).
        vision_start, vision_end: the tokens around an image.
    """

    tokenizer: object
    image_processor: object
    image_token: str = "<|image_pad|>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PatchMergeProcessor":
        """Load the tokenizer and the image processor (PIL backend) saved in ``path``."""
        import transformers as tf

        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        images = tf.AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
        return cls(tokenizer, images)

    def save_pretrained(self, path: str | Path) -> None:
        """Save the tokenizer and image processor into ``path`` (what :meth:`from_pretrained` reads)."""
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)

    def image_tokens(self, grid_thw: torch.Tensor) -> list[int]:
        """Image tokens per image: ``t * h * w / merge_size**2`` for each row of ``grid_thw`` ``[n_images, 3]``."""
        merge = int(getattr(self.image_processor, "merge_size", 1) or 1)
        return [int(t * h * w) // merge**2 for t, h, w in grid_thw.tolist()]

    def expand(self, texts: list[str], counts: list[int]) -> list[str]:
        """Each image slot of ``texts`` (``<image>``, or a bare ``<|image_pad|>`` between the vision markers) becomes
        ``<|vision_start|>`` + ``counts[i]`` image tokens + ``<|vision_end|>``, images taken in order.

        Raises:
            ValueError: when the prompts hold more or fewer image slots than there are images.
        """
        slot = f"{self.vision_start}{self.image_token}{self.vision_end}"
        remaining = list(counts)
        out = []
        for text in texts:
            pieces = text.replace(slot, PLACEHOLDER).split(PLACEHOLDER)
            if len(pieces) - 1 > len(remaining):
                raise ValueError(f"The prompts hold more image slots ({PLACEHOLDER}) than the {len(counts)} images given")
            expanded = pieces[0]
            for piece in pieces[1:]:
                expanded += f"{self.vision_start}{self.image_token * remaining.pop(0)}{self.vision_end}{piece}"
            out.append(expanded)
        if remaining:
            raise ValueError(f"{len(counts)} images were given for {len(counts) - len(remaining)} image slots "
                             f"({PLACEHOLDER}) in the prompts; put one {PLACEHOLDER} in a prompt per image")
        return out

    def __call__(self, text: list[str] | str | None = None, images: list | None = None, return_tensors: str = "pt",
                 padding: bool = True, **kwargs) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask``/``mm_token_type_ids`` ``[B, N]``, and with images ``pixel_values``
        ``[n_patches, C*T*P*P]`` and ``image_grid_thw`` ``[n_images, 3]``."""
        texts = [text] if isinstance(text, str) else list(text or [])
        out: dict[str, torch.Tensor] = {}
        if images:
            out.update(self.image_processor(images=images, return_tensors=return_tensors))
            texts = self.expand(texts, self.image_tokens(out["image_grid_thw"]))
        if texts:
            out.update(self.tokenizer(texts, return_tensors=return_tensors, padding=padding, **kwargs))
            image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
            # which tokens are image tokens (1; 0 text): the model's multimodal RoPE positions need it
            out["mm_token_type_ids"] = (out["input_ids"] == image_id).long()
        return dict(out)

    def batch_decode(self, *args, **kwargs):
        """The tokenizer's ``batch_decode``."""
        return self.tokenizer.batch_decode(*args, **kwargs)


def is_patch_merge_checkpoint(path: Path) -> bool:
    """Whether ``path``'s image processor merges patches into a variable number of image tokens (Qwen2-VL type)."""
    import json

    for name in ("preprocessor_config.json", "processor_config.json"):
        file = path / name
        if file.exists():
            cfg = json.loads(file.read_text())
            cfg = cfg.get("image_processor", cfg)
            return "merge_size" in cfg and "temporal_patch_size" in cfg
    return False
