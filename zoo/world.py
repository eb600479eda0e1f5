"""A toy world: small RGB scenes of coloured shapes with COCO boxes, captions and POPE questions.

Each scene holds 1-4 objects from twelve classes ("red circle", "yellow star", ...), one per cell of a
4x4 grid of 16 px cells on a 64x64 canvas. A few class pairs co-occur on purpose: when the anchor
of a pair is present, its partner is present with the pair's probability (0.8 by default), so a
model trained on the captions learns a language prior that can make it name the partner when it
is absent — the hallucination POPE's adversarial split and CHAIR look for.

Everything is a pure function of ``(seed, config)``; image ``i`` depends only on ``(seed, i)``, so a
world of 10 images is the prefix of a world of 20, and ``start=`` generates any index range alone.

Example:
    >>> world = generate_world(4, seed=0)
    >>> world.scenes[0].image.size, len(world.instances["images"])
    ((64, 64), 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from attnlab.evals.pope_build import POPE_SPLITS, PopeImage, build_pope_questions


@dataclass(frozen=True)
class ToyClass:
    """One object class: a shape in a colour, with the synonyms CHAIR accepts for it."""

    name: str
    shape: str
    rgb: tuple[int, int, int]
    synonyms: tuple[str, ...]


#: Every shape and every colour is used once, so a bare shape word ("star") names one class.
TOY_CLASSES: tuple[ToyClass, ...] = (
    ToyClass("red circle", "circle", (220, 40, 40), ("circle", "red disc", "disc", "red disk", "disk", "red dot")),
    ToyClass("blue square", "square", (40, 80, 230), ("square", "blue box", "box", "blue block", "block", "tile")),
    ToyClass("green triangle", "triangle", (40, 170, 60), ("triangle", "green wedge", "wedge")),
    ToyClass("yellow star", "star", (245, 215, 40), ("star", "yellow starburst", "starburst")),
    ToyClass("orange diamond", "diamond", (245, 140, 30), ("diamond", "orange rhombus", "rhombus", "lozenge")),
    ToyClass("purple cross", "cross", (140, 60, 190), ("cross", "purple plus", "plus", "plus sign")),
    ToyClass("pink heart", "heart", (250, 140, 190), ("heart", "pink love heart")),
    ToyClass("white ring", "ring", (245, 245, 245), ("ring", "white hoop", "hoop", "annulus")),
    ToyClass("black bar", "bar", (15, 15, 15), ("bar", "black stripe", "stripe", "black rectangle", "rectangle")),
    ToyClass("brown arrow", "arrow", (140, 85, 40), ("arrow", "brown pointer", "pointer")),
    ToyClass("cyan moon", "moon", (60, 220, 230), ("moon", "cyan crescent", "crescent")),
    ToyClass("teal hexagon", "hexagon", (0, 128, 128), ("hexagon", "teal hex", "hex")),
)
TOY_CLASS_NAMES = tuple(c.name for c in TOY_CLASSES)
#: class name -> its ToyClass.
CLASSES_BY_NAME = {c.name: c for c in TOY_CLASSES}
#: (anchor, partner, P(partner present | anchor present)); classes in no pair are placed uniformly.
DEFAULT_PAIRS: tuple[tuple[str, str, float], ...] = (
    ("red circle", "blue square", 0.8),
    ("yellow star", "cyan moon", 0.8),
    ("pink heart", "white ring", 0.8),
    ("brown arrow", "green triangle", 0.8),
)
CAPTION_TEMPLATES = ("{}.", "there is {}.", "an image of {}.", "this picture shows {}.")
SPLIT_NAMES = ("train", "calibration", "test")


def param_error(param: str, problem: str, fix: str) -> ValueError:
    """A ValueError naming the bad parameter, what is wrong with it and the fix."""
    return ValueError(f"{param}: {problem}; {fix}")


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the toy world (all validated on construction).

    Attributes:
        image_size: canvas side in px; 64 keeps a toy vision encoder cheap on CPU.
        grid: cells per side; objects take distinct cells so boxes never overlap.
        min_objects: fewest objects drawn per scene (a pair's partner may add one).
        max_objects: most objects per scene, never exceeded.
        classes: class names used, a subset of :data:`TOY_CLASS_NAMES`; order fixes category ids.
        pairs: ``(anchor, partner, probability)`` co-occurrence rules, each class in at most one.
        background: canvas colour; mid grey so white and black shapes both show.
        n_positives: POPE positives per image (POPE uses 3).
    """

    image_size: int = 64
    grid: int = 4
    min_objects: int = 1
    max_objects: int = 4
    classes: tuple[str, ...] = TOY_CLASS_NAMES
    pairs: tuple[tuple[str, str, float], ...] = DEFAULT_PAIRS
    background: tuple[int, int, int] = (96, 96, 96)
    n_positives: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "pairs", tuple((str(a), str(b), float(p)) for a, b, p in self.pairs))
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
        self._check_geometry()
        self._check_classes()

    def _check_geometry(self) -> None:
        if self.grid < 1 or self.image_size % self.grid:
            raise param_error("grid", f"{self.grid} does not divide image_size={self.image_size}", "pick a divisor, e.g. 4")
        if self.image_size // self.grid < 8:
            raise param_error("grid", f"cells of {self.image_size // self.grid} px are too small to draw a shape",
                        "use at least 8 px per cell: lower grid or raise image_size")  # fmt: skip
        if not 1 <= self.min_objects <= self.max_objects:
            problem = f"need 1 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects})"
            raise param_error("min_objects", problem, "set min_objects to at least 1 and at most max_objects")
        if self.grid**2 < self.max_objects:
            problem = f"{self.grid}x{self.grid} has {self.grid**2} cells, fewer than max_objects={self.max_objects}"
            raise param_error("grid", problem, "raise grid or lower max_objects")
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            raise param_error("background", f"{self.background} is not an RGB triple", "give three ints in 0..255")
        if self.n_positives < 1:
            raise param_error("n_positives", f"{self.n_positives} < 1", "POPE asks about 3 objects per image")

    def _check_classes(self) -> None:
        unknown = [c for c in self.classes if c not in CLASSES_BY_NAME]
        if unknown:
            raise param_error("classes", f"unknown class {unknown[0]!r}", f"pick from {list(TOY_CLASS_NAMES)}")
        if len(set(self.classes)) != len(self.classes):
            raise param_error("classes", "a class is listed twice", "list each class once")
        if len(self.classes) < self.max_objects:
            problem = f"{self.max_objects} exceeds the {len(self.classes)} classes (one object per class)"
            raise param_error("max_objects", problem, "lower max_objects or add classes")
        seen: set[str] = set()
        for anchor, partner, p in self.pairs:
            for name in (anchor, partner):
                if name not in self.classes:
                    raise param_error("pairs", f"{name!r} is not in classes", f"use names from {list(self.classes)}")
                if name in seen:
                    raise param_error("pairs", f"{name!r} is in two pairs or paired with itself", "use each class once")
                seen.add(name)
            if not 0.0 <= p <= 1.0:
                raise param_error("pairs", f"probability {p} of ({anchor!r}, {partner!r}) is outside [0, 1]", "use 0..1")
        if self.pairs and self.max_objects < 2:
            raise param_error("max_objects", "pairs need two objects but max_objects is 1", "raise it or pass pairs=()")

    @property
    def cell(self) -> int:
        """Cell side in px."""
        return self.image_size // self.grid

    @classmethod
    def from_dict(cls, values: Mapping) -> WorldConfig:
        """Build from a JSON-like mapping (e.g. ``world.json["config"]``), rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(values) - known)
        if extra:
            raise param_error("config", f"unknown keys {extra}", f"use only {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class WorldObject:
    """One drawn object.

    Attributes:
        name: its class.
        category_id: COCO category id (1-based position in ``config.classes``).
        bbox: COCO box ``[x, y, w, h]`` of the drawn pixels.
        area: drawn pixel count.
        cell: row-major grid cell index.
    """

    name: str
    category_id: int
    bbox: tuple[int, int, int, int]
    area: int
    cell: int


@dataclass(frozen=True)
class Scene:
    """One image with its objects and caption.

    Attributes:
        index: position in the world (image ``index`` depends only on the seed and ``index``).
        image_id: COCO image id, ``index + 1``.
        file_name: ``f"{image_id:06d}.png"``.
        image: the RGB picture, ``config.image_size`` square.
        objects: in reading order (by cell); annotations, captions and POPE positives use this order.
        caption: lists the objects in that order, e.g. ``"there is a red circle and a blue square."``.
    """

    index: int
    image_id: int
    file_name: str
    image: Image.Image
    objects: tuple[WorldObject, ...]
    caption: str

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in reading order."""
        return tuple(o.name for o in self.objects)


