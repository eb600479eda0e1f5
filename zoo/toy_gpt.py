"""toy-gpt, the model and its data: a small GPT-2 trained on induction sequences and IOI sentences.

Two tasks, one batch of each per step:

- **induction**: ``<bos> x_1 .. x_L x_1 .. x_L`` with ``x`` uniform over a sub-vocabulary and ``L`` in
  10..20. The first copy is unpredictable; the second is predictable only by looking back for the
  previous occurrence of the current token and copying what followed it (an induction head; Olsson et
  al. 2022, "In-context learning and induction heads").
- **IOI** (indirect object identification; Wang et al. 2022, "Interpretability in the wild"):
  ``When Mary and John went to the store , John gave a drink to Mary .`` over a small name set,
  several templates and both name orders (ABB and BAB), so the answer is the name said once.

Training and the card are :mod:`attnlab.recipes.toy_gpt`. The evidence lives in functions here so the card, the
circuit tracing and the tests compute it the same way:
:func:`induction_losses` (loss on the second copy of held-out sequences vs the first) and
:func:`ioi_logit_diffs` (logit of the indirect object minus the subject on prompts whose name pairs, and
for half of them templates, were never trained on).

Example:
    >>> from attnlab.zoo import load  # doctest: +SKIP
    >>> model, tok, spec = load("toy-gpt")  # doctest: +SKIP
    >>> prompts = heldout_ioi_prompts(8, seed=0)  # doctest: +SKIP
    >>> (ioi_logit_diffs(model, tok, prompts) > 0).float().mean()  # doctest: +SKIP
    tensor(1.)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .tokenizers import word_tokenizer
from .training import Schedule

NAMES = ("Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Anna", "James", "Emma", "David", "Lucy", "Mark",
         "Kate", "Paul", "Jane", "Peter", "Rose", "Sam", "Laura", "Mike")
PLACES = ("store", "park", "school", "garden", "beach", "office", "market", "station")
OBJECTS = ("drink", "ball", "book", "letter", "gift", "apple", "key", "ticket")
#: Extra words for the random sequences, so induction is learnt over more than the IOI words.
FILLER = tuple("red green blue cold warm big small old new fast slow happy sad dark light river hill tree "
               "stone cloud rain snow wind fire lake road door window chair table cup plate lamp clock "
               "bird fish horse cat dog".split())
#: Trained templates; ``{A} and {B}`` introduce the names, ``{S}`` repeats one, the answer is the other.
TRAIN_TEMPLATES = (
    "When {A} and {B} went to the {place} , {S} gave a {obj} to",
    "After {A} and {B} went to the {place} , {S} handed a {obj} to",
    "While {A} and {B} were at the {place} , {S} gave a {obj} to",
    "{A} and {B} went to the {place} . {S} passed a {obj} to",
    "Then {A} and {B} had a long day at the {place} . {S} gave a {obj} to",
    "When {A} and {B} got a {obj} at the {place} , {S} decided to give it to",
)
#: Never trained on: new combinations of the trained openings and verbs.
HELDOUT_TEMPLATES = (
    "After {A} and {B} were at the {place} , {S} passed a {obj} to",
    "While {A} and {B} went to the {place} , {S} handed a {obj} to",
)
_WORD = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


def _template_words() -> tuple[str, ...]:
    words: list[str] = []
    for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
        words += _WORD.findall(re.sub(r"\{\w+\}", " ", t))
    return tuple(dict.fromkeys(words))


#: Tokens the random induction sequences are drawn from.
INDUCTION_WORDS = tuple(dict.fromkeys(NAMES + PLACES + OBJECTS + FILLER))
VOCABULARY = tuple(dict.fromkeys(INDUCTION_WORDS + _template_words()))


@dataclass(frozen=True)
class ToyGPTConfig:
    """Model, data and budget of toy-gpt.

    Attributes:
        n_layer: blocks; induction needs two, IOI's duplicate-token -> inhibition -> name-mover chain three.
        n_head: heads per block; a few heads give the circuits room without a large model.
        d_model: residual width; 64 learns both tasks within the CPU budget (~0.1 s of CPU per step) at ~0.7 MB.
        d_mlp: MLP width (4 x d_model, as GPT-2).
        n_positions: longest sequence; the longest induction sample is 41 tokens.
        seq_min: shortest random sequence (tokens per copy).
        seq_max: longest random sequence.
        batch_size: induction sequences per step; induction is the slower task to learn, so it gets most data.
        ioi_batch_size: IOI sentences per step; IOI is learnt within a few hundred steps even from few.
        schedule: optimiser steps and settings; the step count is the CPU budget.
        threads: torch intra-op threads; one thread is faster than two on a shared two-core machine.
        first_copy_weight: weight of the (unpredictable) first copy in the induction loss, next to weight 1 on
            the second. With the plain LM mean, the first copy's noise and the halved weight of the second copy
            kept induction from forming within the budget (loss ratio 0.69 after 1500 steps); without any
            first-copy loss it formed but the model never learnt to predict the first copy as uniform.
        sinusoidal_init: start the learned position embeddings from sinusoids (Vaswani et al. 2017). An offset
            of one position is then a fixed rotation, so a previous-token head, the first half of an
            induction circuit, is easy to learn; from GPT-2's random init induction formed too slowly for
            the CPU budget.
        sinusoid_scale: amplitude of that table, near GPT-2's embedding init (std 0.02) so positions do not
            drown the tokens; 0.1 learnt induction about twice as slowly.
        heldout_pair_frac: share of unordered name pairs never trained on, for the held-out IOI evaluation.
        eval_sequences: held-out induction sequences in the card's evaluation.
        eval_prompts: held-out IOI prompts in the card's evaluation.
    """

    n_layer: int = 3
    n_head: int = 4
    d_model: int = 64
    d_mlp: int = 256
    n_positions: int = 64
    seq_min: int = 10
    seq_max: int = 20
    batch_size: int = 32
    ioi_batch_size: int = 16
    schedule: Schedule = field(default_factory=lambda: Schedule(steps=1500, lr=3e-3, warmup=50))
    threads: int = 1
    first_copy_weight: float = 0.1
    sinusoidal_init: bool = True
    sinusoid_scale: float = 0.03
    heldout_pair_frac: float = 0.2
    eval_sequences: int = 256
    eval_prompts: int = 512


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt: ``text`` ends just before the answer; ``io`` is the answer, ``s`` the repeated name."""

    text: str
    io: str
    s: str


