"""CHAIR: object hallucination in captions (Rohrbach et al., EMNLP 2018, "Object Hallucination in
Image Captioning"), with the Recall of the OPERA-style re-implementation.

CHAIR_i = hallucinated object mentions / object mentions (pooled over captions, duplicates
counted); CHAIR_s = captions with at least one hallucinated object / captions;
Recall = sum |mentioned ∩ GT| / sum |GT|. Caption parsing lives in :mod:`attnlab.evals.chair_vocab`.

Example:
    >>> syn = Synonyms.coco()
    >>> m = chair_metrics({1: "A dog, two puppies and a cat on a sofa."}, {1: {"dog", "couch"}}, syn)
    >>> (m.chair_s, m.chair_i, m.recall)
    (1.0, 0.25, 1.0)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attnlab.core.datasets import read_jsonl
from attnlab.evals.chair_vocab import COCO_PHRASE_RULES, COCO_SUPPRESS, Mention, Synonyms, caption_objects

__all__ = [
    "COCO_PHRASE_RULES",
    "COCO_SUPPRESS",
    "CaptionChair",
    "ChairMetrics",
    "Mention",
    "Synonyms",
    "caption_length",
    "caption_objects",
    "chair_metrics",
    "ground_truth_from_coco",
    "load_captions",
]


@dataclass(frozen=True)
class CaptionChair:
    """CHAIR details for one caption.

    Attributes:
        image_id: the image.
        caption: the caption as given.
        words: vocabulary words found, in order, duplicates kept (``"dogs"`` appears as ``"dog"``).
        mentioned: canonical classes of ``words``, same order, duplicates kept.
        hallucinated: the entries of ``mentioned`` absent from the ground truth, duplicates kept.
        ground_truth: the image's ground-truth classes, sorted.
        recalled: ground-truth classes the caption mentions, sorted.
        length: words in the caption (whitespace-separated chunks holding a letter or digit).
    """

    image_id: int | str
    caption: str
    words: tuple[str, ...]
    mentioned: tuple[str, ...]
    hallucinated: tuple[str, ...]
    ground_truth: tuple[str, ...]
    recalled: tuple[str, ...]
    length: int

    @property
    def chair_i(self) -> float:
        """This caption's hallucinated share of mentions (0 without mentions)."""
        return len(self.hallucinated) / len(self.mentioned) if self.mentioned else 0.0

    @property
    def has_hallucination(self) -> bool:
        """Whether the caption counts towards CHAIR_s."""
        return bool(self.hallucinated)


@dataclass(frozen=True)
class ChairMetrics:
    """Pooled CHAIR scores; fractions in [0, 1] (papers report them x100).

    Attributes:
        chair_s: captions with a hallucination / captions.
        chair_i: hallucinated mentions / mentions (0 when nothing is mentioned).
        recall: recalled ground-truth classes / ground-truth classes, summed over captions.
        mean_length: mean words per caption (CHAIR depends strongly on length: always report it).
        n_captions: captions scored.
        n_mentions: object mentions, duplicates counted.
        n_hallucinated: hallucinated mentions, duplicates counted.
        n_ground_truth: ground-truth classes summed over captions.
        n_recalled: recalled classes summed over captions.
        details: per-caption :class:`CaptionChair`, in the captions' order.
    """

    chair_s: float
    chair_i: float
    recall: float
    mean_length: float
    n_captions: int
    n_mentions: int
    n_hallucinated: int
    n_ground_truth: int
    n_recalled: int
    details: tuple[CaptionChair, ...]


def caption_length(caption: str) -> int:
    """Words in a caption: whitespace-separated chunks holding at least one letter or digit."""
    return sum(1 for chunk in caption.split() if any(ch.isalnum() for ch in chunk))


