"""POPE evaluation of one method on one question file, resumable, with per-question predictions kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from attnlab.evals.answer import format_prompt, prompt_templates
from attnlab.evals.pope import PopeMetrics, PopeQuestion, parse_pope_answer, pope_metrics

from . import EVAL_BATCH_SIZE
from .answering import answer_batch
from .sharded import run_item_batches, unit_name


@dataclass(frozen=True)
class PopeUnit:
    """One (method, split) evaluation: what fixes its results.

    Attributes:
        model: model name or path.
        method: method name (``baseline``, ``vhr``, ``var``, ``act``, ``mask:SPEC``).
        split: split label (``random``, ``popular``, ``adversarial`` or the file stem).
        questions: question file path.
        images: image directory.
        limit: first N questions only (``None``: all).
        max_new_tokens: answer length cap.

    The batch size is not among them: a padded batch gives each question the answer it gets alone, so a resume may
    batch differently (after running out of memory, say); each row records the batch it was answered in.
    """

    model: str
    method: str
    split: str
    questions: str
    images: str
    limit: int | None
    max_new_tokens: int

    @property
    def name(self) -> str:
        """Unit name used for progress and result files."""
        return unit_name("pope", self.split, self.method)


@dataclass
class PopeOutcome:
    """Predictions and metrics of a finished unit."""

    unit: PopeUnit
    metrics: PopeMetrics
    predictions: pd.DataFrame
    seconds: float
    median_seconds: float


def answer_questions(batch: list[PopeQuestion], unit: PopeUnit, loaded, method_state, template: str) -> list[dict]:
    """Answer a batch of questions under the method in one padded generation; returns their progress rows (answer,
    parsed prediction, ``seconds``: the batch's time over its size, and ``batch``: its size)."""
    from PIL import Image

    images = [Image.open(Path(unit.images) / q.image).convert("RGB") for q in batch]
    prompts = [format_prompt(loaded[1], template, q.text) for q in batch]
    answers, seconds = answer_batch(loaded, method_state, images, prompts, unit.max_new_tokens)
    return [{"question_id": q.question_id, "image": q.image, "text": q.text, "label": q.label, "answer": answer,
             "prediction": parse_pope_answer(answer), "seconds": seconds, "batch": len(batch)}
            for q, answer in zip(batch, answers)]


def pope_outcome(unit: PopeUnit, rows: list[dict]) -> PopeOutcome:
    """Metrics over the rows of every question (in question order); total and median seconds per question (a
    batch's time shared by its questions)."""
    frame = pd.DataFrame(rows)
    metrics = pope_metrics(frame["label"].tolist(), frame["prediction"].tolist())
    return PopeOutcome(unit, metrics, frame, float(frame["seconds"].sum()), float(frame["seconds"].median()))


def run_pope_unit(unit: PopeUnit, questions: list[PopeQuestion], loaded, method_state, out: Path,
                  progress_bar: bool = True, shard=None, batch_size: int = EVAL_BATCH_SIZE) -> PopeOutcome:
    """Answer every question not yet done, append each answer durably, and return metrics over all.

    Args:
        unit: the unit settings.
        questions: the (limited) questions of the split.
        loaded: ``(model, processor, spec)``.
        method_state: object with ``steering_for(images, prompts) -> generate_answers' keyword arguments`` (see
            ``interventions.methods``).
        out: the eval Run directory.
        progress_bar: show a tqdm bar.
        shard: this rank's :class:`~attnlab.core.distributed.Shard` in a job of several workers (it answers
            its share of the questions, see :func:`attnlab.jobs.sharded.run_items`), or ``None``.
        batch_size: questions per padded generation.

    Questions go ``batch_size`` at a time (:func:`~attnlab.jobs.sharded.run_item_batches`). The first batch
    this process answers is answered once more, untimed, before timing starts (warm-up: kernel compilation, allocator
    and cache growth), so per-question seconds measure the steady state.
    """
    template = prompt_templates(loaded[2])["pope"]
    rows = run_item_batches(out, unit.name, asdict(unit), "question_id", [q.question_id for q in questions],
                            lambda batch: answer_questions([questions[i] for i in batch], unit, loaded, method_state,
                                                           template),
                            batch_size=batch_size, shard=shard, progress_bar=progress_bar, warm_up=True)
    return pope_outcome(unit, rows)
