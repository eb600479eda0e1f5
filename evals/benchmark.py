"""Where a benchmark's files live, checked before any work: POPE question files, images, CHAIR annotations.

The runs over these files are jobs (:mod:`attnlab.jobs.compare`); the metrics are :mod:`attnlab.evals.pope` and
:mod:`attnlab.evals.chair`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .chair import Synonyms, ground_truth_from_coco
from .pope import check_images, load_pope_questions

TOY_SPLITS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class BenchmarkFiles:
    """Where a benchmark's questions, images and annotations live.

    Not the inputs themselves: a capture's list of inputs is :class:`attnlab.core.datasets.Dataset`.

    Attributes:
        pope: ``{split: question file}``.
        images: image directory.
        annotations: COCO instances file for CHAIR (``None``: no CHAIR).
        synonyms: CHAIR synonym file (``None``: COCO's list).
    """

    pope: dict
    images: str
    annotations: str | None = None
    synonyms: str | None = None


def calibration_dataset(questions: Path, images: Path | None, test: BenchmarkFiles) -> BenchmarkFiles:
    """The questions methods calibrate on (ACT's head search, VAR's sink dimensions), disjoint from ``test``.

    Args:
        questions: a POPE-format JSONL of calibration questions (``--calibration``). Without one, a zoo LVLM
            calibrates on its card's toy-world ``calibration`` split (:func:`attnlab.zoo.toy_llava.toy_dataset`).
        images: the calibration questions' image folder (``None`` = the test images folder).
        test: the evaluation BenchmarkFiles, checked for shared questions.

    Returns:
        BenchmarkFiles whose ``pope`` holds the calibration file.

    Raises:
        ValueError: a missing file, or calibration questions that also appear in the test set.
    """
    if not Path(questions).is_file():
        raise ValueError(f"--calibration {questions} does not exist; give a POPE-format JSONL of calibration questions")
    image_dir = Path(images or test.images)
    if not image_dir.is_dir():
        raise ValueError(f"--calibration-images {image_dir} is not a directory")
    calib = load_pope_questions(questions)
    check_images(calib, image_dir)
    seen = {((image_dir / q.image).resolve(), q.text.strip().lower()) for q in calib}
    for split, file in test.pope.items():
        shared = [q for q in load_pope_questions(file)
                  if ((Path(test.images) / q.image).resolve(), q.text.strip().lower()) in seen]
        if shared:
            raise ValueError(f"--calibration {questions} shares {len(shared)} question(s) with the test split {split} "
                             f"(e.g. {shared[0].image}: {shared[0].text!r}); calibrate on questions the eval never asks")
    return BenchmarkFiles(pope={"calibration": str(questions)}, images=str(image_dir))


@dataclass
@dataclass
class ChairData:
    """Everything CHAIR needs, checked before any caption is generated."""

    synonyms: Synonyms
    truth: dict
    images: list


def prepare_chair(data: BenchmarkFiles, limit: int | None) -> ChairData:
    """Load the vocabulary and ground truth and check the images exist (fails before any work).

    The vocabulary is ``data.synonyms``, else a ``synonyms.txt`` beside a toy world's ``instances.json``
    (a folder with ``world.json``), else COCO's 80-class list.
    """
    ann = Path(data.annotations)
    if not ann.is_file():
        raise ValueError(f"--annotations {ann} does not exist")
    syn_file = data.synonyms or (ann.parent / "synonyms.txt" if (ann.parent / "world.json").exists() else None)
    synonyms = Synonyms.from_file(syn_file) if syn_file else Synonyms.coco()
    instances = json.loads(ann.read_text())
    truth = ground_truth_from_coco(instances, synonyms)
    images = [(im["id"], im["file_name"]) for im in instances["images"]][: limit or None]
    missing = [f for _, f in images if not (Path(data.images) / f).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} annotated image(s) are missing from {data.images}, e.g. {missing[0]}")
    return ChairData(synonyms, {i: truth[i] for i, _ in images}, images)
