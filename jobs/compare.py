"""Run evaluation methods on the same POPE and CHAIR items and assemble one comparison table.

:func:`run_comparison` is the one eval pipeline of the CLI and the demo: it builds each method
(:func:`attnlab.interventions.methods.build_method`), runs every method on every unit
(:mod:`attnlab.jobs.pope_eval`, :mod:`attnlab.jobs.chair_eval`) and describes the Run.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from attnlab.evals.benchmark import BenchmarkFiles, ChairData
from attnlab.evals.pope import check_images, load_pope_questions
from attnlab.evals.significance import Bootstrap, significance_table
from attnlab.interventions.methods import build_method

from . import EVAL_BATCH_SIZE
from .chair_eval import ChairUnit, run_chair_unit
from .pope_eval import PopeUnit, run_pope_unit

#: the eval Run's table of metrics per (task, split, method): the kind the dashboard's eval views read
SUMMARY_TABLE = "summary"


def pope_table(loaded, methods: dict, data: BenchmarkFiles, out: Path, model_name: str, limit: int | None,
               max_new_tokens: int, progress: bool = True, shard=None, batch_size: int = EVAL_BATCH_SIZE
               ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[tuple[str, str], pd.DataFrame]]:
    """Every method on every split.

    With ``shard`` (a :class:`~attnlab.core.distributed.Shard`), this rank answers its share of every unit and
    every rank returns the merged tables. Questions go ``batch_size`` at a time.

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
            outcome = run_pope_unit(unit, questions, loaded, state, out, progress, shard=shard,
                                    batch_size=batch_size)
            rows.append({"task": "pope", "split": split, "method": name, **_pope_fields(outcome.metrics),
                         "seconds": outcome.seconds, "item_s_median": outcome.median_seconds})
            predictions[f"predictions-{unit.name}"] = by_unit[(split, name)] = outcome.predictions
    return _with_time_ratio(pd.DataFrame(rows), ["task", "split"]), predictions, by_unit


def chair_table(loaded, methods: dict, data: BenchmarkFiles, chair: ChairData, out: Path, model_name: str,
                limit: int | None, max_new_tokens: int, progress: bool = True,
                shard=None, batch_size: int = EVAL_BATCH_SIZE
                ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Every method's captions scored with CHAIR on the annotated images (``shard``, ``batch_size``: as in
    :func:`pope_table`).

    Returns:
        ``(metrics, captions, by_method)``: one metrics row per method (times as in :func:`pope_table`), the
        caption tables named as the eval Run stores them, and the same tables keyed by method.
    """
    synonyms, images = chair.synonyms, chair.images
    rows, captions, by_method = [], {}, {}
    for name, state in methods.items():
        unit = ChairUnit(model_name, name, data.annotations, data.images, limit, max_new_tokens)
        outcome = run_chair_unit(unit, images, chair.truth, synonyms, loaded, state, out, progress, shard=shard,
                                 batch_size=batch_size)
        m = outcome.metrics
        rows.append({"task": "chair", "split": "captions", "method": name, "chair_s": m.chair_s, "chair_i": m.chair_i,
                     "recall": m.recall, "mean_length": m.mean_length, "n": m.n_captions, "seconds": outcome.seconds,
                     "item_s_median": outcome.median_seconds})
        captions[f"captions-{unit.name}"] = by_method[name] = outcome.captions
    return _with_time_ratio(pd.DataFrame(rows), ["task", "split"]), captions, by_method


def compare_methods(loaded, methods: dict, data: BenchmarkFiles, out: Path, *, pope: bool = True,
                    chair: ChairData | None, pope_limit: int | None, chair_limit: int | None, max_new_tokens: int,
                    caption_tokens: int, progress: bool = True, shard=None, batch_size: int = EVAL_BATCH_SIZE,
                    bootstrap: Bootstrap = Bootstrap()) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every method on the POPE splits of ``data`` (unless ``pope=False``) and, when ``chair`` is given, on its
    CHAIR images, and each method's paired difference from ``baseline``; items go ``batch_size`` at a time.

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
                                                    max_new_tokens, progress=progress, shard=shard,
                                                    batch_size=batch_size)
        frames.append(frame)
        tables.update(predictions)
    if chair is not None:
        frame, captions, chair_units = chair_table(loaded, methods, data, chair, out, loaded[2].name, chair_limit,
                                                   caption_tokens, progress=progress, shard=shard,
                                                   batch_size=batch_size)
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


def run_comparison(loaded, names: list[str], data, out: Path, *, calibration, chair, pope: bool = True,
                   pope_limit: int | None, chair_limit: int | None, max_new_tokens: int, caption_tokens: int,
                   progress: bool = True, shard=None, batch_size: int = EVAL_BATCH_SIZE, **info_fields):
    """Build each named method and run them all on the same items: the one eval pipeline of the CLI and the demo.

    Args:
        loaded: ``(model, processor, spec)`` of a vision-language model.
        names: method names (see :func:`build_method`); ``baseline`` gives the paired differences.
        data: the test :class:`~attnlab.evals.benchmark.BenchmarkFiles`; ``calibration`` the files ACT and VAR calibrate on.
        out: the eval's working folder (progress logs).
        chair: prepared CHAIR data or ``None``; ``pope``: run the POPE splits.
        pope_limit, chair_limit, max_new_tokens, caption_tokens, progress, shard, batch_size: as in
            :func:`compare_methods`.
        info_fields: extra manifest fields (``task``, ``command``, ``demo_version`` ...).

    Returns:
        ``(summary, tables, info)``: the metrics table, the per-unit and significance tables, and the Run's
        manifest fields (each method's Plan, its set-up time).
    """
    t0 = time.perf_counter()
    states = {name: build_method(name, loaded, calibration=calibration) for name in names}
    setup = time.perf_counter() - t0
    summary, tables = compare_methods(loaded, states, data, out, pope=pope, chair=chair, pope_limit=pope_limit,
                                      chair_limit=chair_limit, max_new_tokens=max_new_tokens,
                                      caption_tokens=caption_tokens, progress=progress, shard=shard,
                                      batch_size=batch_size)
    info = comparison_info(loaded, states, data, calibration, setup, limit=pope_limit, max_new_tokens=max_new_tokens,
                           caption_tokens=caption_tokens, batch_size=batch_size, **info_fields)
    return summary, tables, info


def save_comparison(out: Path, summary: pd.DataFrame, tables: dict[str, pd.DataFrame], info):
    """Make ``out`` the eval Run of a comparison (:func:`run_comparison`'s three results): the summary as
    :data:`SUMMARY_TABLE`, the other tables under their names; written atomically, manifest last.

    Returns:
        The :class:`~attnlab.core.runs.Run`.
    """
    from attnlab.core.runs import write_results

    return write_results(out, info, {SUMMARY_TABLE: summary, **tables}, kind="eval")
