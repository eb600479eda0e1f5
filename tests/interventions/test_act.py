"""ACT: sink detection, the calibration formula and the one-head-at-a-time search, by hand."""

import numpy as np
import torch

from attnlab.interventions.act import SINK_SET, ACTSinks, act_plan, act_search, hidden_sinks
from attnlab.kernels.api import attention


def uniform_causal_received(n: int) -> torch.Tensor:
    """``[1, 1, n]`` column sums of a causal map whose every query attends uniformly to what it sees."""
    a = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # (Q, K) row i: 1/(i+1)
    return a.sum(0)[None, None]


def test_hidden_sinks_released_rule_by_hand():
    # Causal 4x4 map for one head: column sums / (N - j) = [2.0/4, 1.2/3, 0.5/2, 0.3/1]
    received = torch.tensor([[[2.0, 1.2, 0.5, 0.3]]])
    assert hidden_sinks(received, 0.1, drop_first=False, rule="act").tolist() == [[[True, True, True, True]]]
    assert hidden_sinks(received, 0.3, drop_first=True, rule="act").tolist() == [[[False, True, False, False]]]
    assert not hidden_sinks(torch.zeros(1, 1, 4), 0.1).any()
    # The default also asks for 5x the uniform share 1/4: no score of this map reaches 1.25.
    assert not hidden_sinks(received, drop_first=False).any()


def test_uniform_attention_has_no_sinks_by_default_at_nine_tokens():
    received = uniform_causal_received(9)  # c_j = (H_9 - H_j) / (9 - j), all >= 1/9 > 0.1
    assert hidden_sinks(received, drop_first=False, rule="act").all()  # the released rule flags every token
    assert not hidden_sinks(received, drop_first=False).any()  # c_0 = H_9 / 9 = 0.31 < 5 / 9


def test_default_rule_finds_a_planted_hidden_sink():
    n = 9
    a = torch.zeros(n, n)  # causal (Q, K)
    a[0, 0] = 1.0
    for i in range(1, 4):
        a[i, 0], a[i, 1 : i + 1] = 0.8, 0.2 / i
    others = [1, 2, 3]
    for i in range(4, n):
        rest = others + list(range(5, i + 1))
        a[i, 0], a[i, 4], a[i, rest] = 0.35, 0.6, 0.05 / len(rest)
    assert torch.allclose(a.sum(-1), torch.ones(n))
    received = a.sum(0)[None, None]  # (1, 1, K)
    # c_0 = (1 + 3 * 0.8 + 5 * 0.35) / 9 = 0.572 and c_4 = 0.6 exceed 5 / 9 = 0.556; nothing else comes close.
    assert hidden_sinks(received, drop_first=False)[0, 0].nonzero().flatten().tolist() == [0, 4]
    assert hidden_sinks(received)[0, 0].nonzero().flatten().tolist() == [4]  # the initial sink is left alone


def test_hidden_sinks_of_a_padded_item_equal_the_item_alone():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 2, 7, 7, generator=g) * 3
    a = torch.softmax(scores.masked_fill(~torch.tril(torch.ones(7, 7, dtype=torch.bool)), float("-inf")), -1)
    received = a.sum(-2)  # (1, 2, 7)
    alone = hidden_sinks(received, rule="relative", alpha=2.0)
    pad = torch.zeros(1, 2, 3)
    for padded, mask, real in (
        (torch.cat([received, pad], -1), torch.tensor([[True] * 7 + [False] * 3]), slice(0, 7)),  # right
        (torch.cat([pad, received], -1), torch.tensor([[False] * 3 + [True] * 7]), slice(3, 10)),  # left
    ):
        got = hidden_sinks(padded, rule="relative", alpha=2.0, key_mask=mask)
        assert torch.equal(got[..., real], alone) and not got[..., ~mask[0]].any()
    assert alone.any()


def test_act_formula_on_a_causal_map():
    g = torch.Generator().manual_seed(1)
    n = 6
    q, k, v = (torch.randn(1, 2, n, 4, generator=g) * 2 for _ in range(3))
    _, base = attention(q, k, v, causal=True, stats=("received",), impl="eager", return_pattern=True)
    sinks = hidden_sinks(base.received, 0.1, rule="act")  # (1, 2, K) the released rule: some sinks at 6 tokens
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
    """Sinks are found at a prefill from the layer's own attention, reused by the decoding steps after it (one query
    each), and found again at the next prompt's prefill; the hidden state is never read."""
    fn = ACTSinks(0.1, rule="act")
    calls = []
    first = fn(2, None, {}, preview=lambda: calls.append(1) or torch.tensor([[[3.0, 2.0, 0.1, 0.1, 0.1]]]),
               n_queries=5)
    again = fn(2, None, {}, preview=lambda: calls.append(1) or torch.zeros(1, 1, 6), n_queries=1)
    assert calls == [1] and torch.equal(first[SINK_SET], again[SINK_SET])
    assert first[SINK_SET].tolist() == [[[False, True, False, False, False]]]  # the first sink (key 0) dropped
    other = fn(2, None, {}, preview=lambda: calls.append(1) or torch.tensor([[[3.0, 0.1, 0.1, 2.0, 0.1, 0.1]]]),
               n_queries=6)
    assert calls == [1, 1] and other[SINK_SET].tolist() == [[[False, False, False, True, False, False]]]
    assert ACTSinks.reads_hidden is False  # so attach hooks no block for it


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
