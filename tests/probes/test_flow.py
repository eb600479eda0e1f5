"""Attention flow: exact max flows against known values, closed forms and the paper's networkx code path."""

import json

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from attnlab.probes.flow import attention_flow, flows_to_inputs
from attnlab.probes.max_flow import max_flows_from
from attnlab.probes.residual_attention import residual_augment


def networkx_flows(mats: np.ndarray, position: int) -> np.ndarray:
    """The paper's construction: the full ``(L+1) N`` node graph and Edmonds-Karp per input node."""
    n_layers, n, _ = mats.shape
    adj = np.zeros(((n_layers + 1) * n,) * 2)
    for i in range(1, n_layers + 1):
        adj[i * n : (i + 1) * n, (i - 1) * n : i * n] = mats[i - 1]
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph(), edge_attr="capacity")
    source = n_layers * n + position
    return np.array([nx.maximum_flow_value(graph, source, j, flow_func=nx.algorithms.flow.edmonds_karp)
                     for j in range(n)])


def augmented(rng, n_layers, n, *, causal=False, sharpness=4.0):
    mats = []
    for _ in range(n_layers):
        a = rng.random((n, n)) ** sharpness
        if causal:
            a = np.tril(a)
        mats.append(residual_augment(a / a.sum(-1, keepdims=True)))
    return np.stack(mats)


def test_textbook_graph_with_real_capacities():
    # CLRS Fig. 26.1 (max flow 23), capacities divided by 7.3 so they are not integers
    edges = {(0, 1): 16, (0, 2): 13, (1, 3): 12, (2, 1): 4, (2, 4): 14, (3, 2): 9, (3, 5): 20, (4, 3): 7, (4, 5): 4}
    rows, cols = zip(*edges)
    cap = sp.csr_array((np.array(list(edges.values())) / 7.3, (rows, cols)), shape=(6, 6))
    (value,), (bound,) = max_flows_from(cap, 0, [5])
    assert value == pytest.approx(23 / 7.3, abs=1e-14)
    assert 0 <= bound < 1e-14
    # into v1: its in-edges s->v1 16 and v2->v1 4, both fed (20); into v3: v1->v3 12 + v4->v3 7 (19);
    # into v4: only v2->v4 14, and v2 gets 13 from s plus 9 from v3 (14)
    values, _ = max_flows_from(cap, 0, [1, 3, 4])
    np.testing.assert_allclose(values, np.array([20, 19, 14]) / 7.3, atol=1e-14)


def test_leftovers_that_need_the_second_pass():
    # two source arcs, each followed by an arc of the same capacity: after flooring, each leftover fits
    # only its own narrow path, so the quick terminal-cut check fails and the contraction pass runs
    x1, x2 = 0.1234567891234567, 0.3141592653589793
    cap = sp.csr_array((np.array([x1, x2, x1, x2]), ([0, 0, 1, 2], [1, 2, 3, 3])), shape=(4, 4))
    (value,), (bound,) = max_flows_from(cap, 0, [3])
    assert value == pytest.approx(x1 + x2, abs=1e-16)
    assert 0 <= bound < 1e-16


def test_single_layer_flow_is_the_attention_row():
    mats = augmented(np.random.default_rng(0), 1, 5)
    flows, _ = flows_to_inputs(mats, 2)
    np.testing.assert_allclose(flows, mats[0, 2], atol=1e-15)


def test_two_layer_flow_is_the_sum_of_bottlenecks():
    # with one hidden layer every path is (p -> k -> j): max flow = sum_k min(A1[p, k], A0[k, j])
    rng = np.random.default_rng(1)
    mats = augmented(rng, 2, 7)
    flows, bounds = flows_to_inputs(mats, 0)
    expected = np.minimum(mats[1][0][:, None], mats[0]).sum(axis=0)
    np.testing.assert_allclose(flows, expected, atol=1e-15)
    assert bounds.max() < 1e-15


def test_capacities_below_the_integer_resolution_are_not_lost():
    # bottlenecks of 1e-11 vanish when capacities are floored at 2**-30; the refinement pass recovers them
    n = 3
    a0 = np.eye(n)
    a0[1] = [1e-11, 1 - 1e-11, 0]
    a1 = np.array([[0.5, 0.5 - 3e-12, 3e-12], [0, 1, 0], [0, 0, 1]])
    flows, bounds = flows_to_inputs(np.stack([a0, a1]), 0)
    expected = np.minimum(a1[0][:, None], a0).sum(axis=0)
    np.testing.assert_allclose(flows, expected, rtol=0, atol=1e-18)
    assert flows[0] == pytest.approx(0.5 + 1e-11, abs=1e-18)


@pytest.mark.parametrize("n_layers, n, causal, seed", [(3, 6, False, 0), (4, 8, True, 1), (5, 7, False, 2), (3, 10, True, 3)])
def test_agrees_with_networkx_edmonds_karp(n_layers, n, causal, seed):
    mats = augmented(np.random.default_rng(seed), n_layers, n, causal=causal)
    position = n - 1 if causal else 0
    flows, bounds = flows_to_inputs(mats, position)
    np.testing.assert_allclose(flows, networkx_flows(mats, position), rtol=0, atol=1e-6)
    np.testing.assert_allclose(flows, networkx_flows(mats, position), rtol=0, atol=1e-12)
    assert bounds.max() < 1e-12


def test_probe_on_a_trace_agrees_with_networkx(build_trace, patterns_for):
    pats = patterns_for(3, 2, 3, 6, seed=7)
    result = attention_flow(build_trace(patterns=pats))
    for b in range(2):
        mats = np.stack([residual_augment(p[b].mean(axis=0)) for p in pats])
        ref = networkx_flows(mats, 0)
        np.testing.assert_allclose(result.flow[b], ref, atol=1e-12)
        np.testing.assert_allclose(result.relevance[b], ref / ref.sum(), atol=1e-12)
    assert result.error_bound.max() < 1e-12


def test_padding_and_default_position(build_trace, patterns_for):
    n = 5
    pats = patterns_for(2, 1, 2, n, causal=True, seed=8)
    alone = attention_flow(build_trace(patterns=pats, causal=True))
    padded = []
    for p in pats:
        big = np.zeros((1, 2, n + 1, n + 1))
        big[:, :, :n, :n] = p
        big[:, :, n, :n] = p[:, :, -1]  # whatever a right-pad row holds is ignored
        padded.append(big)
    result = attention_flow(build_trace(patterns=padded, causal=True, token_mask=[[True] * n + [False]]))
    assert alone.positions == result.positions == (n - 1,)
    np.testing.assert_allclose(result.relevance[0, :n], alone.relevance[0], atol=1e-12)
    assert result.relevance[0, n] == 0


def test_missing_pattern_names_the_capture_option(build_trace):
    with pytest.raises(ValueError, match=r"Capture\(pattern=True\)"):
        attention_flow(build_trace(resid=[np.zeros((1, 3, 4))]))


def test_result_tables(build_trace, patterns_for):
    result = attention_flow(build_trace(patterns=patterns_for(2, 1, 2, 4)))
    assert len(result.to_frame()) == 4
    data = json.loads(json.dumps(result.to_dict()))
    assert data["probe"] == "flow"
    assert sum(data["relevance"][0]) == pytest.approx(1.0)
