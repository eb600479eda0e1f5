"""Token labels are readable: sub-word markers become the spaces and bytes they stand for."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.hooks.segments import text_tokens


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["the cat sat.\nhéllo wörld"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


def _metaspace_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(["the cat sat on the mat"] * 10, trainers.BpeTrainer(vocab_size=60,
                                                                                special_tokens=["<unk>", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>")


def test_byte_level_markers_become_spaces_newlines_and_utf8():
    tok = _byte_level_tokenizer()
    ids = tok("the cat\nhéllo wörld<|endoftext|>", return_tensors="pt")["input_ids"]
    raw = tok.convert_ids_to_tokens(ids[0].tolist())
    assert "Ġcat" in raw and "Ċ" in raw  # the raw form this replaces
    assert text_tokens(ids, tok) == [["the", " cat", "\n", "héllo", " wörld", "<|endoftext|>"]]


def test_sentencepiece_marker_becomes_a_leading_space():
    tok = _metaspace_tokenizer()
    ids = torch.tensor([tok.convert_tokens_to_ids(["<s>", "▁the", "▁cat"])])
    assert text_tokens(ids, tok) == [["<s>", " the", " cat"]]


def test_wordpiece_and_special_tokens_stay(minilm):
    _, tok, _ = minilm
    ids = tok("the unbelievable cat", return_tensors="pt")["input_ids"]
    assert text_tokens(ids, tok) == [tok.convert_ids_to_tokens(ids[0].tolist())]
    assert text_tokens(ids, None)[0][0] == f"#{int(ids[0, 0])}"


def test_word_pieces_join_into_the_words_the_tokenizer_decodes(minilm):
    from attnlab.hooks.segments import word_of_pieces

    _, tok, _ = minilm
    text = "the unbelievably tokenized cat"
    ids = tok(text, return_tensors="pt")["input_ids"]
    pieces = text_tokens(ids, tok)[0]
    assert any(p.startswith("##") for p in pieces)  # MiniLM's WordPiece splits these words
    words = word_of_pieces(pieces)
    assert len(words) == len(pieces) and words[0] == "[CLS]" and words[-1] == "[SEP]"
    # the distinct words, in order, are what the tokenizer decodes the ids to
    distinct = [w for i, w in enumerate(words) if i == 0 or not pieces[i].startswith("##")]
    assert " ".join(distinct[1:-1]) == tok.decode(ids[0], skip_special_tokens=True)
    assert word_of_pieces(["##ing", "a"]) == ["##ing", "a"]  # a leading continuation has nothing to join


def test_an_id_outside_the_tokenizer_keeps_its_number(minilm):
    _, tok, _ = minilm
    assert text_tokens(torch.tensor([[101, len(tok) + 7]]), tok) == [["[CLS]", f"#{len(tok) + 7}"]]


def test_deferred_is_computed_once_on_first_use():
    from attnlab.hooks.segments import Deferred

    calls = []
    lazy = Deferred(lambda: calls.append(1) or [["a", "b"], ["c"]])
    assert calls == []
    assert len(lazy) == 2 and lazy[0] == ["a", "b"] and list(lazy) == [["a", "b"], ["c"]] and lazy == [["a", "b"], ["c"]]
    assert calls == [1]


def _segments_by_token(ids: list[list[int]], live: list[list[bool]], special: set[int], image: int | None) -> list:
    """The definition, one token at a time: each token's kind (pad, then the image id, then a special id, else
    text), and the segments are the maximal runs of one kind as ``(kind, start, end)``."""
    out = []
    for row, row_live in zip(ids, live):
        kinds = ["pad" if not ok else "image" if tok == image else "special" if tok in special else "text"
                 for tok, ok in zip(row, row_live)]
        runs, start = [], 0
        for i in range(1, len(kinds) + 1):
            if i == len(kinds) or kinds[i] != kinds[start]:
                runs.append((kinds[start], start, i))
                start = i
        out.append(runs)
    return out


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_text_segments_are_the_maximal_runs_of_each_tokens_kind(data):
    from attnlab.hooks.segments import text_segments

    batch, n = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 24))
    ids = data.draw(st.lists(st.lists(st.integers(0, 5), min_size=n, max_size=n), min_size=batch, max_size=batch))
    live = data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=batch, max_size=batch))
    special = data.draw(st.sets(st.integers(0, 5), max_size=3))
    image = data.draw(st.sampled_from([None, 3]))
    found = text_segments(torch.tensor(ids, dtype=torch.long).reshape(batch, n),
                          torch.tensor(live, dtype=torch.bool).reshape(batch, n), special, image)
    assert [[(s.kind, s.start, s.end) for s in row] for row in found] == _segments_by_token(ids, live, special, image)
    for row in found:  # image spans are labelled in order, with a grid where the run is a square
        images = [s for s in row if s.kind == "image"]
        assert [s.label for s in images] == [f"image {i}" for i in range(len(images))]
        for s in images:
            side = int((s.end - s.start) ** 0.5)
            assert s.grid == ((side, side) if side * side == s.end - s.start and side else None)
