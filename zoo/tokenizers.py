"""Word-level tokenizers built offline, for the zoo's small models and tiny test checkpoints."""

from __future__ import annotations

from typing import Iterable

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def word_tokenizer(words: Iterable[str], extra_special: Iterable[str] = (), bos: bool = True):
    """A ``PreTrainedTokenizerFast`` over a fixed word list (whitespace and punctuation split).

    Args:
        words: the vocabulary (duplicates are dropped, order kept).
        extra_special: further special tokens, e.g. ``"<image>"`` for LLaVA (added as special tokens so
            the processor's placeholder maps to one id).
        bos: prepend ``<bos>`` to every encoded text.

    Returns:
        A tokenizer with ``pad``/``bos``/``eos``/``unk`` set; ids 0..3 are the specials.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIALS, *words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>")
    extra = list(extra_special)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    return tok
