"""Key sets fitted to the growing keys of a decoding run (the static segment sets, and dynamic ones such as VAR's
sinks): the recorder keeps a padded copy of a set it sees twice and hands out slices; each slice equals the plain
fit (pad with the set's fill, or trim)."""

from __future__ import annotations

import torch

from attnlab.hooks.recorder import GROWN_SPARE_KEYS, _fit_keys, _grown

CPU = torch.device("cpu")  # as the recorder passes it: the keys' device


def test_slices_of_a_held_set_equal_the_plain_fit_as_keys_grow():
    gen = torch.Generator().manual_seed(0)
    held: dict = {}
    for name, fill in (("var_sink", False), ("after_image", True)):
        mask = torch.rand(3, 10, generator=gen) < 0.4
        copies = []
        for n_keys in (10, 11, 12, 10 + GROWN_SPARE_KEYS + 5, 8):  # past the spare keys: a larger copy; then a trim
            got = _grown(held, (2, name), mask, n_keys, CPU)
            torch.testing.assert_close(got, _fit_keys(mask, n_keys, fill=fill), rtol=0, atol=0)
            copies.append(held[(2, name)][1])
        assert copies[1] is copies[2] is not copies[3]  # steps slice one copy until they outgrow it
        assert held[(2, name)][0] is mask and held[(2, name)][1] is not None  # the padded copy was kept


def test_a_new_tensor_replaces_the_held_one():
    """A later input (or ACT's per-call sinks) brings a new tensor under the same layer and name: its own fit."""
    held: dict = {}
    first, second = torch.zeros(2, 6, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)
    _grown(held, (0, "s"), first, 8, CPU)
    _grown(held, (0, "s"), first, 9, CPU)
    got = _grown(held, (0, "s"), second, 9, CPU)
    torch.testing.assert_close(got, _fit_keys(second, 9), rtol=0, atol=0)
    assert held[(0, "s")][0] is second


def test_per_head_sets_grow_too():
    mask = torch.rand(2, 4, 7) < 0.5  # [B, H, N]
    held: dict = {}
    for n_keys in (7, 9, 9, 12):
        torch.testing.assert_close(_grown(held, (1, "sink"), mask, n_keys, CPU), _fit_keys(mask, n_keys),
                                   rtol=0, atol=0)
