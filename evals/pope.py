"""POPE: yes/no object-probing questions, POPE's answer parser and its metrics.

Li et al., "Evaluating Object Hallucination in Large Vision-Language Models" (EMNLP 2023,
arXiv 2305.10355); reference code ``AoiDragon/POPE`` (``evaluate.py``). Building the question
splits lives in :mod:`attnlab.evals.pope_build`.

Example:
    >>> parse_pope_answer("No, there is not.")
    'no'
    >>> m = pope_metrics(["yes", "no", "yes", "no"], ["yes", "yes", "no", "no"])
    >>> (m.accuracy, m.precision, m.recall, m.yes_ratio)
    (0.5, 0.5, 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attnlab.core.datasets import POPE_KEYS, read_jsonl

POPE_LABELS = ("yes", "no")
#: Words that turn an answer into "no" (POPE's ``evaluate.py``; matched case-sensitively).
NEGATION_WORDS = frozenset({"No", "not", "no"})


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question.

    Attributes:
        question_id: id as in the file (POPE's released files count from 0).
        image: image file name.
        text: the question, e.g. ``"Is there a dog in the image?"``.
        label: ground truth, ``"yes"`` or ``"no"``.
        image_id: numeric image id when the file carries one, else ``None``.
    """

    question_id: int
    image: str
    text: str
    label: str
    image_id: int | None = None


@dataclass(frozen=True)
class PopeMetrics:
    """POPE's scores with "yes" as the positive class; fractions in [0, 1].

    Attributes:
        accuracy: (tp + tn) / n.
        precision: tp / (tp + fp), 0 when nothing was predicted "yes".
        recall: tp / (tp + fn), 0 when no label is "yes".
        f1: 2 p r / (p + r), 0 when p + r = 0.
        yes_ratio: share of "yes" predictions.
        n: number of questions.
        tp: label yes, predicted yes.
        fp: label no, predicted yes.
        tn: label no, predicted no.
        fn: label yes, predicted no.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    n: int
    tp: int
    fp: int
    tn: int
    fn: int


def parse_pope_answer(text: str) -> str:
    """Map a free-form answer to ``"yes"`` or ``"no"`` with POPE's rule.

    Keep the text before the first ".", remove ",", split on single spaces; if any word is
    exactly ``No``, ``not`` or ``no`` the answer is "no", otherwise "yes". The match is
    case-sensitive, as in ``AoiDragon/POPE/evaluate.py``: ``"NO"`` and ``"Not sure"`` count as
    "yes". Regression numbers depend on this parser, so it is reproduced exactly.

    Args:
        text: the model's answer.

    Returns:
        ``"yes"`` or ``"no"``.

    Raises:
        TypeError: when ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; pass the decoded answer string")
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if NEGATION_WORDS.intersection(words) else "yes"


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> PopeMetrics:
    """Score yes/no predictions against labels, "yes" being positive.

    Args:
        labels: ground truth, each ``"yes"`` or ``"no"``.
        predictions: parsed answers in the same order (see :func:`parse_pope_answer`).

    Returns:
        The :class:`PopeMetrics`; every ratio is 0 when its denominator is 0.

    Raises:
        ValueError: on unequal lengths or a value other than "yes"/"no".
    """
    if len(labels) != len(predictions):
        raise ValueError(
            f"labels has {len(labels)} entries but predictions has {len(predictions)}; "
            "pass one prediction per question, in question order"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        bad = [(i, v) for i, v in enumerate(values) if v not in POPE_LABELS]
        if bad:
            i, v = bad[0]
            raise ValueError(
                f"{name}[{i}] is {v!r}; every entry must be 'yes' or 'no' "
                "(parse raw answers with parse_pope_answer first)"
            )
    pairs = list(zip(labels, predictions))
    tp = sum(1 for y, p in pairs if y == "yes" and p == "yes")
    fp = sum(1 for y, p in pairs if y == "no" and p == "yes")
    tn = sum(1 for y, p in pairs if y == "no" and p == "no")
    fn = sum(1 for y, p in pairs if y == "yes" and p == "no")
    n = len(pairs)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return PopeMetrics(
        accuracy=_safe_div(tp + tn, n),
        precision=precision,
        recall=recall,
        f1=_safe_div(2 * precision * recall, precision + recall),
        yes_ratio=_safe_div(tp + fp, n),
        n=n,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def load_pope_questions(path: str | Path) -> list[PopeQuestion]:
    """Read a POPE question file (JSONL, one question per line; blank lines skipped).

    Args:
        path: file with lines like
            ``{"question_id": 0, "image": "x.jpg", "text": "Is there a dog in the image?", "label": "no"}``.

    Returns:
        The questions in file order.

    Raises:
        ValueError: naming the line number when a line is not JSON, lacks a required key or has a
            label other than "yes"/"no".
    """
    questions = []
    for number, obj in read_jsonl(path):
        missing = [k for k in POPE_KEYS if k not in obj]
        if missing:
            raise ValueError(
                f"{path}: line {number} lacks {missing}; each line needs the keys {list(POPE_KEYS)}"
            )
        if obj["label"] not in POPE_LABELS:
            raise ValueError(f"{path}: line {number} has label {obj['label']!r}; labels must be 'yes' or 'no'")
        questions.append(
            PopeQuestion(
                question_id=int(obj["question_id"]),
                image=str(obj["image"]),
                text=str(obj["text"]),
                label=obj["label"],
                image_id=None if obj.get("image_id") is None else int(obj["image_id"]),
            )
        )
    return questions


def load_pope_answers(path: str | Path, key: str = "answer") -> list[str]:
    """Read raw answers (JSONL, one per line, in question order), as POPE's ``evaluate.py`` expects.

    Args:
        path: file with lines like ``{"question": "...", "answer": "Yes, there is."}``.
        key: field holding the answer text.

    Returns:
        The raw answer strings; parse them with :func:`parse_pope_answer`.

    Raises:
        ValueError: naming the line number when a line is not JSON or lacks ``key``.
    """
    answers = []
    for number, obj in read_jsonl(path):
        if key not in obj:
            raise ValueError(f"{path}: line {number} lacks {key!r}; write each answer under {key!r} or pass key=")
        answers.append(str(obj[key]))
    return answers


def evaluate_pope(questions: Sequence[PopeQuestion], answers: Sequence[str]) -> PopeMetrics:
    """Parse raw answers with POPE's rule and score them against the questions' labels.

    Args:
        questions: from :func:`load_pope_questions`.
        answers: raw answer strings in the same order.

    Returns:
        The :class:`PopeMetrics`.

    Raises:
        ValueError: when the counts differ.
    """
    if len(questions) != len(answers):
        raise ValueError(
            f"{len(questions)} questions but {len(answers)} answers; answer every question, in file order"
        )
    return pope_metrics([q.label for q in questions], [parse_pope_answer(a) for a in answers])


def check_images(questions: list[PopeQuestion], images: Path) -> None:
    """Fail before any work when an image a question names is missing."""
    missing = [q.image for q in questions if not (images / q.image).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) named in the questions are missing from {images}, e.g. {missing[0]}")
