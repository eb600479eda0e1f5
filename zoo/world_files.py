"""A toy world on disk: write a world as a dataset folder, recognise one, and describe its benchmark files.

A world folder holds ``images/*.png``, ``instances.json`` (COCO), ``captions.json``,
``pope_{random,popular,adversarial}.jsonl``, ``synonyms.txt`` and ``world.json`` (see :func:`write_world`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from attnlab.core.atomic import check_replaceable, replace_directory
from attnlab.evals.benchmark import TOY_SPLITS, BenchmarkFiles

from .world import CAPTION_TEMPLATES, CLASSES_BY_NAME, World, WorldConfig, generate_world, param_error


def pair_rates(world: World) -> dict[tuple[str, str], float | None]:
    """Observed P(partner | anchor) per configured pair (``None`` when the anchor never appears)."""
    rates: dict[tuple[str, str], float | None] = {}
    for anchor, partner, _ in world.config.pairs:
        with_anchor = [s for s in world.scenes if anchor in s.names]
        rates[(anchor, partner)] = (
            sum(partner in s.names for s in with_anchor) / len(with_anchor) if with_anchor else None
        )
    return rates


def synonyms_text(config: WorldConfig | None = None) -> str:
    """CHAIR synonym list for the classes: one line each, canonical name first, comma separated."""
    config = config or WorldConfig()
    return "".join(", ".join((n, *CLASSES_BY_NAME[n].synonyms)) + "\n" for n in config.classes)


def world_metadata(world: World) -> dict:
    """Parameters, classes and pair table, as written to ``world.json``."""
    observed = pair_rates(world)
    return {
        "format": "attnlab-toy-world",
        "version": 1,
        "seed": world.seed,
        "start": world.start,
        "n_images": len(world.scenes),
        "config": asdict(world.config),
        "classes": [{"id": i, **asdict(CLASSES_BY_NAME[n])} for i, n in enumerate(world.config.classes, start=1)],
        "pairs": [{"anchor": a, "partner": b, "p": p, "observed": observed[(a, b)]} for a, b, p in world.config.pairs],
        "caption_templates": list(CAPTION_TEMPLATES),
    }


def _write_files(world: World, root: Path) -> None:
    (root / "images").mkdir()
    for s in world.scenes:
        s.image.save(root / "images" / s.file_name, format="PNG")
    for name, obj in (("instances.json", world.instances), ("captions.json", world.captions),
                      ("world.json", world_metadata(world))):  # fmt: skip
        (root / name).write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    for split, questions in world.pope.items():
        lines = "".join(json.dumps(q) + "\n" for q in questions)
        (root / f"pope_{split}.jsonl").write_text(lines, encoding="utf-8")
    (root / "synonyms.txt").write_text(synonyms_text(world.config), encoding="utf-8")


def write_world(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    config: WorldConfig | None = None,
    *,
    start: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate a world and write it as a dataset directory.

    Writes ``images/*.png``, ``instances.json`` (COCO), ``captions.json`` (COCO captions),
    ``pope_{random,popular,adversarial}.jsonl``, ``synonyms.txt`` and ``world.json``. Files are
    written into a temporary sibling directory that is renamed into place, so a crash leaves
    either the old directory or the complete new one.

    Args:
        out_dir: target directory; created if missing.
        n_images: number of images.
        seed: world seed.
        config: world parameters (defaults if ``None``).
        start: index of the first image (for index-range splits, see :func:`split_ranges`).
        overwrite: replace an existing toy world at ``out_dir`` (never a folder that is not one, nor the
            current directory or a parent of it).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: on bad parameters, or a non-empty ``out_dir`` without ``overwrite=True``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise param_error("out_dir", f"{out} is a file", "choose a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise param_error("out_dir", f"{out} is not empty", "choose an empty directory or pass overwrite=True")
    check_replaceable(out, "world", world_kind, flag="out_dir")
    world = generate_world(n_images, seed, config, start=start)
    with replace_directory(out, "world", world_kind, flag="out_dir") as tmp:
        _write_files(world, tmp)
    return out


def world_kind(path: str | Path) -> str | None:
    """``"world"`` when ``path`` holds a toy world (its ``world.json`` says so), else ``None``."""
    try:
        meta = json.loads((Path(path) / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "world" if isinstance(meta, dict) and meta.get("format") == "attnlab-toy-world" else None


def benchmark_files(folder: str | Path, pope: bool = True) -> BenchmarkFiles:
    """The POPE splits, images, CHAIR annotations and synonyms of a world folder, as BenchmarkFiles.

    Args:
        folder: a folder :func:`write_world` wrote.
        pope: ``False`` describes only the images and CHAIR files (no POPE splits).
    """
    folder = Path(folder)
    splits = {s: str(folder / f"pope_{s}.jsonl") for s in TOY_SPLITS} if pope else {}
    return BenchmarkFiles(pope=splits, images=str(folder / "images"), annotations=str(folder / "instances.json"),
                          synonyms=str(folder / "synonyms.txt"))
