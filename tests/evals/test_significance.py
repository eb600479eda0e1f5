"""Paired significance of eval differences, recomputed with independent implementations.

Oracles: McNemar's exact p-value as a hand-summed binomial tail (math.comb); the bootstrap as a plain Python loop
over the same seeded generator, scoring each resample with the eval's own metric functions (pope_metrics) or a
hand-written CHAIR; and scipy.stats.bootstrap (paired, percentile) for the interval, within its Monte Carlo error.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import bootstrap as scipy_bootstrap

from attnlab.evals.pope import pope_metrics
from attnlab.evals.significance import (Bootstrap, chair_differences, format_differences, mcnemar_exact,
                                        pope_differences, significance_table)


def pope_frames(labels, base, method):
    ids = list(range(100, 100 + len(labels)))
    make = lambda preds: pd.DataFrame({"question_id": ids, "label": labels, "prediction": preds})  # noqa: E731
    return make(base), make(method)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2, written out: twice the smaller tail, capped at 1."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_mcnemar_on_a_hand_made_table():
    # 10 questions: 3 both right, 1 only the baseline right, 5 only the method right, 1 both wrong.
    labels = ["yes"] * 10
    base = ["yes"] * 3 + ["yes"] + ["no"] * 5 + ["no"]
    meth = ["yes"] * 3 + ["no"] + ["yes"] * 5 + ["no"]
    b, c, p = mcnemar_exact(np.array([x == "yes" for x in base]), np.array([x == "yes" for x in meth]))
    assert (b, c) == (1, 5)
    assert p == pytest.approx((1 + 6) * 2 / 64, abs=1e-12)  # P(X<=1) + P(X>=5), X ~ Bin(6, 1/2)
    rows = pope_differences(*pope_frames(labels, base, meth), Bootstrap(n_resamples=50))
    acc = rows[0]
    assert acc["metric"] == "accuracy" and acc["difference"] == pytest.approx(0.4)
    assert acc["p_value"] == pytest.approx(binomial_two_sided(5, 6)) and not acc["distinguishable"]
    # No discordant pair: nothing to test, p = 1.
    assert mcnemar_exact(np.array([True, False]), np.array([True, False]))[2] == 1.0


def random_pope(n=150, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["yes", "no"], n)
    base = np.where(rng.random(n) < 0.75, labels, np.where(labels == "yes", "no", "yes"))
    meth = np.where(rng.random(n) < 0.15, np.where(base == "yes", "no", "yes"), base)  # flips 15% of answers
    return pope_frames(list(labels), list(base), list(meth))


def loop_bootstrap(n, settings, diff):
    rng = np.random.default_rng(settings.seed)
    values = [diff([int(rng.integers(0, n)) for _ in range(n)]) for _ in range(settings.n_resamples)]
    alpha = 1 - settings.confidence
    return np.quantile(values, [alpha / 2, 1 - alpha / 2]), np.std(values)


def test_pope_intervals_match_a_plain_loop_and_scipy():
    base, meth = random_pope()
    settings = Bootstrap(n_resamples=400, seed=7)
    acc, f1 = pope_differences(base, meth, settings)
    y, pb, pm = base["label"].tolist(), base["prediction"].tolist(), meth["prediction"].tolist()

    def metric_diff(name):
        return lambda idx: (getattr(pope_metrics([y[i] for i in idx], [pm[i] for i in idx]), name)
                            - getattr(pope_metrics([y[i] for i in idx], [pb[i] for i in idx]), name))

    for row, name in ((acc, "accuracy"), (f1, "f1")):
        (low, high), _ = loop_bootstrap(len(y), settings, metric_diff(name))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        assert row["difference"] == pytest.approx(metric_diff(name)(range(len(y))), abs=1e-12)
    # McNemar on the same table, by hand.
    right_b = [a == l for a, l in zip(pb, y)]
    right_m = [a == l for a, l in zip(pm, y)]
    b = sum(rb and not rm for rb, rm in zip(right_b, right_m))
    c = sum(rm and not rb for rb, rm in zip(right_b, right_m))
    assert (acc["discordant_base"], acc["discordant_method"]) == (b, c)
    assert acc["p_value"] == pytest.approx(binomial_two_sided(c, b + c), rel=1e-9)
    # scipy's paired percentile bootstrap draws other resamples: its endpoints agree within Monte Carlo error.
    # An endpoint of B resamples has sd ~ 0.06 * (bootstrap sd) at 95% (normal approximation); two independent
    # estimates differ by sd ~ 0.085 * that, so 0.35 * (bootstrap sd) is a 4-sigma bound.
    settings = Bootstrap(n_resamples=2000, seed=7)
    acc, _ = pope_differences(base, meth, settings)
    _, spread = loop_bootstrap(len(y), Bootstrap(n_resamples=300, seed=3), metric_diff("accuracy"))
    ok_b = np.array(right_b, float)
    ok_m = np.array(right_m, float)
    ref = scipy_bootstrap((ok_m, ok_b), lambda m, b, axis: m.mean(axis) - b.mean(axis), paired=True, vectorized=True,
                          n_resamples=2000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(11)).confidence_interval
    assert abs(acc["ci_low"] - ref.low) < 0.35 * spread and abs(acc["ci_high"] - ref.high) < 0.35 * spread


def chair_by_hand(hallucinated, mentions, idx):
    s = sum(1 for i in idx if hallucinated[i] > 0) / len(idx)
    total = sum(mentions[i] for i in idx)
    return s, (sum(hallucinated[i] for i in idx) / total if total else 0.0)


def test_chair_intervals_match_a_plain_loop():
    rng = np.random.default_rng(4)
    n = 60
    mentions_b, mentions_m = rng.integers(0, 6, n), rng.integers(0, 6, n)
    hall_b = np.minimum(mentions_b, rng.integers(0, 3, n))
    hall_m = np.minimum(mentions_m, rng.integers(0, 2, n))  # fewer hallucinations
    ids = rng.permutation(1000)[:n]
    base = pd.DataFrame({"image_id": ids, "mentions": mentions_b, "hallucinated": hall_b})
    meth = pd.DataFrame({"image_id": ids, "mentions": mentions_m, "hallucinated": hall_m}).iloc[::-1]  # any order
    settings = Bootstrap(n_resamples=300, seed=5)
    s_row, i_row = chair_differences(base, meth, settings)
    for row, k in ((s_row, 0), (i_row, 1)):
        diff = lambda idx: chair_by_hand(hall_m, mentions_m, idx)[k] - chair_by_hand(hall_b, mentions_b, idx)[k]  # noqa: E731
        (low, high), _ = loop_bootstrap(n, settings, diff)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        assert row["difference"] == pytest.approx(diff(range(n)), abs=1e-12)
        assert row["distinguishable"] == (low > 0 or high < 0)


def test_table_marks_noise_and_refuses_unpaired_items():
    labels = ["yes", "no"] * 20
    base, same = pope_frames(labels, labels, labels)
    table = significance_table({("random", "baseline"): base, ("random", "act"): same}, {},
                               settings=Bootstrap(n_resamples=100))
    assert list(table["metric"]) == ["accuracy", "f1"] and not table["distinguishable"].any()
    assert (table["difference"] == 0).all() and set(format_differences(table)["beyond noise"]) == {"noise"}
    with pytest.raises(ValueError, match="same question_ids"):
        pope_differences(base, same.iloc[:-1])
    with pytest.raises(ValueError, match="n_resamples"):
        Bootstrap(n_resamples=0)


def test_eval_compare_json_recomputes_from_stored_predictions(tiny_dir, tmp_path):
    """The CLI's CIs and p-values equal a plain-loop recomputation on the tables the eval Run stored."""
    from typer.testing import CliRunner

    from attnlab.cli.main import app
    from attnlab.core.runs import Run
    from attnlab.zoo.world_files import write_world

    world = write_world(tmp_path / "world", 3, seed=5)
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, [
        "eval", "compare", "--model", str(tiny_dir("llava")), "--questions", str(world / "pope_random.jsonl"),
        "--annotations", str(world / "instances.json"), "--images", str(world / "images"),
        "--method", "baseline,mask:0.0-3,1.0-3", "--limit", "6", "--max-new-tokens", "2", "--caption-tokens", "4",
        "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rows = {(r["task"], r["metric"]): r for r in json.loads(res.stdout)["differences"]}
    assert set(rows) == {("pope", "accuracy"), ("pope", "f1"), ("chair", "chair_s"), ("chair", "chair_i")}
    run = Run.open(out)
    settings = Bootstrap(n_resamples=rows[("pope", "accuracy")]["n_resamples"], seed=rows[("pope", "f1")]["seed"])
    base, meth = (run.result(f"predictions-pope-pope_random-{m}") for m in ("baseline", "mask_0.0-3+1.0-3"))
    y, pb, pm = base["label"].tolist(), base["prediction"].tolist(), meth["prediction"].tolist()
    for name in ("accuracy", "f1"):
        diff = lambda idx: (getattr(pope_metrics([y[i] for i in idx], [pm[i] for i in idx]), name)  # noqa: E731
                            - getattr(pope_metrics([y[i] for i in idx], [pb[i] for i in idx]), name))
        (low, high), _ = loop_bootstrap(len(y), settings, diff)
        assert (rows[("pope", name)]["ci_low"], rows[("pope", name)]["ci_high"]) == pytest.approx((low, high))
    b = sum(p == l and q != l for p, q, l in zip(pb, pm, y))
    c = sum(q == l and p != l for p, q, l in zip(pb, pm, y))
    p_value = binomial_two_sided(c, b + c) if b + c else 1.0
    assert rows[("pope", "accuracy")]["p_value"] == pytest.approx(p_value)
    cb, cm = (run.result(f"captions-chair-{m}") for m in ("baseline", "mask_0.0-3+1.0-3"))
    assert cm["image_id"].tolist() == cb["image_id"].tolist()
    for k, name in enumerate(("chair_s", "chair_i")):
        diff = lambda idx: (chair_by_hand(cm["hallucinated"].tolist(), cm["mentions"].tolist(), idx)[k]  # noqa: E731
                            - chair_by_hand(cb["hallucinated"].tolist(), cb["mentions"].tolist(), idx)[k])
        (low, high), _ = loop_bootstrap(len(cb), settings, diff)
        assert (rows[("chair", name)]["ci_low"], rows[("chair", name)]["ci_high"]) == pytest.approx((low, high))
    assert "significance" in run.manifest["results"]