def build_tokenizer():
    """The toy-gpt word tokenizer (prepends ``<bos>``)."""
    return word_tokenizer(VOCABULARY)


def name_pairs(heldout_frac: float = 0.2) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, heldout)`` unordered name pairs; a fixed split, independent of the training seed."""
    pairs = list(itertools.combinations(NAMES, 2))
    order = np.random.default_rng(20220101).permutation(len(pairs))
    n_held = int(round(heldout_frac * len(pairs)))
    held = {int(i) for i in order[:n_held]}
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def sample_ioi(rng: np.random.Generator, n: int, templates, pairs) -> list[IOIPrompt]:
    """``n`` IOI prompts: a random pair in a random order, the subject repeated (ABB or BAB order)."""
    prompts = []
    for _ in range(n):
        a, b = pairs[int(rng.integers(len(pairs)))]
        if rng.random() < 0.5:
            a, b = b, a
        s, io = (b, a) if rng.random() < 0.5 else (a, b)
        text = templates[int(rng.integers(len(templates)))].format(
            A=a, B=b, S=s, place=PLACES[int(rng.integers(len(PLACES)))], obj=OBJECTS[int(rng.integers(len(OBJECTS)))])
        prompts.append(IOIPrompt(text, io, s))
    return prompts


def heldout_ioi_prompts(n: int, seed: int = 0, templates: str = "all") -> list[IOIPrompt]:
    """IOI prompts over held-out name pairs: ``templates`` is ``"train"``, ``"heldout"`` or ``"all"`` (half each)."""
    _, held = name_pairs(ToyGPTConfig.heldout_pair_frac)
    rng = np.random.default_rng([seed, 77])
    if templates == "all":
        return sample_ioi(rng, n - n // 2, TRAIN_TEMPLATES, held) + sample_ioi(rng, n // 2, HELDOUT_TEMPLATES, held)
    chosen = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}.get(templates)
    if chosen is None:
        raise ValueError(f"templates must be 'train', 'heldout' or 'all', got {templates!r}")
    return sample_ioi(rng, n, chosen, held)


def induction_batch(tok, gen: torch.Generator, n: int, length: int) -> torch.Tensor:
    """``<bos> x x`` with ``x`` a uniform random sequence of ``length`` induction words; ``(n, 1 + 2 * length)``."""
    ids = torch.tensor(tok.convert_tokens_to_ids(list(INDUCTION_WORDS)))  # (W,)
    first = ids[torch.randint(len(ids), (n, length), generator=gen)]  # (n, L)
    bos = torch.full((n, 1), tok.bos_token_id)
    return torch.cat([bos, first, first], dim=1)  # (n, 1 + 2L)


def ioi_batch(tok, prompts: list[IOIPrompt]) -> dict[str, torch.Tensor]:
    """Full IOI sentences (prompt, answer, ``.``) right-padded, with ``labels`` (-100 on padding)."""
    enc = tok([f"{p.text} {p.io} ." for p in prompts], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # (B, N)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token losses ``(B, N - 1)``; entry ``t`` is the loss of predicting ``ids[:, t + 1]``."""
    logits = model(input_ids=ids).logits  # (B, N, V)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")


