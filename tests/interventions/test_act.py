"""ACT: sink detection, the calibration formula and the one-head-at-a-time search, by hand."""

import numpy as np
import torch

from attnlab.interventions.act import SINK_SET, ACTSinks, act_plan, act_search, hidden_sinks
from attnlab.kernels.api import attention


def test_hidden_sinks_by_hand():
    # Causal 4x4 map for one head: column sums / (N - j) = [2.0/4, 1.2/3, 0.5/2, 0.3/1]
    received = torch.tensor([[[2.0, 1.2, 0.5, 0.3]]])
    assert hidden_sinks(received, 0.1, drop_first=False).tolist() == [[[True, True, True, True]]]
    assert hidden_sinks(received, 0.3, drop_first=True).tolist() == [[[False, True, False, False]]]
    assert not hidden_sinks(torch.zeros(1, 1, 4), 0.1).any()


def test_act_formula_on_a_causal_map():
    g = torch.Generator().manual_seed(1)
    n = 6
    q, k, v = (torch.randn(1, 2, n, 4, generator=g) * 2 for _ in range(3))
    _, base = attention(q, k, v, causal=True, stats=("received",), impl="eager", return_pattern=True)
    sinks = hidden_sinks(base.received, 0.1)  # (1, 2, K)
    plan = act_plan([(0, 1)], n_heads=2, beta=0.4).for_layer(0)
    _, moved = attention(q, k, v, causal=True, plan=plan, key_sets={SINK_SET: sinks}, impl="eager", return_pattern=True)
    a, b = base.pattern.double().numpy()[0], moved.pattern.double().numpy()[0]
    assert np.allclose(a[0], b[0])  # head 0 is not calibrated
    s = sinks[0, 1].numpy()
    for i in range(n):
        row = a[1, i].copy()
        if row[s].sum() == 0 or row[~s].sum() == 0:
            assert np.allclose(b[1, i], row)
            continue
        expect = row.copy()
        expect[s] *= 0.4
        expect[~s] += 0.6 * row[s].sum() * row[~s] / row[~s].sum()
        assert np.allclose(b[1, i], expect, atol=1e-6)
    assert s.any()


def test_act_sinks_cached_for_decoding():
    fn = ACTSinks(0.1)
    calls = []
    first = fn(2, torch.zeros(1, 5, 8), {}, preview=lambda: calls.append(1) or torch.tensor([[[3.0, 2.0, 0.1, 0.1, 0.1]]]))
    again = fn(2, torch.zeros(1, 1, 8), {}, preview=lambda: calls.append(1) or torch.zeros(1, 1, 6))
    assert calls == [1] and torch.equal(first[SINK_SET], again[SINK_SET])


def test_search_keeps_heads_that_help():
    helpful = {(2, 0), (3, 1)}

    def score(plan, key_set_fn):
        if plan is None:
            return 0.5
        (layer, lp), = plan.layers.items()
        head = [i for i, f in enumerate(lp.reweight.factor) if f != 1.0][0]
        return 0.6 if (layer, head) in helpful else 0.45

    method = act_search(score, n_layers=4, n_heads=2)
    assert set(method.heads) == helpful
    assert sorted(method.plan.layers) == [2, 3] and method.search["baseline_score"] == 0.5
