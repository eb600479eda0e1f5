"""A cross-attention Trace: queries from one sequence, keys from another, through item(), save and load."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.core.manifest import RunFormatError
from attnlab.core.runs import Run, RunInfo, save_run
from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta

META = TraceMeta(model="toy", family="toy", n_layers=1, n_heads=2, d_head=4, d_model=8, causal=False,
                 captured=("pattern", "stats", "qk"))


def cross_trace() -> Trace:
    """Queries: item 0 left-padded (2 real of 3), item 1 full; keys: item 0 full (4), item 1 right-padded (2 of 4)."""
    q_mask = torch.tensor([[False, True, True], [True, True, True]])
    k_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    pattern = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)  # (B, H, Q, K)
    rec = LayerRecord(pattern=pattern, q=torch.randn(2, 2, 3, 4), k=torch.randn(2, 2, 4, 4),
                      stats={"entropy": torch.randn(2, 2, 3), "received": torch.randn(2, 2, 4)})
    return Trace(tokens=[["<pad>", "a", "b"], ["c", "d", "e"]], segments=[[Segment("pad", 0, 1)], []],
                 layers={0: rec}, meta=META, token_mask=q_mask,
                 key_tokens=[["w", "x", "y", "z"], ["u", "v", "<pad>", "<pad>"]],
                 key_segments=[[Segment("text", 0, 4)], [Segment("text", 0, 2), Segment("pad", 2, 4)]],
                 key_mask=k_mask)


def test_item_cuts_queries_and_keys_by_their_own_masks():
    trace = cross_trace()
    full = trace.layers[0]
    item = trace.item(0)
    assert item.tokens == [["a", "b"]] and item.key_tokens == [["w", "x", "y", "z"]]
    assert torch.equal(item.layer(0).pattern, full.pattern[0:1, :, 1:3, :])
    assert torch.equal(item.layer(0).k, full.k[0:1]) and torch.equal(item.layer(0).q, full.q[0:1, :, 1:3])
    assert torch.equal(item.layer(0).stats["entropy"], full.stats["entropy"][0:1, :, 1:3])
    other = trace.item(1)
    assert other.key_tokens == [["u", "v"]] and other.key_segments == [[Segment("text", 0, 2)]]
    assert torch.equal(other.layer(0).pattern, full.pattern[1:2, :, :, 0:2])
    assert torch.equal(other.layer(0).stats["received"], full.stats["received"][1:2, :, 0:2])
    assert trace.is_cross and trace.key_side().tokens == trace.key_tokens and not other.key_side().is_cross


def test_save_and_load_keep_the_key_side_and_check_its_shapes(tmp_path):
    trace = cross_trace()
    save_run(tmp_path / "run", {"main": trace}, RunInfo(model={"name": "toy"}))
    back = Run.open(tmp_path / "run").trace("main")
    assert back.key_tokens == trace.key_tokens and back.key_segments == trace.key_segments
    assert torch.equal(back.key_mask, trace.key_mask) and torch.equal(back.layer(0).pattern, trace.layer(0).pattern)
    manifest = tmp_path / "run" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["traces"]["main"]["key_tokens"] = [t[:3] for t in data["traces"]["main"]["key_tokens"]]
    data["traces"]["main"]["key_segments"] = [[], []]
    manifest.write_text(json.dumps(data))
    with pytest.raises(RunFormatError, match=r"spans 4 positions but the manifest lists 3 tokens"):
        Run.open(tmp_path / "run").trace("main")
