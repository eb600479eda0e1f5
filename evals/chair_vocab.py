"""CHAIR's vocabulary and caption parser: synonym lists, phrase rules, singularisation.

Follows ``LisaAnne/Hallucination/utils/chair.py`` (Rohrbach et al., EMNLP 2018): lowercase,
tokenise, singularise, merge known phrases, drop "seat" next to "toilet", keep vocabulary words
and map them to canonical classes (duplicates kept). Departures, each to avoid a download or a
known quirk:

- tokenising is a regex (``[a-z0-9]+``) instead of ``nltk.word_tokenize``;
- singularising is a small suffix rule set that only accepts a singular found in the vocabulary
  (instead of ``pattern.en.singularize``), so "glasses" becomes "glass", never "glas";
- phrases are matched longest first over every multi-word synonym and rule (the original only
  merges two-word phrases, so its three-word "stove top oven" never matched).

Example:
    >>> [m.canonical for m in caption_objects("A baby elephant near two motor bikes.", Synonyms.coco())]
    ['elephant', 'motorcycle']
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType

_TOKEN = re.compile(r"[a-z0-9]+")

#: Two-word (and one three-word) phrases CHAIR merges into one word (``double_word_dict``),
#: plus "train track" from the re-implementation.
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate", "train track",
)  # fmt: skip
_COCO_ANIMALS = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub",
)  # fmt: skip
#: Phrase -> the word it stands for. A target outside the vocabulary (e.g. "train track",
#: "baby animal") consumes the phrase without a mention, as in the original.
COCO_PHRASE_RULES: Mapping[str, str] = MappingProxyType(
    {
        **{phrase: phrase for phrase in COCO_DOUBLE_WORDS},
        **{f"baby {a}": a for a in _COCO_ANIMALS},
        **{f"adult {a}": a for a in _COCO_ANIMALS},
        "passenger jet": "jet",
        "passenger train": "train",
        "bow tie": "tie",
        "toilet seat": "toilet",
        "wine glas": "wine glass",
    }
)
#: Word -> word whose presence in the same caption drops it ("seat" beside "toilet").
COCO_SUPPRESS: Mapping[str, str] = MappingProxyType({"seat": "toilet"})

#: (plural suffix, singular suffix), tried in order; a candidate counts only if it is in the vocabulary.
_SINGULAR_RULES = (
    ("children", "child"), ("people", "person"), ("men", "man"), ("mice", "mouse"), ("geese", "goose"),
    ("feet", "foot"), ("teeth", "tooth"), ("oxen", "ox"), ("ies", "y"), ("ies", "ie"), ("ves", "f"),
    ("ves", "fe"), ("es", ""), ("s", ""),
)  # fmt: skip


def _normalise(phrase: str) -> str:
    return " ".join(_TOKEN.findall(phrase.lower()))


def singularize(word: str, vocabulary: set[str] | frozenset[str]) -> str:
    """Singular of a lowercase word, if the vocabulary knows it; otherwise the word unchanged.

    Args:
        word: one lowercase token.
        vocabulary: the tokens that can appear in a synonym or phrase rule.

    Returns:
        ``word`` itself if it is in the vocabulary ("skis", "people", "bus"), else the first
        rule-made singular that is ("knives" -> "knife", "buses" -> "bus"), else ``word``.
    """
    if word in vocabulary:
        return word
    for plural, singular in _SINGULAR_RULES:
        if word.endswith(plural):
            candidate = word[: -len(plural)] + singular
            if candidate in vocabulary:
                return candidate
    return word


@dataclass(frozen=True)
class Mention:
    """One object mention in a caption.

    Attributes:
        word: the vocabulary word or phrase matched, after singularising and phrase rules.
        canonical: its class.
        position: index of its first token in the caption's token list.
    """

    word: str
    canonical: str
    position: int


@dataclass(frozen=True)
class Synonyms:
    """A CHAIR vocabulary: classes, their synonyms, phrase rules.

    Attributes:
        classes: canonical class names in file order.
        synonym_to_class: every synonym (canonical names included) -> canonical name.
        phrase_rules: phrase -> the word it stands for (see :data:`COCO_PHRASE_RULES`).
        suppress: word -> word whose presence drops it (see :data:`COCO_SUPPRESS`).
    """

    classes: tuple[str, ...]
    synonym_to_class: Mapping[str, str]
    phrase_rules: Mapping[str, str] = field(default_factory=dict)
    suppress: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        phrase_rules: Mapping[str, str] | None = None,
        suppress: Mapping[str, str] | None = None,
        source: str = "<text>",
    ) -> Synonyms:
        """Parse a synonym list: one class per line, comma-separated, canonical name first.

        Entries are lowercased and stripped (leading spaces and doubled spaces occur in CHAIR's
        file); blank lines and lines starting with ``#`` are skipped; repeats within a line are fine.

        Args:
            text: the file's content.
            phrase_rules: phrase -> word rules; none by default.
            suppress: word -> trigger rules; none by default.
            source: name used in error messages.

        Raises:
            ValueError: when a synonym belongs to two classes or the text holds no class.
        """
        synonym_to_class: dict[str, str] = {}
        classes: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            entries = [e for e in (_normalise(part) for part in line.split(",")) if e]
            canonical = entries[0]
            for entry in entries:
                owner = synonym_to_class.setdefault(entry, canonical)
                if owner != canonical:
                    raise ValueError(
                        f"{source}: line {number} gives {entry!r} to {canonical!r} but it already belongs to "
                        f"{owner!r}; keep each synonym in one class"
                    )
            classes.append(canonical)
        if not classes:
            raise ValueError(f"{source}: no classes found; write one comma-separated class per line")
        rules = {_normalise(k): _normalise(v) for k, v in (phrase_rules or {}).items()}
        return cls(tuple(classes), synonym_to_class, rules, dict(suppress or {}))

    @classmethod
    def from_file(cls, path: str | Path, **rules: Mapping[str, str] | None) -> Synonyms:
        """Read a synonym file (see :meth:`from_text`); ``rules`` are its keyword arguments."""
        return cls.from_text(Path(path).read_text(encoding="utf-8"), source=str(path), **rules)

    @classmethod
    def coco(cls) -> Synonyms:
        """COCO's 80 classes with CHAIR's synonyms, phrase rules and the toilet-seat rule."""
        text = resources.files("attnlab.evals").joinpath("data/chair_synonyms.txt").read_text(encoding="utf-8")
        return cls.from_text(
            text, phrase_rules=COCO_PHRASE_RULES, suppress=COCO_SUPPRESS, source="attnlab.evals/data/chair_synonyms.txt"
        )

    def canonical_of(self, name: str) -> str:
        """Canonical class of a name or synonym.

        Raises:
            ValueError: when the name is not in the vocabulary.
        """
        key = _normalise(name)
        if key not in self.synonym_to_class:
            raise ValueError(
                f"{name!r} is not in the synonym list; add it to a class line of the synonyms file "
                f"(classes: {', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})"
            )
        return self.synonym_to_class[key]

    @cached_property
    def _phrases(self) -> dict[tuple[str, ...], tuple[str, str | None]]:
        table: dict[tuple[str, ...], tuple[str, str | None]] = {
            tuple(syn.split()): (syn, canonical) for syn, canonical in self.synonym_to_class.items()
        }
        for phrase, target in self.phrase_rules.items():
            table[tuple(phrase.split())] = (target, self.synonym_to_class.get(target))
        return table

    @cached_property
    def _vocabulary(self) -> frozenset[str]:
        return frozenset(token for key in self._phrases for token in key)

    @cached_property
    def _longest(self) -> int:
        return max(len(key) for key in self._phrases)

    def tokens(self, caption: str) -> list[str]:
        """Lowercase, tokenise and singularise a caption against this vocabulary."""
        return [singularize(t, self._vocabulary) for t in _TOKEN.findall(caption.lower())]


def caption_objects(caption: str, synonyms: Synonyms) -> list[Mention]:
    """Object mentions in a caption, longest phrase first, duplicates kept.

    Args:
        caption: free text.
        synonyms: the vocabulary.

    Returns:
        Mentions in caption order.

    Example:
        >>> [m.word for m in caption_objects("A toilet seat and a seat; two hot dogs.", Synonyms.coco())]
        ['toilet', 'hot dog']
    """
    tokens = synonyms.tokens(caption)
    table = synonyms._phrases
    found: list[Mention] = []
    i = 0
    while i < len(tokens):
        for length in range(min(synonyms._longest, len(tokens) - i), 0, -1):
            hit = table.get(tuple(tokens[i : i + length]))
            if hit is not None:
                word, canonical = hit
                if canonical is not None:
                    found.append(Mention(word, canonical, i))
                i += length
                break
        else:
            i += 1
    words = {m.word for m in found}
    return [m for m in found if not (m.word in synonyms.suppress and synonyms.suppress[m.word] in words)]
