"""Per-item summaries of a stats-only capture against the same quantities computed from full eager patterns."""

import numpy as np
import pytest
import torch

from attnlab.core.capture import Capture
from attnlab.core.item_stats import TOKEN_ID_STRIDE, item_statistics, layer_received_shares, qk_tokens, stat_names


@pytest.fixture(scope="module")
def padded_trace(tiny_dir):
    from attnlab.hooks.inputs import capture_trace
    from attnlab.zoo import load

    model, tok, spec = load(str(tiny_dir("gpt2")))
    cap = Capture(pattern=True, stats=True, qk=True)
    return capture_trace(model, tok, spec, cap, ["the cat sat on the mat", "a dog"]), cap


def test_item_means_match_the_patterns(padded_trace):
    trace, cap = padded_trace
    got = item_statistics(trace, cap.key_sets)
    live = trace.token_mask.float()  # (B, N)
    n_real = live.sum(-1)  # (B,)
    assert stat_names(trace, cap.key_sets) == ["lse", "entropy", "max", "mass.first", "mass.special", "mass.image",
                                               "mass.text", "received_peak"]
    for li, (_, rec) in enumerate(sorted(trace.layers.items())):
        p = rec.pattern.double()  # (B, H, Q, K)
        row_mean = lambda v: ((v * live[:, None, :]).sum(-1) / n_real[:, None]).numpy()  # (B, H, Q) -> (B, H)
        entropy = -(torch.where(p > 0, p * p.log(), torch.zeros(())).sum(-1))  # (B, H, Q)
        np.testing.assert_allclose(got["entropy"][:, li], row_mean(entropy), atol=1e-5)
        np.testing.assert_allclose(got["max"][:, li], row_mean(p.amax(-1)), atol=1e-6)
        np.testing.assert_allclose(got["mass.first"][:, li], row_mean(p[..., 0]), atol=1e-6)
        np.testing.assert_allclose(got["mass.image"][:, li], 0.0)  # no image in a text batch
        # received: summed over the real query rows only (padding rows are left out), per real query
        share = (p * live[:, None, :, None]).sum(-2) / n_real[:, None, None]  # (B, H, K)
        share = share.masked_fill(~trace.token_mask[:, None, :], -1)
        np.testing.assert_allclose(got["received_peak"][:, li], share.amax(-1).numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["received_peak_position"][:, li], share.argmax(-1).numpy())


def test_received_shares_and_qk_tokens(padded_trace):
    trace, _ = padded_trace
    shares, valid = layer_received_shares(trace)  # (L, H, B, K), (L, 1, B, K)
    n_layers, n_heads = len(trace.layers), trace.meta.n_heads
    assert shares.shape[:3] == (n_layers, n_heads, 2) and valid.shape == (n_layers, 1, 2, trace.n_tokens)
    assert valid[0, 0].sum() == trace.token_mask.sum()
    ids, payload = qk_tokens(trace, [40, 41])  # (T,), (T, L, 2, H, d)
    assert len(ids) == int(trace.token_mask.sum()) and payload.shape[1:3] == (n_layers, 2)
    b, n = divmod(int(ids[-1]), TOKEN_ID_STRIDE)
    rec = trace.layers[max(trace.layers)]
    np.testing.assert_array_equal(payload[-1, -1, 0], rec.q[b - 40, :, n].numpy())
    np.testing.assert_array_equal(payload[-1, -1, 1], rec.k[b - 40, :, n].numpy())


def _cross_trace():
    """A cross-attention Trace whose key side differs from its query side: item 0 has 2 real queries (left padding)
    of 3 and 4 real keys; item 1 has 3 real queries and 2 real keys of 4, the padded key 2 holding the largest value."""
    from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta

    meta = TraceMeta(model="toy", family="toy", n_layers=1, n_heads=2, d_head=4, d_model=8, causal=False,
                     captured=("stats", "qk"))
    received = torch.tensor([[[0.2, 1.1, 0.4, 0.3], [0.5, 0.5, 0.6, 0.4]],
                             [[1.0, 2.0, 9.0, 0.0], [2.5, 0.5, 7.0, 0.0]]])  # (B, H, K)
    entropy = torch.tensor([[[9.0, 1.0, 2.0], [9.0, 3.0, 5.0]], [[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]])  # (B, H, Q)
    rec = LayerRecord(q=torch.randn(2, 2, 3, 4), k=torch.randn(2, 2, 4, 4),
                      stats={"entropy": entropy, "received": received})
    return Trace(tokens=[["<pad>", "a", "b"], ["c", "d", "e"]], segments=[[Segment("pad", 0, 1)], []],
                 layers={0: rec}, meta=meta, token_mask=torch.tensor([[False, True, True], [True, True, True]]),
                 key_tokens=[["w", "x", "y", "z"], ["u", "v", "<pad>", "<pad>"]],
                 key_segments=[[Segment("text", 0, 4)], [Segment("text", 0, 2), Segment("pad", 2, 4)]],
                 key_mask=torch.tensor([[True, True, True, True], [True, True, False, False]]))


def test_cross_attention_means_queries_and_keys_over_their_own_sides():
    trace = _cross_trace()
    got = item_statistics(trace, ())
    # per query: mean over the real queries (2 for item 0, 3 for item 1)
    np.testing.assert_allclose(got["entropy"][:, 0], [[1.5, 4.0], [2.0, 2.0]], atol=1e-6)
    # per key: received / real queries, peak over the real keys only (item 1's padded key 2 is left out)
    np.testing.assert_allclose(got["received_peak"][:, 0], [[1.1 / 2, 0.6 / 2], [2.0 / 3, 2.5 / 3]], atol=1e-6)
    np.testing.assert_array_equal(got["received_peak_position"][:, 0], [[1, 2], [1, 0]])
    shares, valid = layer_received_shares(trace)  # (L, H, B, K), (L, 1, B, K)
    assert shares.shape == (1, 2, 2, 4)
    np.testing.assert_array_equal(valid[0, 0], trace.key_mask.numpy())
    with pytest.raises(ValueError, match="cross-attention"):
        qk_tokens(trace, [0, 1])
