"""Rollout and flow of a pooled output (mean over real tokens, or the model's own sentence-transformers pooling)."""

import dataclasses
import json

import networkx as nx
import numpy as np
import pytest

from attnlab.hooks.pooling import sentence_pooling
from attnlab.probes.flow import attention_flow, flows_to_inputs
from attnlab.probes.residual_attention import augmented_attention
from attnlab.probes.rollout import attention_rollout
from attnlab.probes.tokens import MEAN_POOLED


def _with_pooling(trace, pooling):
    return dataclasses.replace(trace, meta=dataclasses.replace(trace.meta, pooling=pooling))


def networkx_pooled_flows(mats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The definition, built in full: ``(L+1) n`` layer nodes plus a source with an edge of capacity
    ``weights[k]`` to each top node ``(L, k)``; Edmonds-Karp to every input node."""
    n_layers, n, _ = mats.shape
    size = (n_layers + 1) * n + 1
    adj = np.zeros((size, size))
    for i in range(1, n_layers + 1):
        adj[i * n : (i + 1) * n, (i - 1) * n : i * n] = mats[i - 1]
    adj[-1, n_layers * n : (n_layers + 1) * n] = weights
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph(), edge_attr="capacity")
    return np.array([nx.maximum_flow_value(graph, size - 1, j, flow_func=nx.algorithms.flow.edmonds_karp)
                     for j in range(n)])


def test_mean_rollout_is_the_mean_of_the_token_rows(build_trace, patterns_for):
    n = 6
    for causal in (False, True):
        trace = build_trace(patterns=patterns_for(3, 1, 2, n, causal=causal, seed=2), causal=causal)
        rows = np.stack([attention_rollout(trace, position=k).layer_relevance[:, 0] for k in range(n)])  # (n, L, N)
        got = attention_rollout(trace, position="mean")
        assert got.positions == (MEAN_POOLED,)
        np.testing.assert_allclose(got.layer_relevance[:, 0], rows.mean(axis=0), atol=1e-12)
        assert got.relevance[0].sum() == pytest.approx(1.0, abs=1e-12)


def test_mean_rollout_of_uniform_causal_attention_is_uniform_after_the_receptive_field(build_trace, row_softmax):
    n = 7
    pats = [row_softmax(np.zeros((1, 1, n, n)), causal=True) for _ in range(3)]
    trace = build_trace(patterns=pats, causal=True)
    raw = attention_rollout(trace, position="mean").relevance[0]
    assert raw[0] > 2 * raw[-1]  # the early-token bias the paper warns of
    fixed = attention_rollout(trace, position="mean", receptive_field=True).relevance[0]
    np.testing.assert_allclose(fixed, np.full(n, 1 / n), atol=1e-12)


def test_one_layer_pooled_flow_by_hand():
    # one layer: input j receives sum_k min(1/n, A[k, j]) (each top node passes at most its 1/n share)
    a = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.05, 0.15, 0.8]])
    flows, bounds = flows_to_inputs(a[None], np.full(3, 1 / 3))
    np.testing.assert_allclose(flows, [1 / 3 + 1 / 3 + 0.05, 0.2 + 1 / 3 + 0.15, 0.1 + 0 + 1 / 3], atol=1e-12)
    assert (bounds < 1e-12).all()


@pytest.mark.parametrize("causal", [False, True])
def test_pooled_flow_matches_networkx_on_the_full_graph(build_trace, patterns_for, causal):
    n = 6
    trace = build_trace(patterns=patterns_for(3, 1, 2, n, causal=causal, seed=5), causal=causal)
    got = attention_flow(trace, position="mean")
    want = networkx_pooled_flows(augmented_attention(trace, 0, (0, 1, 2)), np.full(n, 1 / n))
    np.testing.assert_allclose(got.flow[0], want, atol=1e-9)
    np.testing.assert_allclose(got.relevance[0], want / want.sum(), atol=1e-9)
    assert got.positions == (MEAN_POOLED,)


def test_pooled_output_of_a_padded_item_equals_the_item_alone(build_trace, patterns_for):
    n = 5
    pats = patterns_for(2, 1, 2, n, seed=8)
    alone = build_trace(patterns=pats)
    padded = []
    for p in pats:  # right padding by three positions
        big = np.zeros((1, 2, n + 3, n + 3))
        big[:, :, :n, :n] = p
        padded.append(big)
    trace = build_trace(patterns=padded, token_mask=np.array([[True] * n + [False] * 3]))
    for probe in (attention_rollout, attention_flow):
        got, want = probe(trace, position="mean"), probe(alone, position="mean")
        np.testing.assert_allclose(got.relevance[0, :n], want.relevance[0], atol=1e-12)
        assert (got.relevance[0, n:] == 0).all()


def test_pooled_follows_the_traces_pooling(build_trace, patterns_for):
    trace = build_trace(patterns=patterns_for(2, 1, 2, 5, seed=1))
    for pooling, same_as in (("mean", "mean"), ("cls", 0), ("last", -1)):
        got = attention_rollout(_with_pooling(trace, pooling), position="pooled").relevance
        np.testing.assert_array_equal(got, attention_rollout(trace, position=same_as).relevance)
    for pooling, words in (("", "does not know how the model pools"), ("max", "not a weighted sum")):
        with pytest.raises(ValueError, match=words) as err:
            attention_flow(_with_pooling(trace, pooling), position="pooled")
        assert "position='mean'" in str(err.value)
    with pytest.raises(ValueError, match="'mean' or 'pooled'"):
        attention_rollout(trace, position="average")


def _pooling_checkpoint(root, flags, modules=True, folder="1_Pooling"):
    (root / folder).mkdir(parents=True)
    (root / folder / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **flags}))
    if modules:
        (root / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": folder, "type": "sentence_transformers.models.Pooling"}]))
    return root


def test_sentence_pooling_reads_the_pooling_config(tmp_path):
    assert sentence_pooling(_pooling_checkpoint(tmp_path / "a", {"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": False})) == "cls"
    assert sentence_pooling(_pooling_checkpoint(tmp_path / "b", {"pooling_mode_lasttoken": True},
                                                folder="2_Pool")) == "last"
    assert sentence_pooling(_pooling_checkpoint(tmp_path / "c", {"pooling_mode_mean_tokens": True},
                                                modules=False)) == "mean"
    both = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}
    assert sentence_pooling(_pooling_checkpoint(tmp_path / "d", both)) == ""
    (tmp_path / "plain").mkdir()
    assert sentence_pooling(tmp_path / "plain") == "" == sentence_pooling("org/hub-id") == sentence_pooling("")


def test_minilm_trace_knows_it_mean_pools():
    from attnlab.core.capture import Capture
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, proc, spec = load("minilm")
    trace = capture_trace(model, proc, spec, Capture(pattern=True), ["A dog runs in the park."], [])
    assert trace.meta.pooling == "mean"
    np.testing.assert_array_equal(attention_rollout(trace, position="pooled").relevance,
                                  attention_rollout(trace, position="mean").relevance)
