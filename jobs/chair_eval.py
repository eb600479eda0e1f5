"""CHAIR evaluation of one method: caption each image, count hallucinated objects. Resumable."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from attnlab.evals.answer import format_prompt, prompt_templates
from attnlab.evals.chair import ChairMetrics, Synonyms, chair_metrics

from . import EVAL_BATCH_SIZE
from .answering import answer_batch
from .sharded import run_item_batches, unit_name


@dataclass(frozen=True)
class ChairUnit:
    """One method's CHAIR evaluation settings.

    Attributes:
        model: model name or path.
        method: method name.
        annotations: COCO instances file.
        images: image directory.
        limit: first N images only (``None``: all).
        max_new_tokens: caption length cap (CHAIR depends strongly on length: always recorded).

    The batch size is not among them (see :class:`~attnlab.jobs.pope_eval.PopeUnit`).
    """

    model: str
    method: str
    annotations: str
    images: str
    limit: int | None
    max_new_tokens: int

    @property
    def name(self) -> str:
        """Unit name used for progress and result files."""
        return unit_name("chair", self.method)


@dataclass
class ChairOutcome:
    """Captions and metrics of a finished unit."""

    unit: ChairUnit
    metrics: ChairMetrics
    captions: pd.DataFrame
    seconds: float
    median_seconds: float


def caption_images(batch: list[tuple[int, str]], unit: ChairUnit, loaded, method_state, prompt: str) -> list[dict]:
    """Caption a batch of ``(image_id, file_name)`` under the method in one padded generation; returns their progress
    rows (``seconds``: the batch's time over its size, ``batch``: its size)."""
    from PIL import Image

    images = [Image.open(Path(unit.images) / name).convert("RGB") for _, name in batch]
    captions, seconds = answer_batch(loaded, method_state, images, [prompt] * len(batch), unit.max_new_tokens)
    return [{"image_id": image_id, "image": name, "caption": caption, "seconds": seconds, "batch": len(batch)}
            for (image_id, name), caption in zip(batch, captions)]


def run_chair_unit(unit: ChairUnit, images: list[tuple[int, str]], ground_truth: dict[int, set[str]],
                   synonyms: Synonyms, loaded, method_state, out: Path, progress_bar: bool = True,
                   shard=None, batch_size: int = EVAL_BATCH_SIZE) -> ChairOutcome:
    """Caption every image not yet done (durably), then score all captions.

    Args:
        unit: settings.
        images: ``(image_id, file_name)`` pairs to caption.
        ground_truth: ``{image_id: canonical object names}``.
        synonyms: CHAIR vocabulary.
        loaded: ``(model, processor, spec)``.
        method_state: object with ``steering_for(images, prompts)`` (see ``interventions.methods``).
        out: eval Run directory.
        progress_bar: show a tqdm bar.
        shard: this rank's place in a job of several workers (see :func:`attnlab.jobs.sharded.run_items`),
            or ``None``.
        batch_size: images per padded generation.

    Returns:
        The outcome; its ``captions`` table carries each caption's ``mentions`` and ``hallucinated`` counts
        (duplicates counted), from which CHAIR and its paired bootstrap recompute. Images go ``batch_size``
        at a time; the first batch is captioned once untimed before timing starts (warm-up), as in
        :func:`attnlab.jobs.pope_eval.run_pope_unit`.
    """
    prompt = format_prompt(loaded[1], prompt_templates(loaded[2])["caption"])
    rows = run_item_batches(out, unit.name, asdict(unit), "image_id", [i for i, _ in images],
                            lambda batch: caption_images([images[k] for k in batch], unit, loaded, method_state,
                                                         prompt),
                            batch_size=batch_size, shard=shard, progress_bar=progress_bar, warm_up=True)
    frame = pd.DataFrame(rows)
    metrics = chair_metrics(dict(zip(frame["image_id"], frame["caption"])), ground_truth, synonyms)
    frame["mentions"] = [len(d.mentioned) for d in metrics.details]  # details follow the captions' order
    frame["hallucinated"] = [len(d.hallucinated) for d in metrics.details]
    return ChairOutcome(unit, metrics, frame, float(frame["seconds"].sum()), float(frame["seconds"].median()))