@torch.no_grad()
def induction_losses(model, tok, n: int = 256, length: int = 15, seed: int = 0) -> dict[str, float]:
    """Mean loss on the first vs the second copy of held-out repeated random sequences.

    Two tokens are left out: the first token of the second copy (nothing announces where the repeat
    starts, so it is as unpredictable as the first copy) and the first token of the first copy (it
    follows ``<bos>`` only). A model that learnt the task scores ``first`` near ``log(len(INDUCTION_WORDS))``
    (uniform tokens cannot be predicted) and ``second`` near 0.

    Returns:
        ``first`` and ``second`` (nats per token) and ``ratio = second / first``.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    ids = induction_batch(tok, gen, n, length)  # (n, 1 + 2L)
    losses = token_losses(model.eval(), ids)  # (n, 2L); entry t predicts token t + 1
    first = losses[:, 1:length].mean().item()  # tokens 2..L
    second = losses[:, length + 1:].mean().item()  # tokens L + 2..2L
    return {"first": first, "second": second, "ratio": second / first}


@torch.no_grad()
def ioi_logit_diffs(model, tok, prompts: list[IOIPrompt]) -> torch.Tensor:
    """Logit of the indirect object minus the subject at each prompt's last token; ``(len(prompts),)``."""
    enc = tok([p.text for p in prompts], return_tensors="pt", padding=True)
    logits = model.eval()(**enc).logits  # (B, N, V)
    last = enc["attention_mask"].sum(1) - 1  # (B,) right padding
    final = logits[torch.arange(len(prompts)), last]  # (B, V)
    io = torch.tensor(tok.convert_tokens_to_ids([p.io for p in prompts]))
    s = torch.tensor(tok.convert_tokens_to_ids([p.s for p in prompts]))
    return final.gather(1, io[:, None])[:, 0] - final.gather(1, s[:, None])[:, 0]


def build_model(tok, config: ToyGPTConfig, seed: int):
    """A freshly initialised ``GPT2LMHeadModel`` (no dropout: the data are endless)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=config.n_positions, n_embd=config.d_model,
                     n_layer=config.n_layer, n_head=config.n_head, n_inner=config.d_mlp, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(cfg)
    if config.sinusoidal_init:
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(sinusoids(config.n_positions, config.d_model, config.sinusoid_scale))
    return model


def sinusoids(n: int, d: int, scale: float) -> torch.Tensor:
    """Sinusoidal position table ``(n, d)`` (Vaswani et al. 2017), times ``scale``."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(-np.log(10_000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d / 2,)
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return scale * table
