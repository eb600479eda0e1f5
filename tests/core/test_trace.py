"""The Trace owns real positions, key sets and items: checked by hand on left- and right-padded batches."""

import pytest
import torch

from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta

META = TraceMeta(model="hand", family="llama", n_layers=1, n_heads=2, d_head=3, d_model=4, causal=True,
                 captured=("pattern", "stats", "qk", "resid"))


def padded_trace() -> Trace:
    """Item 0: 3 real tokens after 2 left pads; item 1: 4 real tokens then 1 right pad; item 2: all 5 real."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    rec = LayerRecord(pattern=torch.rand(3, 2, 5, 5, generator=g), q=torch.rand(3, 2, 5, 3, generator=g),
                      k=torch.rand(3, 2, 5, 3, generator=g), resid=torch.rand(3, 5, 4, generator=g),
                      stats={"entropy": torch.rand(3, 2, 5, generator=g), "received": torch.rand(3, 2, 5, generator=g)})
    segments = [[Segment("pad", 0, 2), Segment("special", 2, 3), Segment("text", 3, 5)],
                [Segment("special", 0, 1), Segment("text", 1, 4), Segment("pad", 4, 5)],
                [Segment("special", 0, 1), Segment("image", 1, 5, grid=(2, 2))]]
    tokens = [["<pad>", "<pad>", "<s>", "a", "b"], ["<s>", "a", "b", "c", "<pad>"], ["<s>", "p", "p", "p", "p"]]
    return Trace(tokens, segments, {0: rec}, META, mask, embeddings=torch.rand(3, 5, 4, generator=g))


def test_real_and_first_positions():
    trace = padded_trace()
    assert [trace.real_positions(b).tolist() for b in range(3)] == [[2, 3, 4], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert trace.real_positions(-3).tolist() == [2, 3, 4]
    assert trace.first_positions().tolist() == [2, 0, 0]
    with pytest.raises(ValueError, match=r"Batch item 3 is not in this Trace, which holds 3"):
        trace.real_positions(3)


def test_first_key_set_is_the_first_real_token():
    trace = padded_trace()
    assert trace.key_set("first").int().tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert trace.key_set("image")[2].int().tolist() == [0, 1, 1, 1, 1] and not trace.key_set("image")[:2].any()


def test_key_sets_by_hand_with_adjacent_overlapping_and_empty_spans():
    """Every span of the kind is in, nothing else: spans that touch, overlap, are empty, or run past the tokens."""
    from attnlab.core.trace import key_set_mask

    mask = torch.ones(3, 8, dtype=torch.bool)
    segments = [[Segment("text", 0, 2), Segment("text", 2, 3), Segment("image", 3, 8)],  # touching text spans
                [Segment("text", 1, 5), Segment("text", 3, 6), Segment("text", 7, 7)],  # overlap; an empty span
                [Segment("image", 0, 8), Segment("text", 6, 10)]]  # a span past the 8 tokens
    assert key_set_mask(mask, segments, "text").int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0, 0],
                                                                   [0, 0, 0, 0, 0, 0, 1, 1]]
    assert key_set_mask(mask, segments, "image").int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [0] * 8, [1] * 8]
    assert not key_set_mask(mask, segments, "register").any()


def test_item_trims_padding_on_every_token_axis():
    trace = padded_trace()
    rec = trace.layers[0]
    item = trace.item(0)
    assert item.tokens == [["<s>", "a", "b"]] and bool(item.token_mask.all()) and item.n_tokens == 3
    assert item.segments == [[Segment("special", 0, 1), Segment("text", 1, 3)]]
    got = item.layers[0]
    assert torch.equal(got.pattern, rec.pattern[0:1, :, 2:, 2:])
    assert torch.equal(got.q, rec.q[0:1, :, 2:]) and torch.equal(got.k, rec.k[0:1, :, 2:])
    assert torch.equal(got.resid, rec.resid[0:1, 2:]) and torch.equal(item.embeddings, trace.embeddings[0:1, 2:])
    assert torch.equal(got.stats["entropy"], rec.stats["entropy"][0:1, :, 2:])
    assert torch.equal(got.stats["received"], rec.stats["received"][0:1, :, 2:])
    right = trace.item(1)
    assert right.tokens == [["<s>", "a", "b", "c"]] and torch.equal(right.layers[0].pattern, rec.pattern[1:2, :, :4, :4])
    assert right.segments == [[Segment("special", 0, 1), Segment("text", 1, 4)]]


def test_item_keeping_padding_is_a_batch_slice():
    trace = padded_trace()
    item = trace.item(0, keep_padding=True)
    assert item.tokens == [trace.tokens[0]] and item.segments == [trace.segments[0]]
    assert torch.equal(item.token_mask, trace.token_mask[0:1])
    assert torch.equal(item.layers[0].pattern, trace.layers[0].pattern[0:1])


def test_item_refuses_scattered_real_tokens():
    trace = padded_trace()
    trace.token_mask[2, 2] = False
    with pytest.raises(ValueError, match="not one contiguous span; use keep_padding=True"):
        trace.item(2)


def test_trace_statistics_are_the_kernel_statistics():
    """core and kernels sit on one layer and cannot import each other: their two lists must name the same
    statistics (the kernel's ``mass`` argument becomes the Trace's ``mass.<set>`` keys)."""
    from attnlab.core.trace import STAT_NAMES as TRACE_STATS
    from attnlab.kernels.stats import STAT_NAMES as KERNEL_STATS

    assert set(KERNEL_STATS) - {"mass"} == set(TRACE_STATS) and "mass" in KERNEL_STATS
