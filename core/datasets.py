"""Datasets of inputs for a capture: prompts, images, or both, read from a file or a folder.

Accepted forms of ``--dataset PATH``:

- a text file (any suffix but ``.jsonl``/``.json``): one prompt per line, blank lines skipped;
- a JSONL file of prompts: ``{"text": ...}`` with an optional ``"image"`` and an optional ``"id"``;
- a POPE question file (JSONL whose lines carry ``question_id``, ``image``, ``text`` and ``label``):
  the question's text with its image, identified by ``question_id``;
- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.webp``), in name order; for a
  vision-language model every image gets the same ``prompt``.

Relative image paths are resolved against ``images`` when given, else against the dataset file's folder.
Item ``i`` is the ``i``-th input in file (or name) order; that index is what shards are cut by.

Example:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.txt"
    >>> _ = f.write_text("first prompt\\n\\nsecond prompt\\n")
    >>> [(it.index, it.text) for it in load_dataset(f).items]
    [(0, 'first prompt'), (1, 'second prompt')]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Keys every POPE question line carries (the released files also carry ``image_id``); a JSONL dataset whose
#: lines all have them is read as POPE questions.
POPE_KEYS = ("question_id", "image", "text", "label")


@dataclass(frozen=True)
class DatasetItem:
    """One input.

    Attributes:
        index: position in the dataset (0-based); shards and merged tables are ordered by it.
        id: the dataset's own identifier (POPE ``question_id``, a JSONL ``id``, an image file name, or the index).
        text: the prompt, or ``None`` for an image-only input.
        image: absolute image path, or ``None`` for a text-only input.
    """

    index: int
    id: str
    text: str | None
    image: str | None


@dataclass(frozen=True)
class Dataset:
    """A list of inputs and where they came from.

    Attributes:
        path: the ``--dataset`` path.
        kind: ``text``, ``jsonl``, ``pope`` or ``images``.
        items: the inputs in order.
    """

    path: str
    kind: str
    items: tuple[DatasetItem, ...]

    def modalities(self) -> tuple[bool, bool]:
        """``(has_text, has_images)``: whether any item carries a prompt / an image."""
        return any(i.text for i in self.items), any(i.image for i in self.items)


def load_dataset(path: str | Path, images: str | Path | None = None, prompt: str | None = None) -> Dataset:
    """Read a dataset (see the module docstring for the forms).

    Args:
        path: text file, JSONL file, POPE question file or image folder.
        images: folder that relative image paths are resolved against (``--image-dir``; default: the file's folder).
        prompt: for an image folder, the prompt given with every image (vision-language models).

    Raises:
        ValueError: a missing path, an empty dataset, a bad JSONL line (with its number), or a missing image,
            each with the fix.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--dataset {path} does not exist; give a text file, a JSONL file or an image folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        items = [DatasetItem(i, p.name, prompt, str(p.resolve())) for i, p in enumerate(files)]
        kind = "images"
    elif path.suffix.lower() in (".jsonl", ".json"):
        kind, items = _jsonl_items(path, Path(images) if images else path.parent)
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        items = [DatasetItem(i, str(i), text, None) for i, text in enumerate(t for t in lines if t)]
        kind = "text"
    if not items:
        raise ValueError(f"--dataset {path} holds no inputs; give prompts (one a line), JSONL lines or images")
    missing = [it.image for it in items if it.image and not Path(it.image).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) named in {path} do not exist, e.g. {missing[0]}; "
                         "give --image-dir DIR to resolve relative paths")
    return Dataset(str(path), kind, tuple(items))


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """A user's JSONL file as ``(line number, object)`` per non-blank line (numbers count from 1).

    The one reader of JSONL inputs (datasets, POPE questions, captions); a bad line is a ValueError naming the
    file, the line and the fix.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}); fix or remove that line, "
                                 "one JSON object a line") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {number} holds a {type(obj).__name__}, expected a JSON object")
            rows.append((number, obj))
    return rows


def _jsonl_items(path: Path, root: Path) -> tuple[str, list[DatasetItem]]:
    items, kinds = [], set()
    for number, obj in read_jsonl(path):
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise ValueError(f"{path}: line {number} has no non-empty \"text\"; each line needs {{\"text\": ...}}")
        pope = all(k in obj for k in POPE_KEYS)
        kinds.add("pope" if pope else "jsonl")
        image = obj.get("image")
        resolved = str((root / image).resolve()) if image and not Path(image).is_absolute() else image
        ident = obj["question_id"] if pope else obj.get("id", len(items))
        items.append(DatasetItem(len(items), str(ident), obj["text"], resolved))
    return ("pope" if kinds == {"pope"} else "jsonl"), items
