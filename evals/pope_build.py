"""Build POPE's three question splits (random, popular, adversarial) from per-image object lists.

Follows ``utils.pope`` of ``AoiDragon/POPE`` (Li et al., EMNLP 2023, arXiv 2305.10355): per image,
the first ``n_positives`` ground-truth objects are asked about ("yes"), each followed by one
object absent from the image and not yet asked about ("no"). Negatives come from

- random: uniform over every category seen in the image set;
- popular: categories by image frequency, most frequent first;
- adversarial: categories by how many images they share with the current positive, most first
  (only those that co-occur at least once);

with a random fallback when a ranked list runs out. Departure: ties in the rankings are broken by
category name so the splits are reproducible (the reference sorts by count only).

Example:
    >>> images = [PopeImage("a.png", 1, ("cat", "dog")), PopeImage("b.png", 2, ("cat", "sofa"))]
    >>> [q["text"] for q in build_pope_questions(images, "popular", seed=0)][:2]
    ['Is there a cat in the image?', 'Is there a sofa in the image?']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POPE_SPLITS = ("random", "popular", "adversarial")
POPE_TEMPLATE = "Is there a {} in the image?"


@dataclass(frozen=True)
class PopeImage:
    """An image's name, id and ground-truth categories, in annotation order.

    Attributes:
        image: file name written into the questions.
        image_id: numeric id.
        objects: category names; repeats are ignored (the first occurrence keeps its place).
    """

    image: str
    image_id: int
    objects: tuple[str, ...]


def pope_question_text(name: str, template: str = POPE_TEMPLATE) -> str:
    """Fill POPE's template, using "an" before a vowel as POPE does.

    Args:
        name: the object category.
        template: a string with one ``{}`` after the article ``a``.

    Returns:
        E.g. ``"Is there an orange in the image?"``.
    """
    text = template.format(name)
    if name[:1].lower() in "aeiou":
        text = text.replace(f" a {name}", f" an {name}", 1)
    return text


def _unique(objects: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(objects))


def _ranked(counts: Counter) -> list[str]:
    return [name for name, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c > 0]


def category_frequency(images: Sequence[PopeImage]) -> Counter:
    """Number of images holding each category."""
    return Counter(name for im in images for name in _unique(im.objects))


def co_occurrence(images: Sequence[PopeImage]) -> dict[str, Counter]:
    """``result[a][b]``: number of images holding both ``a`` and ``b`` (``a != b``)."""
    table: dict[str, Counter] = {}
    for im in images:
        present = _unique(im.objects)
        for a in present:
            table.setdefault(a, Counter()).update(b for b in present if b != a)
    return table


def _pick_negative(
    ranked: Sequence[str], excluded: set[str], universe: list[str], rng: np.random.Generator
) -> str | None:
    for name in ranked:
        if name not in excluded:
            return name
    candidates = [name for name in universe if name not in excluded]
    if not candidates:
        return None
    return candidates[int(rng.integers(len(candidates)))]


def build_pope_questions(
    images: Sequence[PopeImage],
    split: str,
    *,
    seed: int,
    n_positives: int = 3,
    template: str = POPE_TEMPLATE,
) -> list[dict]:
    """Build one POPE split as a list of JSONL-ready dicts.

    Args:
        images: the image set; frequencies and co-occurrences are counted over it.
        split: ``"random"``, ``"popular"`` or ``"adversarial"``.
        seed: seeds the random choices (the random split and every fallback).
        n_positives: positives per image (POPE: 3); images with fewer objects give fewer.
        template: question template, see :func:`pope_question_text`.

    Returns:
        Dicts ``{"question_id", "image", "image_id", "text", "label"}``, question ids from 0,
        alternating yes/no per image. A positive is dropped, with its negative, only if every
        category is present or already asked (so labels stay balanced).

    Raises:
        ValueError: on an unknown split or ``n_positives < 1``.
    """
    if split not in POPE_SPLITS:
        raise ValueError(f"split must be one of {POPE_SPLITS}, got {split!r}")
    if n_positives < 1:
        raise ValueError(f"n_positives must be >= 1, got {n_positives}; POPE uses 3")
    rng = np.random.default_rng(seed)
    frequency = category_frequency(images)
    universe = sorted(frequency)
    popular = _ranked(frequency)
    co = co_occurrence(images)
    questions: list[dict] = []
    for im in images:
        present = _unique(im.objects)
        asked: set[str] = set()
        for positive in present[:n_positives]:
            if split == "random":
                ranked: Sequence[str] = ()
            elif split == "popular":
                ranked = popular
            else:
                ranked = _ranked(co.get(positive, Counter()))
            asked.add(positive)
            negative = _pick_negative(ranked, set(present) | asked, universe, rng)
            if negative is None:
                continue
            asked.add(negative)
            for name, label in ((positive, "yes"), (negative, "no")):
                questions.append(
                    {
                        "question_id": len(questions),
                        "image": im.image,
                        "image_id": im.image_id,
                        "text": pope_question_text(name, template),
                        "label": label,
                    }
                )
    return questions
