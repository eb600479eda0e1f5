"""CHAIR evaluation of one method: caption each image, count hallucinated objects. Resumable."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from attnlab.evals.answer import format_prompt, generate_answer, prompt_templates
from attnlab.evals.chair import ChairMetrics, Synonyms, chair_metrics

from .sharded import run_items, unit_name


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


def caption_image(image_id: int, file_name: str, unit: ChairUnit, loaded, method_state, prompt: str) -> dict:
    """Caption one image under the method; returns its progress row."""
    from PIL import Image

    model, processor, spec = loaded
    image = Image.open(Path(unit.images) / file_name).convert("RGB")
    t0 = time.perf_counter()
    caption = generate_answer(model, processor, spec, image, prompt, max_new_tokens=unit.max_new_tokens,
                              **method_state.steering_for(image, prompt))
    return {"image_id": image_id, "image": file_name, "caption": caption, "seconds": time.perf_counter() - t0}


def run_chair_unit(unit: ChairUnit, images: list[tuple[int, str]], ground_truth: dict[int, set[str]],
                   synonyms: Synonyms, loaded, method_state, out: Path, progress_bar: bool = True,
                   shard=None) -> ChairOutcome:
    """Caption every image not yet done (durably), then score all captions.

    Args:
        unit: settings.
        images: ``(image_id, file_name)`` pairs to caption.
        ground_truth: ``{image_id: canonical object names}``.
        synonyms: CHAIR vocabulary.
        loaded: ``(model, processor, spec)``.
        method_state: object with ``steering_for(image, prompt)`` (see ``interventions.methods``).
        out: eval Run directory.
        progress_bar: show a tqdm bar.
        shard: this rank's place in a job of several workers (see :func:`attnlab.jobs.sharded.run_items`),
            or ``None``.

    Returns:
        The outcome; its ``captions`` table carries each caption's ``mentions`` and ``hallucinated`` counts
        (duplicates counted), from which CHAIR and its paired bootstrap recompute. The first image is captioned
        once untimed before timing starts (warm-up), as in :func:`attnlab.jobs.pope_eval.run_pope_unit`.
    """
    prompt = format_prompt(loaded[1], prompt_templates(loaded[2])["caption"])
    rows = run_items(out, unit.name, asdict(unit), "image_id", [i for i, _ in images],
                     lambda k: caption_image(*images[k], unit, loaded, method_state, prompt),
                     shard=shard, progress_bar=progress_bar, warm_up=True)
    frame = pd.DataFrame(rows)
    metrics = chair_metrics(dict(zip(frame["image_id"], frame["caption"])), ground_truth, synonyms)
    frame["mentions"] = [len(d.mentioned) for d in metrics.details]  # details follow the captions' order
    frame["hallucinated"] = [len(d.hallucinated) for d in metrics.details]
    return ChairOutcome(unit, metrics, frame, float(frame["seconds"].sum()), float(frame["seconds"].median()))
