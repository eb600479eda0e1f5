"""Paired significance of each method's difference from the baseline on the same POPE questions and CHAIR images.

Every function here is pure: it reads the prediction tables an eval Run stores (``predictions-pope-*`` with
``question_id``, ``label``, ``prediction``; ``captions-chair-*`` with ``image_id``, ``mentions``,
``hallucinated``) and returns numbers; nothing runs a model.

- POPE accuracy and F1: a paired bootstrap (Efron & Tibshirani 1993, ch. 13; the paired form as in Koehn 2004,
  "Statistical Significance Tests for Machine Translation Evaluation"): the same resampled questions score both
  methods, and the percentile interval of the difference is reported. Accuracy also gets McNemar's exact test
  (McNemar 1947; the exact form is a two-sided binomial test on the discordant pairs, ``scipy.stats.binomtest``).
- CHAIR_s and CHAIR_i: the same paired bootstrap over captions (images); CHAIR_i is recomputed as a ratio of sums
  on each resample (hallucinated mentions / mentions), as :func:`attnlab.evals.chair.chair_metrics` pools it.

A difference is *distinguishable from noise* when McNemar's p-value is below ``1 - confidence`` (accuracy) or
the bootstrap interval excludes 0 (F1, CHAIR_s, CHAIR_i). Resampling uses one seeded ``numpy.random.Generator``
per comparison, drawing ``integers(0, n, size=(chunk, n))`` row by row, so a plain loop of
``integers(0, n, size=n)`` with the same seed reproduces the resamples exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

_CHUNK = 256  # resamples drawn at once: bounds memory to chunk x n indices


@dataclass(frozen=True)
class Bootstrap:
    """Settings of the paired bootstrap.

    Attributes:
        n_resamples: resamples (2000).
        confidence: two-sided interval level (0.95); also sets the test level ``1 - confidence``.
        seed: seed of the ``numpy.random.Generator`` (one fresh generator per comparison).
    """

    n_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be >= 1; got {self.n_resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {self.confidence}")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den`` is 0 (the metrics' convention)."""
    return np.divide(num, den, out=np.zeros(np.shape(num), dtype=float), where=den != 0)


def accuracy_of(correct: np.ndarray) -> np.ndarray:
    """Accuracy of ``[..., n]`` bool rows -> ``[...]``."""
    return correct.mean(axis=-1)


def f1_of(label_yes: np.ndarray, pred_yes: np.ndarray) -> np.ndarray:
    """POPE's F1 ("yes" positive; 0 when undefined) of ``[..., n]`` bool rows -> ``[...]``."""
    tp = (label_yes & pred_yes).sum(-1)
    precision = _ratio(tp, pred_yes.sum(-1))
    recall = _ratio(tp, label_yes.sum(-1))
    return _ratio(2 * precision * recall, precision + recall)


