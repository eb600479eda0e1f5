"""Toy-llava's data: its word vocabulary and processor, its prompts, greedy answers and packed training batches.

Two tasks share one single-turn format, ``<bos> <image>*64 {prompt} {answer} <eos>``, with the loss
on the answer and ``<eos>`` only:

- captioning: prompt :data:`CAPTION_PROMPT`, answer the scene's caption (its objects in reading order);
- object probing: prompt POPE's ``"Is there a {object} in the image?"``, answer ``"Yes"`` or ``"No"``.

Training packs several examples of one scene into a row: the image prefix once, then one segment
per example. A block mask lets each segment see the prefix and itself only, and every segment's
positions restart where the prefix ends, so each segment is computed exactly as the single-turn
example it stands for, while the 64 image tokens are paid for once per scene instead of per example.

The probing questions keep a language prior on purpose. The toy world places a pair's partner
beside its anchor most of the time; "no" questions about an absent partner of a present anchor are
down-weighted by :attr:`TaskMix.absent_partner_weight`, so in training the partner of a visible
anchor is mostly a "yes". A model that leans on that prior says "Yes" to the absent partner: the
hallucination POPE's adversarial split measures.

Example:
    >>> words = vocabulary(WorldConfig())
    >>> "Describe" in words and "Yes" in words and "hexagon" in words
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnlab.evals.pope_build import pope_question_text
from attnlab.zoo.world import CAPTION_TEMPLATES, Scene, WorldConfig

IMAGE_TOKEN = "<image>"
CAPTION_PROMPT = "Describe the image."
YES, NO = "Yes", "No"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskMix:
    """How the examples of one training row (one scene) are drawn.

    Attributes:
        caption_rate: chance that a row holds the scene's caption.
        positives: most present objects asked about per row, each followed by one absent object, as
            POPE builds its splits; balanced labels keep the model from learning a bias towards "No"
            (asking a fixed number of questions per scene made 70 % of the answers "No").
        absent_partner_weight: sampling weight of an absent class whose pair mate is in the scene,
            relative to 1 for any other absent class. Below 1 the model rarely learns that a visible
            anchor's partner can be missing: the language prior the adversarial split exposes. At 0.2
            the trained model was nearly as good on the adversarial split as on the random one
            (gap 0.005); at 0.03 (a few dozen such questions in a run) the gap is about 0.1.
    """

    caption_rate: float = 0.5
    positives: int = 4
    absent_partner_weight: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_rate <= 1.0:
            raise ValueError(f"caption_rate={self.caption_rate} is outside [0, 1]; give a probability")
        if self.positives < 1:
            raise ValueError(f"positives={self.positives}; ask about at least one present object per row")
        if self.absent_partner_weight < 0:
            raise ValueError(f"absent_partner_weight={self.absent_partner_weight} < 0; use 0 (never) or more")


def _pre_tokenize(text: str) -> list[str]:
    """Words as the zoo's word tokenizer splits them (whitespace, then punctuation)."""
    from tokenizers import pre_tokenizers

    splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return [w for w, _ in splitter.pre_tokenize_str(text)]


def vocabulary(config: WorldConfig) -> tuple[str, ...]:
    """Every word of the prompts, captions, questions and answers of a toy world, in a fixed order."""
    texts = [CAPTION_PROMPT, YES, NO, "a", "an", "and", ","]
    texts += [t.format(name) for t in CAPTION_TEMPLATES for name in config.classes]
    texts += [pope_question_text(name) for name in config.classes]
    return tuple(dict.fromkeys(w for t in texts for w in _pre_tokenize(t)))


def build_processor(config: WorldConfig, patch_size: int):
    """A ``LlavaProcessor``: word tokenizer with ``<image>`` as a special token, Pillow CLIP image processor.

    One image becomes ``(image_size / patch_size) ** 2`` placeholder tokens (the CLS token is dropped by
    the "default" feature-select strategy). The tokenizer pads on the left, as batched generation needs.
    """
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from .tokenizers import word_tokenizer

    tok = word_tokenizer(vocabulary(config), extra_special=[IMAGE_TOKEN])
    tok.padding_side = "left"
    side = config.image_size
    # Pillow-only processor: the torchvision backend does not import beside the CPU torch build.
    images = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=patch_size,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1)


def pixel_values(processor, scenes: Sequence[Scene], chunk: int = 256) -> torch.Tensor:
    """The processor's pixel tensor for the scenes' images, ``(N, 3, S, S)``."""
    parts = [processor.image_processor(images=[s.image for s in scenes[i:i + chunk]], return_tensors="pt")
             ["pixel_values"] for i in range(0, len(scenes), chunk)]
    return torch.cat(parts)


