"""Run POPE and CHAIR over several methods on the same data and assemble one comparison table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .chair import Synonyms, ground_truth_from_coco
from .chair_eval import ChairUnit, run_chair_unit
from .pope import load_pope_questions
from .pope_eval import PopeUnit, check_images, run_pope_unit
from .significance import Bootstrap, significance_table

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


def toy_dataset(spec, folder: Path, split: str = "test") -> BenchmarkFiles:
    """Write (once) the held-out toy-world scenes of a zoo LVLM's card and describe them as BenchmarkFiles.

    The card's ``data`` entry gives the world seed, the co-occurrence pairs and the index range of each split
    (``ranges``), so the scenes are exactly the ones the model never saw in training.
    """
    from attnlab.zoo.world import WorldConfig, write_world

    card_file = Path(spec.path) / "card.json"
    if not card_file.exists():
        raise ValueError(f"{spec.name} has no card.json with toy-world splits; give --questions and --images")
    data = json.loads(card_file.read_text()).get("data", {})
    ranges = data.get("ranges", {})
    if split not in ranges or "world_seed" not in data:
        raise ValueError(f"{spec.name}'s card names no toy-world '{split}' split; give --questions and --images")
    start, stop = ranges[split]
    config = WorldConfig(pairs=tuple(tuple(p) for p in data["pairs"])) if "pairs" in data else None
    target = folder / f"toy-world-{split}"
    if not (target / "world.json").exists():
        write_world(target, stop - start, data["world_seed"], config, start=start)
    pope = {s: str(target / f"pope_{s}.jsonl") for s in TOY_SPLITS}
    return BenchmarkFiles(pope=pope, images=str(target / "images"), annotations=str(target / "instances.json"),
                   synonyms=str(target / "synonyms.txt"))


def calibration_dataset(spec, folder: Path, questions: Path | None, images: Path | None,
                        test: BenchmarkFiles) -> BenchmarkFiles | None:
    """The questions methods calibrate on (ACT's head search, VAR's sink dimensions), disjoint from ``test``.

    Args:
        spec: the model's ModelSpec.
        folder: the eval Run directory (a zoo card's calibration scenes are written below it).
        questions: a POPE-format JSONL of calibration questions (``--calibration``); ``None`` = the model card's
            toy-world ``calibration`` split when it has one.
        images: the calibration questions' image folder (``None`` = the test images folder).
        test: the evaluation BenchmarkFiles, checked for shared questions.

    Returns:
        BenchmarkFiles whose ``pope`` holds the calibration file(s), or ``None`` when there is none.

    Raises:
        ValueError: a missing file, or calibration questions that also appear in the test set.
    """
    if questions is None:
        try:
            return toy_dataset(spec, folder, split="calibration")
        except ValueError:
            return None
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


def pope_table(loaded, methods: dict, data: BenchmarkFiles, out: Path, model_name: str, limit: int | None,
               max_new_tokens: int, progress: bool = True,
               shard=None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[tuple[str, str], pd.DataFrame]]:
    """Every method on every split.

    With ``shard`` (a :class:`~attnlab.core.distributed.Shard`), this rank answers its share of every unit and
    every rank returns the merged tables.

    Returns:
        ``(metrics, predictions, by_unit)``: one metrics row per (split, method) with total ``seconds``, the
        median seconds per question ``item_s_median`` and its ratio to the baseline's; the per-unit predictions
        named as the eval Run stores them; the same predictions keyed by ``(split, method)``.
    """
    rows, predictions, by_unit = [], {}, {}
    for split, file in data.pope.items():
        questions = load_pope_questions(file)[: limit or None]
        check_images(questions, Path(data.images))
        for name, state in methods.items():
            unit = PopeUnit(model_name, name, split, str(file), data.images, limit, max_new_tokens)
            outcome = run_pope_unit(unit, questions, loaded, state, out, progress, shard=shard)
            rows.append({"task": "pope", "split": split, "method": name, **_pope_fields(outcome.metrics),
                         "seconds": outcome.seconds, "item_s_median": outcome.median_seconds})
            predictions[f"predictions-{unit.name}"] = by_unit[(split, name)] = outcome.predictions
    return _with_time_ratio(pd.DataFrame(rows), ["task", "split"]), predictions, by_unit


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


def chair_table(loaded, methods: dict, data: BenchmarkFiles, chair: ChairData, out: Path, model_name: str,
                limit: int | None, max_new_tokens: int, progress: bool = True,
                shard=None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Every method's captions scored with CHAIR on the annotated images (``shard``: as in :func:`pope_table`).

    Returns:
        ``(metrics, captions, by_method)``: one metrics row per method (times as in :func:`pope_table`), the
        caption tables named as the eval Run stores them, and the same tables keyed by method.
    """
    synonyms, images = chair.synonyms, chair.images
    rows, captions, by_method = [], {}, {}
    for name, state in methods.items():
        unit = ChairUnit(model_name, name, data.annotations, data.images, limit, max_new_tokens)
        outcome = run_chair_unit(unit, images, chair.truth, synonyms, loaded, state, out, progress, shard=shard)
        m = outcome.metrics
        rows.append({"task": "chair", "split": "captions", "method": name, "chair_s": m.chair_s, "chair_i": m.chair_i,
                     "recall": m.recall, "mean_length": m.mean_length, "n": m.n_captions, "seconds": outcome.seconds,
                     "item_s_median": outcome.median_seconds})
        captions[f"captions-{unit.name}"] = by_method[name] = outcome.captions
    return _with_time_ratio(pd.DataFrame(rows), ["task", "split"]), captions, by_method


def compare_methods(loaded, methods: dict, data: BenchmarkFiles, out: Path, *, pope: bool = True,
                    chair: ChairData | None, pope_limit: int | None, chair_limit: int | None, max_new_tokens: int,
                    caption_tokens: int, progress: bool = True, shard=None,
                    bootstrap: Bootstrap = Bootstrap()) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every method on the POPE splits of ``data`` (unless ``pope=False``) and, when ``chair`` is given, on its
    CHAIR images, and each method's paired difference from ``baseline``.

    Returns:
        ``(summary, tables)``: one row per (task, split, method) with metrics, total seconds, the median
        seconds per item (after a warm-up item) and its ratio to the baseline's; and the per-unit predictions
        and captions, named as the eval Run stores them, plus (when a baseline ran beside other methods)
        ``significance``: each method's difference from the baseline with paired bootstrap intervals and
        McNemar's p-value (:func:`attnlab.evals.significance.significance_table`, settings ``bootstrap``).
    """
    frames, tables, pope_units, chair_units = [], {}, {}, {}
    if pope and data.pope:
        frame, predictions, pope_units = pope_table(loaded, methods, data, out, loaded[2].name, pope_limit,
                                                    max_new_tokens, progress=progress, shard=shard)
        frames.append(frame)
        tables.update(predictions)
    if chair is not None:
        frame, captions, chair_units = chair_table(loaded, methods, data, chair, out, loaded[2].name, chair_limit,
                                                   caption_tokens, progress=progress, shard=shard)
        frames.append(frame)
        tables.update(captions)
    significance = significance_table(pope_units, chair_units, settings=bootstrap)
    if not significance.empty:
        tables["significance"] = significance
    return pd.concat(frames, ignore_index=True), tables


def comparison_info(loaded, methods: dict, data: BenchmarkFiles, calibration: BenchmarkFiles | None,
                    setup_seconds: float, **extra):
    """The eval Run's manifest fields: model, data, calibration data, set-up time and each method's Plan."""
    from attnlab.core.runs import RunInfo

    plans = {name: getattr(state, "describe", lambda: None)() for name, state in methods.items()}
    return RunInfo(model=asdict(loaded[2]),
                   inputs={"dataset": asdict(data), "calibration": asdict(calibration) if calibration else None},
                   timings={"method_setup": setup_seconds}, extra={"methods": list(methods), **extra, "plans": plans})


def _pope_fields(m) -> dict:
    d = asdict(m)
    return {k: d[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")}


def _with_time_ratio(frame: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Add each row's median per-item time as a ratio to the baseline's on the same task and split (NaN without
    one). Medians after a warm-up item, not totals: one slow first item (compilation) must not set the ratio."""
    if frame.empty:
        return frame
    base = frame[frame["method"] == "baseline"].set_index(group)["item_s_median"]
    keys = list(zip(*(frame[g] for g in group)))
    frame["time_vs_baseline"] = [row_s / base[k] if k in base.index else float("nan")
                                 for k, row_s in zip(keys, frame["item_s_median"])]
    return frame