def paired_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, settings: Bootstrap) -> np.ndarray:
    """The statistic on ``settings.n_resamples`` resamples of ``n`` paired items.

    Args:
        statistic: ``statistic(idx) -> [R]`` for an index matrix ``idx`` ``[R, n]`` (row r = resample r).
        n: paired items (questions or captions).
        settings: resamples and seed.

    Returns:
        ``[n_resamples]`` statistic values, resample order.
    """
    rng = np.random.default_rng(settings.seed)
    out = []
    for start in range(0, settings.n_resamples, _CHUNK):
        rows = min(_CHUNK, settings.n_resamples - start)
        out.append(statistic(rng.integers(0, n, size=(rows, n))))  # (rows, n)
    return np.concatenate(out)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap ``values`` (numpy's default linear quantiles)."""
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def mcnemar_exact(base_correct: np.ndarray, method_correct: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired right/wrong answers.

    Returns:
        ``(b, c, p)``: questions only the baseline got right, questions only the method got right, and the
        two-sided p-value of ``c`` successes in ``b + c`` trials at 1/2 (1.0 when there is no discordant pair).
    """
    b = int((base_correct & ~method_correct).sum())
    c = int((~base_correct & method_correct).sum())
    return b, c, (binomtest(c, b + c, 0.5).pvalue if b + c else 1.0)


def _paired(baseline: pd.DataFrame, method: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in [key, *columns] if c not in baseline or c not in method]
    if missing:
        raise ValueError(f"prediction tables lack column(s) {missing}; pass the tables an eval Run stores")
    merged = baseline[[key, *columns]].merge(method[[key, *columns]], on=key, suffixes=("_base", "_method"))
    if len(merged) != len(baseline) or len(merged) != len(method):
        raise ValueError(f"baseline ({len(baseline)} rows) and method ({len(method)} rows) do not share the same "
                         f"{key}s; compare methods on the same items")
    return merged


def _row(metric: str, test: str, base: float, method: float, values: np.ndarray, settings: Bootstrap,
         p_value: float = float("nan")) -> dict:
    low, high = percentile_interval(values, settings.confidence)
    alpha = 1 - settings.confidence
    noise_free = p_value < alpha if test == "mcnemar" else (low > 0 or high < 0)
    return {"metric": metric, "baseline": base, "value": method, "difference": method - base, "ci_low": low,
            "ci_high": high, "p_value": p_value, "test": test, "distinguishable": bool(noise_free)}


def pope_differences(baseline: pd.DataFrame, method: pd.DataFrame, settings: Bootstrap = Bootstrap()) -> list[dict]:
    """Accuracy and F1 differences (method - baseline) on the same POPE questions, with intervals and McNemar.

    Args:
        baseline, method: prediction tables with ``question_id``, ``label`` and ``prediction`` (``"yes"``/``"no"``).
        settings: bootstrap settings.

    Returns:
        Two rows (``accuracy``, ``f1``): ``baseline``, ``value``, ``difference``, ``ci_low``, ``ci_high``,
        ``p_value`` (McNemar, accuracy only), ``test``, ``distinguishable``, plus ``discordant_base``/``_method``.
    """
    pairs = _paired(baseline, method, "question_id", ["label", "prediction"])
    if not (pairs["label_base"] == pairs["label_method"]).all():
        raise ValueError("baseline and method tables disagree on a question's label; they are not the same questions")
    label = pairs["label_base"].to_numpy() == "yes"  # (n,)
    base_yes = pairs["prediction_base"].to_numpy() == "yes"  # (n,)
    meth_yes = pairs["prediction_method"].to_numpy() == "yes"  # (n,)
    base_ok, meth_ok = base_yes == label, meth_yes == label
    n = len(pairs)
    b, c, p = mcnemar_exact(base_ok, meth_ok)
    acc = paired_bootstrap(lambda i: accuracy_of(meth_ok[i]) - accuracy_of(base_ok[i]), n, settings)
    f1 = paired_bootstrap(lambda i: f1_of(label[i], meth_yes[i]) - f1_of(label[i], base_yes[i]), n, settings)
    rows = [_row("accuracy", "mcnemar", float(accuracy_of(base_ok)), float(accuracy_of(meth_ok)), acc, settings, p),
            _row("f1", "bootstrap", float(f1_of(label, base_yes)), float(f1_of(label, meth_yes)), f1, settings)]
    return [{**r, "n": n, "discordant_base": b, "discordant_method": c} for r in rows]


def chair_differences(baseline: pd.DataFrame, method: pd.DataFrame, settings: Bootstrap = Bootstrap()) -> list[dict]:
    """CHAIR_s and CHAIR_i differences (method - baseline) on the same images, with paired bootstrap intervals.

    Args:
        baseline, method: caption tables with ``image_id``, ``mentions`` (object mentions, duplicates counted)
            and ``hallucinated`` (hallucinated mentions), one row per caption.
        settings: bootstrap settings.

    Returns:
        Two rows (``chair_s``, ``chair_i``), fields as in :func:`pope_differences`.
    """
    pairs = _paired(baseline, method, "image_id", ["mentions", "hallucinated"])
    cols = {k: pairs[k].to_numpy() for k in pairs if k != "image_id"}  # each (n,)

    def chair_s(side: str, i):
        return (cols[f"hallucinated_{side}"][i] > 0).mean(-1)

    def chair_i(side: str, i):
        return _ratio(cols[f"hallucinated_{side}"][i].sum(-1), cols[f"mentions_{side}"][i].sum(-1))

    n, every = len(pairs), np.arange(len(pairs))
    rows = []
    for name, fn in (("chair_s", chair_s), ("chair_i", chair_i)):
        values = paired_bootstrap(lambda i: fn("method", i) - fn("base", i), n, settings)
        rows.append(_row(name, "bootstrap", float(fn("base", every)), float(fn("method", every)), values, settings))
    return [{**r, "n": n} for r in rows]


def significance_table(pope: Mapping[tuple[str, str], pd.DataFrame], chair: Mapping[str, pd.DataFrame], *,
                       baseline: str = "baseline", settings: Bootstrap = Bootstrap()) -> pd.DataFrame:
    """Every method against ``baseline`` on every POPE split and on the CHAIR captions.

    Args:
        pope: ``{(split, method): prediction table}``.
        chair: ``{method: caption table}``.
        baseline: the reference method's name; splits without it are skipped.
        settings: bootstrap settings (recorded in the table's ``n_resamples``, ``confidence``, ``seed``).

    Returns:
        One row per (task, split, method, metric); empty when there is no baseline to compare with.
    """
    rows = []
    for (split, name), frame in pope.items():
        if name != baseline and (split, baseline) in pope:
            for r in pope_differences(pope[(split, baseline)], frame, settings):
                rows.append({"task": "pope", "split": split, "method": name, **r})
    for name, frame in chair.items():
        if name != baseline and baseline in chair:
            for r in chair_differences(chair[baseline], frame, settings):
                rows.append({"task": "chair", "split": "captions", "method": name, **r})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.assign(n_resamples=settings.n_resamples, confidence=settings.confidence, seed=settings.seed)
    return table


def difference_records(table: pd.DataFrame | None) -> list[dict]:
    """The table as JSON-safe records: NaN (no McNemar p-value for F1 and CHAIR rows) becomes ``None``."""
    if table is None or table.empty:
        return []
    return [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
            for row in table.to_dict(orient="records")]


def format_differences(table: pd.DataFrame) -> pd.DataFrame:
    """A printable view: ``difference [low, high]``, the p-value, and ``yes``/``noise`` per row."""
    if table.empty:
        return table
    view = table[["task", "split", "method", "metric"]].copy()
    view["difference (CI)"] = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                               for d, lo, hi in zip(table["difference"], table["ci_low"], table["ci_high"])]
    view["p (McNemar)"] = ["" if np.isnan(p) else f"{p:.3g}" for p in table["p_value"]]
    view["beyond noise"] = np.where(table["distinguishable"], "yes", "noise")
    return view