def chair_metrics(
    captions: Mapping[int | str, str],
    ground_truth: Mapping[int | str, set[str]],
    synonyms: Synonyms,
) -> ChairMetrics:
    """Score captions with CHAIR_s, CHAIR_i, Recall and length.

    Args:
        captions: image id -> generated caption (one per image).
        ground_truth: image id -> canonical classes present (see :func:`ground_truth_from_coco`).
        synonyms: the vocabulary; ground-truth names are mapped through it too.

    Returns:
        The :class:`ChairMetrics`.

    Raises:
        ValueError: when a caption's image has no ground truth entry, or a ground-truth name is not
            in the vocabulary.
    """
    missing = [i for i in captions if i not in ground_truth]
    if missing:
        hint = ""
        if all(isinstance(i, str) for i in missing) and any(isinstance(k, int) for k in ground_truth):
            hint = " (caption ids are strings but ground-truth ids are ints: convert with int())"
        raise ValueError(
            f"{len(missing)} caption image ids have no ground truth, e.g. {missing[:3]!r}{hint}; "
            "build ground_truth over the same images as the captions"
        )
    details = []
    for image_id, caption in captions.items():
        truth = {synonyms.canonical_of(name) for name in ground_truth[image_id]}
        found = caption_objects(caption, synonyms)
        mentioned = tuple(m.canonical for m in found)
        details.append(
            CaptionChair(
                image_id=image_id,
                caption=caption,
                words=tuple(m.word for m in found),
                mentioned=mentioned,
                hallucinated=tuple(c for c in mentioned if c not in truth),
                ground_truth=tuple(sorted(truth)),
                recalled=tuple(sorted(truth.intersection(mentioned))),
                length=caption_length(caption),
            )
        )
    n = len(details)
    n_mentions = sum(len(d.mentioned) for d in details)
    n_hallucinated = sum(len(d.hallucinated) for d in details)
    n_truth = sum(len(d.ground_truth) for d in details)
    n_recalled = sum(len(d.recalled) for d in details)
    return ChairMetrics(
        chair_s=sum(d.has_hallucination for d in details) / n if n else 0.0,
        chair_i=n_hallucinated / n_mentions if n_mentions else 0.0,
        recall=n_recalled / n_truth if n_truth else 0.0,
        mean_length=sum(d.length for d in details) / n if n else 0.0,
        n_captions=n,
        n_mentions=n_mentions,
        n_hallucinated=n_hallucinated,
        n_ground_truth=n_truth,
        n_recalled=n_recalled,
        details=tuple(details),
    )


def _json_or_path(obj: str | Path | Mapping, what: str) -> Mapping:
    if isinstance(obj, Mapping):
        return obj
    with open(obj, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, Mapping):
        raise ValueError(f"{obj}: expected a COCO {what} JSON object, got a {type(data).__name__}")
    return data


def ground_truth_from_coco(
    instances: str | Path | Mapping,
    synonyms: Synonyms,
    captions: str | Path | Mapping | None = None,
) -> dict[int, set[str]]:
    """Ground-truth classes per image from COCO instance annotations (and optionally captions).

    The original CHAIR takes the union of instance annotations and the objects parsed from the
    reference captions; pass ``captions`` (COCO captions JSON) to do the same.

    Args:
        instances: COCO instances JSON (path or loaded dict) with ``categories``, ``images``,
            ``annotations``.
        synonyms: maps category names to canonical classes.
        captions: optional COCO captions JSON (path or dict) whose captions add parsed objects.

    Returns:
        image id -> set of canonical classes; every image in ``images`` appears, possibly empty.

    Raises:
        ValueError: when a key is missing, a category is not in the vocabulary or an annotation
            points at an unknown category.
    """
    data = _json_or_path(instances, "instances")
    for key in ("categories", "images", "annotations"):
        if key not in data:
            raise ValueError(f"COCO instances lack {key!r}; pass an instances_*.json file")
    names = {c["id"]: synonyms.canonical_of(c["name"]) for c in data["categories"]}
    truth: dict[int, set[str]] = {im["id"]: set() for im in data["images"]}
    for ann in data["annotations"]:
        if ann["category_id"] not in names:
            raise ValueError(f"annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
        truth.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    if captions is not None:
        for ann in _json_or_path(captions, "captions").get("annotations", []):
            found = caption_objects(ann["caption"], synonyms)
            truth.setdefault(ann["image_id"], set()).update(m.canonical for m in found)
    return truth


def _rows_from_file(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, Mapping) and "annotations" in data:
        return list(data["annotations"])
    if isinstance(data, Mapping):
        return [{"image_id": k, "caption": v} for k, v in data.items()]
    if isinstance(data, list):
        return data
    return [obj for _, obj in read_jsonl(path)]


def load_captions(path: str | Path) -> dict[int, str]:
    """Read generated captions, one per image.

    Accepts a COCO results list ``[{"image_id", "caption"}]``, the same as JSONL, a COCO captions
    file (``{"annotations": [...]}``) or a ``{"<image_id>": caption}`` object.

    Args:
        path: the captions file.

    Returns:
        int image id -> caption.

    Raises:
        ValueError: on a row without ``image_id``/``caption``, a non-integer id or two captions for
            one image.
    """
    path = Path(path)
    captions: dict[int, str] = {}
    for i, row in enumerate(_rows_from_file(path)):
        if not isinstance(row, Mapping) or "image_id" not in row or "caption" not in row:
            raise ValueError(f"{path}: entry {i} needs 'image_id' and 'caption' keys, got {row!r}")
        try:
            image_id = int(row["image_id"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {i} has image_id {row['image_id']!r}; ids must be integers") from err
        if image_id in captions:
            raise ValueError(f"{path}: image {image_id} has two captions; keep one caption per image")
        captions[image_id] = str(row["caption"])
    return captions
