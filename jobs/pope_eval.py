"""POPE evaluation of one method on one question file, resumable, with per-question predictions kept."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from attnlab.evals.answer import format_prompt, generate_answer, prompt_templates
from attnlab.evals.pope import PopeMetrics, PopeQuestion, parse_pope_answer, pope_metrics

from .sharded import run_items, unit_name


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


def answer_question(q: PopeQuestion, unit: PopeUnit, loaded, method_state, template: str) -> dict:
    """Answer one question under the method; returns its progress row (answer, parsed prediction, seconds)."""
    from PIL import Image

    model, processor, spec = loaded
    image = Image.open(Path(unit.images) / q.image).convert("RGB")
    prompt = format_prompt(processor, template, q.text)
    t0 = time.perf_counter()
    answer = generate_answer(model, processor, spec, image, prompt, max_new_tokens=unit.max_new_tokens,
                             **method_state.steering_for(image, prompt))
    return {"question_id": q.question_id, "image": q.image, "text": q.text, "label": q.label, "answer": answer,
            "prediction": parse_pope_answer(answer), "seconds": time.perf_counter() - t0}


def pope_outcome(unit: PopeUnit, rows: list[dict]) -> PopeOutcome:
    """Metrics over the rows of every question (in question order); total and median seconds per question."""
    frame = pd.DataFrame(rows)
    metrics = pope_metrics(frame["label"].tolist(), frame["prediction"].tolist())
    return PopeOutcome(unit, metrics, frame, float(frame["seconds"].sum()), float(frame["seconds"].median()))


def run_pope_unit(unit: PopeUnit, questions: list[PopeQuestion], loaded, method_state, out: Path,
                  progress_bar: bool = True, shard=None) -> PopeOutcome:
    """Answer every question not yet done, append each answer durably, and return metrics over all.

    Args:
        unit: the unit settings.
        questions: the (limited) questions of the split.
        loaded: ``(model, processor, spec)``.
        method_state: object with ``steering_for(image, prompt) -> generate_answer's keyword arguments`` (see ``interventions.methods``).
        out: the eval Run directory.
        progress_bar: show a tqdm bar.
        shard: this rank's :class:`~attnlab.core.distributed.Shard` in a job of several workers (it answers
            its share of the questions, see :func:`attnlab.jobs.sharded.run_items`), or ``None``.

    The first question this process answers is answered once more, untimed, before timing starts (warm-up:
    kernel compilation, allocator and cache growth), so per-question seconds measure the steady state.
    """
    template = prompt_templates(loaded[2])["pope"]
    rows = run_items(out, unit.name, asdict(unit), "question_id", [q.question_id for q in questions],
                     lambda i: answer_question(questions[i], unit, loaded, method_state, template),
                     shard=shard, progress_bar=progress_bar, warm_up=True)
    return pope_outcome(unit, rows)