@dataclass(frozen=True)
class World:
    """A generated world: scenes plus COCO instances, COCO captions and the three POPE splits."""

    config: WorldConfig
    seed: int
    start: int
    scenes: tuple[Scene, ...]
    instances: dict = field(repr=False)
    captions: dict = field(repr=False)
    pope: dict[str, list[dict]] = field(repr=False)

    @property
    def ground_truth(self) -> dict[int, set[str]]:
        """image id -> class names present (for CHAIR)."""
        return {s.image_id: set(s.names) for s in self.scenes}


def _sample_classes(rng: np.random.Generator, config: WorldConfig) -> list[str]:
    """Draw a scene's classes. An anchor is drawable only while it can be placed whether or not its
    partner joins, and its coin is flipped after the draw, so P(partner | anchor) is the pair's p."""
    partner = {a: (b, p) for a, b, p in config.pairs}
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    chosen: list[str] = []
    banned: set[str] = set()
    while len(chosen) < target:
        pool = [
            c for c in config.classes
            if c not in chosen and c not in banned
            and (c not in partner or (partner[c][0] not in chosen and len(chosen) + 2 <= config.max_objects))
        ]  # fmt: skip
        if not pool:
            break
        name = pool[int(rng.integers(len(pool)))]
        chosen.append(name)
        if name in partner:
            mate, p = partner[name]
            if rng.random() < p:
                chosen.append(mate)
            else:
                banned.add(mate)
    return chosen


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, s: int) -> None:
    """Draw ``shape`` in white into the ``s``-px box at ``(x0, y0)`` of a mode-"L" mask."""
    x1, y1 = x0 + s - 1, y0 + s - 1
    cx, cy, r = x0 + (s - 1) / 2, y0 + (s - 1) / 2, (s - 1) / 2
    t = max(3, s // 3)
    a = (s - t) // 2

    def ring_points(n: int, radii: Sequence[float], phase: float) -> list[tuple[float, float]]:
        angles = phase + 2 * np.pi * np.arange(n) / n
        lengths = [radii[i % len(radii)] for i in range(n)]
        return [(cx + d * np.cos(v), cy + d * np.sin(v)) for d, v in zip(lengths, angles)]

    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "star":
        draw.polygon(ring_points(10, (r, 0.45 * r), -np.pi / 2), fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "cross":
        draw.rectangle([x0, y0 + a, x1, y0 + a + t - 1], fill=255)
        draw.rectangle([x0 + a, y0, x0 + a + t - 1, y1], fill=255)
    elif shape == "heart":
        draw.ellipse([x0, y0, cx, cy], fill=255)
        draw.ellipse([cx, y0, x1, cy], fill=255)
        draw.polygon([(x0, y0 + 0.3 * s), (x1, y0 + 0.3 * s), (cx, y1)], fill=255)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=255, width=max(2, s // 5))
    elif shape == "bar":
        draw.rectangle([x0, y0 + a, x1, y0 + a + t - 1], fill=255)
    elif shape == "arrow":
        draw.rectangle([x0, y0 + a, x0 + s // 2, y0 + a + t - 1], fill=255)
        draw.polygon([(x0 + s // 2, y0), (x1, cy), (x0 + s // 2, y1)], fill=255)
    elif shape == "moon":
        draw.ellipse([x0, y0, x1, y1], fill=255)
        shift = 0.4 * s
        draw.ellipse([x0 + shift, y0 - 0.15 * s, x1 + shift, y1 - 0.15 * s], fill=0)
    elif shape == "hexagon":
        draw.polygon(ring_points(6, (r,), 0.0), fill=255)
    else:
        raise AssertionError(f"no drawing for shape {shape!r}")


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def caption_for(names: Sequence[str], template: str) -> str:
    """Caption listing the objects, e.g. ``"there is a red circle, a star and a blue square."``."""
    items = [_article(n) for n in names]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return template.format(listed)


def render_scene(index: int, seed: int, config: WorldConfig) -> Scene:
    """Draw scene ``index`` of the world ``(seed, config)``; depends on nothing else."""
    rng = np.random.default_rng([seed, index])
    names = _sample_classes(rng, config)
    cells = rng.choice(config.grid**2, size=len(names), replace=False)
    order = np.argsort(cells, kind="stable")
    canvas = np.empty((config.image_size, config.image_size, 3), dtype=np.uint8)  # (H, W, 3)
    canvas[:] = config.background
    objects = []
    for k in order:
        name, cell = names[k], int(cells[k])
        size = int(rng.integers(round(0.6 * config.cell), config.cell - 1))
        ox, oy = (int(v) for v in rng.integers(0, config.cell - size + 1, size=2))
        # shapes stay inside their cell, so a cell-sized mask holds all their pixels
        mask = Image.new("L", (config.cell, config.cell), 0)
        _draw_shape(ImageDraw.Draw(mask), CLASSES_BY_NAME[name].shape, ox, oy, size)
        left, top, right, bottom = mask.getbbox()
        pixels = np.asarray(mask) > 0  # (cell, cell)
        cx, cy = (cell % config.grid) * config.cell, (cell // config.grid) * config.cell
        canvas[cy : cy + config.cell, cx : cx + config.cell][pixels] = CLASSES_BY_NAME[name].rgb
        box = (cx + left, cy + top, right - left, bottom - top)
        objects.append(WorldObject(name, config.classes.index(name) + 1, box, int(pixels.sum()), cell))
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    image_id = index + 1
    return Scene(index, image_id, f"{image_id:06d}.png", Image.fromarray(canvas, "RGB"), tuple(objects),
                 caption_for([o.name for o in objects], template))  # fmt: skip


def coco_instances(scenes: Sequence[Scene], config: WorldConfig) -> dict:
    """COCO instances dict (``categories``, ``images``, ``annotations``) for the scenes."""
    annotations = [
        {"id": n, "image_id": s.image_id, "category_id": o.category_id, "bbox": list(o.bbox), "area": o.area,
         "iscrowd": 0}
        for n, (s, o) in enumerate(((s, o) for s in scenes for o in s.objects), start=1)
    ]
    return {
        "info": {"description": "attnlab toy world"},
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in enumerate(config.classes, start=1)],
        "images": [{"id": s.image_id, "file_name": s.file_name, "width": config.image_size,
                    "height": config.image_size} for s in scenes],  # fmt: skip
        "annotations": annotations,
    }


def _check_seed(n_images: int, seed: int, start: int) -> None:
    if not isinstance(n_images, int | np.integer) or n_images <= 0:
        raise param_error("n_images", f"got {n_images!r}", "pass a positive integer")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise param_error("seed", f"got {seed!r}", "pass a non-negative integer")
    if not isinstance(start, int | np.integer) or start < 0:
        raise param_error("start", f"got {start!r}", "pass a non-negative image index")


def generate_world(n_images: int, seed: int, config: WorldConfig | None = None, *, start: int = 0) -> World:
    """Generate images ``start .. start + n_images - 1`` of the world ``(seed, config)`` in memory.

    POPE questions, their frequencies and co-occurrences are built over these images only.

    Args:
        n_images: number of images.
        seed: world seed (non-negative).
        config: world parameters (defaults if ``None``).
        start: index of the first image; ``generate_world(5, s, start=3)`` holds images 3..7 of
            ``generate_world(8, s)``.

    Returns:
        The :class:`World`.

    Raises:
        ValueError: on a non-positive ``n_images`` or a negative ``seed``/``start``.
    """
    _check_seed(n_images, seed, start)
    config = config or WorldConfig()
    scenes = tuple(render_scene(start + i, seed, config) for i in range(n_images))
    images = [PopeImage(s.file_name, s.image_id, s.names) for s in scenes]
    pope = {
        split: build_pope_questions(images, split, seed=int(np.random.SeedSequence([seed, 7, k]).generate_state(1)[0]),
                                    n_positives=config.n_positives)  # fmt: skip
        for k, split in enumerate(POPE_SPLITS)
    }
    captions = {
        "images": [{"id": s.image_id, "file_name": s.file_name} for s in scenes],
        "annotations": [{"id": s.image_id, "image_id": s.image_id, "caption": s.caption} for s in scenes],
    }
    return World(config, int(seed), int(start), scenes, coco_instances(scenes, config), captions, pope)


def split_ranges(n_images: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, range]:
    """Contiguous index ranges for train / calibration / test.

    Use with ``generate_world(len(r), seed, start=r.start)``: the images match those of one big world.

    Raises:
        ValueError: when fractions are not three non-negative numbers summing to 1, or a split with
            a positive fraction would be empty.
    """
    _check_seed(n_images, 0, 0)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise param_error("fractions", f"got {tuple(fractions)}", "give three non-negative numbers summing to 1")
    bounds = [0, *(int(round(n_images * f)) for f in np.cumsum(fractions)[:2]), n_images]
    ranges = {name: range(bounds[i], bounds[i + 1]) for i, name in enumerate(SPLIT_NAMES)}
    empty = [name for (name, r), f in zip(ranges.items(), fractions) if f > 0 and len(r) == 0]
    if empty:
        raise param_error("n_images", f"{n_images} images leave the {empty[0]} split empty", "generate more images")
    return ranges


def split_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for train / calibration / test worlds, derived from one seed."""
    _check_seed(1, seed, 0)
    children = np.random.SeedSequence(seed).spawn(len(SPLIT_NAMES))
    return {name: int(c.generate_state(1)[0]) for name, c in zip(SPLIT_NAMES, children)}
