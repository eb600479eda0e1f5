"""The static key sets of a prompt (:class:`attnlab.hooks.recorder.PromptSets`): the same sets the eager dictionary
held (each kind that occurs, ``text`` always, the user's sets over a kind of the same name), each made when first
read."""

from __future__ import annotations

import torch

from attnlab.core.trace import Segment, Trace, key_set_mask
from attnlab.hooks.recorder import PromptSets


def _prompt() -> Trace:
    """Two items of six tokens: an image span then text; item 1 left-padded by one token; no special token."""
    segments = [[Segment("image", 0, 4), Segment("text", 4, 6)], [Segment("image", 1, 3), Segment("text", 3, 6)]]
    mask = torch.tensor([[True] * 6, [False] + [True] * 5])
    return Trace([["t"] * 6] * 2, segments, {}, None, mask)


def test_the_sets_are_those_of_the_segments_made_when_read():
    prompt = _prompt()
    user = {"after_image": torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]),
            "image": torch.zeros(2, 6, dtype=torch.bool)}  # a user's set wins over the kind of its name
    sets = PromptSets(prompt, ("first", "special", "image", "text"), user)
    assert sets._masks == {}  # nothing made yet
    torch.testing.assert_close(sets["text"], key_set_mask(prompt.token_mask, prompt.segments, "text"))
    assert set(sets._masks) == {"text"}  # only what was read
    assert "special" not in sets  # no special token in this prompt: no set
    torch.testing.assert_close(sets["image"], user["image"])
    assert sets["after_image"].dtype == torch.bool and sets["after_image"].tolist() == user["after_image"].bool().tolist()
    assert list(sets) == ["first", "image", "text", "after_image"] and len(sets) == 4
    torch.testing.assert_close(sets["first"], torch.tensor([[True] + [False] * 5, [False, True] + [False] * 4]))