def prompt_ids(processor, prompt: str) -> list[int]:
    """Token ids of ``<image> {prompt}`` with the image placeholder expanded, as the processor builds them."""
    from PIL import Image

    side = processor.image_processor.crop_size["height"]
    blank = Image.new("RGB", (side, side))
    return processor(images=[blank], text=[f"{IMAGE_TOKEN} {prompt}"])["input_ids"][0]


def _partners(config: WorldConfig) -> dict[str, str]:
    out = {}
    for anchor, partner, _ in config.pairs:
        out[anchor], out[partner] = partner, anchor
    return out


def _draw(pool: list[str], weights: np.ndarray, k: int, rng: np.random.Generator) -> list[str]:
    """``k`` distinct names from ``pool``, drawn with probability proportional to ``weights``."""
    k = min(k, len(pool), int((weights > 0).sum()))
    if k == 0:
        return []
    picks = rng.choice(len(pool), size=k, replace=False, p=weights / weights.sum())
    return [pool[int(i)] for i in picks]


def sample_row(scene: Scene, config: WorldConfig, mix: TaskMix, rng: np.random.Generator) -> list[tuple[str, str]]:
    """The ``(prompt, answer)`` examples of one training row: maybe the caption, then yes/no pairs.

    Each asked present object is followed by one absent object (POPE's order), so labels are balanced.
    """
    examples = [(CAPTION_PROMPT, scene.caption)] if rng.random() < mix.caption_rate else []
    present = [c for c in config.classes if c in scene.names]
    absent = [c for c in config.classes if c not in scene.names]
    mates = _partners(config)
    weights = np.array([mix.absent_partner_weight if mates.get(c) in scene.names else 1.0 for c in absent])
    yes = _draw(present, np.ones(len(present)), mix.positives, rng)
    no = _draw(absent, weights, len(yes), rng)
    for a, b in zip(yes, no):
        examples += [(pope_question_text(a), YES), (pope_question_text(b), NO)]
    return examples


class PromptCache:
    """Token ids of the few prompts and answers, built once through the processor.

    Attributes:
        prefix: ids of ``<bos> <image>*n``, shared by every prompt.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        full = prompt_ids(processor, CAPTION_PROMPT)
        image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.prefix = full[: max(i for i, t in enumerate(full) if t == image_id) + 1]
        self._segments: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def segment(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """``(prompt ids after the prefix, answer ids + <eos>)``."""
        key = (prompt, answer)
        if key not in self._segments:
            full = prompt_ids(self.processor, prompt)
            assert full[: len(self.prefix)] == self.prefix, "every prompt must start with the same image prefix"
            tok = self.processor.tokenizer
            tail = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            self._segments[key] = (full[len(self.prefix):], tail)
        return self._segments[key]


def encode_rows(rows: Sequence[Sequence[tuple[str, str]]], cache: PromptCache) -> dict[str, torch.Tensor]:
    """Pack each row's examples behind one image prefix.

    Returns:
        ``input_ids``, ``labels`` (answer and ``<eos>`` ids, -100 elsewhere) and ``position_ids``, each
        ``(B, N)``, and a boolean ``attention_mask`` ``(B, 1, N, N)``: a token sees the prefix and the
        earlier tokens of its own segment. Padding sees only itself (keeps its softmax finite).
    """
    pad = cache.processor.tokenizer.pad_token_id
    n_prefix = len(cache.prefix)
    packed = [[cache.segment(p, a) for p, a in row] for row in rows]
    width = max(n_prefix + sum(len(q) + len(a) for q, a in row) for row in packed)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, N)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, N)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (B, N)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # (B, N): -1 prefix, -2 pad, k segment k
    for b, row in enumerate(packed):
        ids[b, :n_prefix] = torch.tensor(cache.prefix)
        positions[b, :n_prefix] = torch.arange(n_prefix)
        at = n_prefix
        for k, (prompt, answer) in enumerate(row):
            n = len(prompt) + len(answer)
            ids[b, at:at + n] = torch.tensor(prompt + answer)
            labels[b, at + len(prompt):at + n] = torch.tensor(answer)
            positions[b, at:at + n] = torch.arange(n_prefix, n_prefix + n)
            segment[b, at:at + n] = k
            at += n
        segment[b, at:] = -2
    order = torch.arange(width)
    causal = order[None, :, None] >= order[None, None, :]  # (1, Q, K)
    same = segment[:, :, None] == segment[:, None, :]  # (B, Q, K)
    to_prefix = (segment[:, None, :] == -1) & (segment[:, :, None] != -2)  # (B, Q, K)
    alone = torch.eye(width, dtype=torch.bool)[None] & (segment[:, :, None] == -2)  # (B, Q, K)
    mask = causal & ((same & (segment[:, :, None] != -2)) | to_prefix) | alone  # (B, Q, K)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None]}
