"""The known circuits of a small language model, named with evidence: induction and previous-token heads on
repeated random sequences, and the heads IOI prompts need (activation patching against an ABC corruption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from attnlab.probes.results import ProbeResult

from .patching import PatchingResult, activation_patching, single_token_id


@dataclass(frozen=True, eq=False)
class CircuitReport(ProbeResult):
    """The heads a model's known circuits use, with the evidence.

    Attributes:
        induction, previous_token: :class:`~attnlab.probes.head_scores.HeadScores` on repeated random sequences.
        ioi: activation patching of IOI prompts against their ABC corruption (``None`` when skipped).
        induction_heads, previous_token_heads, ioi_heads: the named heads ``(layer, head)``, strongest first.
        graph: the sparse-decomposition :class:`~attnlab.probes.circuits.CircuitGraph` of the IOI prompts
            (GPT-2 only; ``None`` otherwise).
    """

    induction: object
    previous_token: object
    ioi: PatchingResult | None
    induction_heads: tuple[tuple[int, int], ...]
    previous_token_heads: tuple[tuple[int, int], ...]
    ioi_heads: tuple[tuple[int, int], ...]
    graph: object = None
    probe = "circuits-report"
    table_name = "circuit_heads"

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, induction, previous_token, ioi_effect, roles``."""
        frame = self.induction.to_frame().rename(columns={"score": "induction"})
        frame["previous_token"] = self.previous_token.scores.reshape(-1)
        frame["ioi_effect"] = self.ioi.effect.reshape(-1) if self.ioi is not None else np.nan
        roles = {"induction": self.induction_heads, "previous_token": self.previous_token_heads, "ioi": self.ioi_heads}
        frame["roles"] = [",".join(r for r, heads in roles.items() if (l, h) in heads)
                          for l, h in zip(frame["layer"], frame["head"])]
        return frame


def repeated_sequences(tokenizer, n: int = 32, length: int = 15, seed: int = 0) -> torch.Tensor:
    """``<bos> x x`` with ``x`` random tokens, ``[n, 1 + 2 * length]``.

    Tokens come from toy-gpt's induction words when the tokenizer has them all (what toy-gpt was
    trained on), else from the whole vocabulary without special tokens.
    """
    from attnlab.zoo.toy_gpt import INDUCTION_WORDS, induction_batch

    gen = torch.Generator().manual_seed(seed)
    vocab = tokenizer.get_vocab()
    if all(w in vocab for w in INDUCTION_WORDS):
        return induction_batch(tokenizer, gen, n, length)
    pool = torch.tensor(sorted(set(vocab.values()) - set(tokenizer.all_special_ids)))
    first = pool[torch.randint(len(pool), (n, length), generator=gen)]  # (n, L)
    bos = [] if tokenizer.bos_token_id is None else [torch.full((n, 1), tokenizer.bos_token_id)]
    return torch.cat(bos + [first, first], dim=1)


def abc_corruption(prompts: Sequence, names: Sequence[str], seed: int = 0) -> list[str]:
    """IOI prompts with their names replaced by three other names (Wang et al.'s ABC distribution).

    The first indirect-object mention, the first and the second subject mention each get a distinct
    name from ``names`` (neither the prompt's IO nor its S), so no name is repeated and IOI has no answer.

    Args:
        prompts: objects with ``text``, ``io`` and ``s`` (e.g. :class:`attnlab.zoo.toy_gpt.IOIPrompt`).
        names: the pool of replacement names.
        seed: randomness of the draw.
    """
    rng = np.random.default_rng(seed)
    out = []
    for p in prompts:
        pool = [n for n in names if n not in (p.io, p.s)]
        c_io, c_s1, c_s2 = (pool[i] for i in rng.choice(len(pool), 3, replace=False))
        words, seen_s = p.text.split(" "), 0
        for k, w in enumerate(words):
            if w == p.io:
                words[k] = c_io
            elif w == p.s:
                words[k] = c_s1 if seen_s == 0 else c_s2
                seen_s += 1
        out.append(" ".join(words))
    return out


def ioi_patching(model, tokenizer, prompts: Sequence, names: Sequence[str], seed: int = 0) -> PatchingResult:
    """Activation patching (denoising) of IOI prompts against their ABC corruption; metric ``logit(IO) - logit(S)``."""
    clean = dict(tokenizer([p.text for p in prompts], return_tensors="pt", padding=True))
    corrupt = dict(tokenizer(abc_corruption(prompts, names, seed), return_tensors="pt", padding=True))
    target = [single_token_id(tokenizer, p.io) for p in prompts]
    foil = [single_token_id(tokenizer, p.s) for p in prompts]
    return activation_patching(model, clean, corrupt, target, foil)


def trace_circuits(model, tokenizer, *, prompts: Sequence | None = None, names: Sequence[str] | None = None,
                   n_prompts: int = 64, n_sequences: int = 32, length: int = 15, seed: int = 0,
                   induction_min: float = 0.3, previous_min: float = 0.3, ioi_min_effect: float = 0.1,
                   with_graph: bool = True) -> CircuitReport:
    """Name a causal LM's induction heads, previous-token heads and the heads IOI needs.

    Induction and previous-token heads: :func:`~attnlab.probes.circuits.induction_scores` and
    :func:`~attnlab.probes.circuits.previous_token_scores` on ``n_sequences`` repeated random sequences,
    thresholded at ``induction_min`` / ``previous_min``. IOI heads: activation patching of each head
    from IOI prompts into their ABC corruption, normalised effect ``>= ioi_min_effect``.

    Args:
        model: a Hugging Face causal LM (GPT-2 for the circuit graph).
        tokenizer: its tokenizer.
        prompts: IOI prompts (``text``, ``io``, ``s``); ``None`` draws toy-gpt's held-out prompts.
        names: replacement names for the corruption; ``None`` uses toy-gpt's names.
        n_prompts, n_sequences, length, seed: sizes and randomness of the default data.
        induction_min, previous_min, ioi_min_effect: thresholds for naming heads.
        with_graph: also trace the sparse-decomposition graph of the IOI prompts (GPT-2 only).

    Returns:
        :class:`CircuitReport`.
    """
    from attnlab.core.capture import Capture
    from attnlab.hooks import attach
    from attnlab.probes.circuits import circuit_graph
    from attnlab.probes.head_scores import induction_scores, previous_token_scores
    from attnlab.zoo import toy_gpt

    ids = repeated_sequences(tokenizer, n_sequences, length, seed)
    with torch.no_grad(), attach(model, Capture(pattern=True), tokenizer=tokenizer) as rec:
        model(input_ids=ids)
    repeated = rec.trace()
    induction, previous = induction_scores(repeated, period=length), previous_token_scores(repeated)
    prompts = list(prompts) if prompts is not None else toy_gpt.heldout_ioi_prompts(n_prompts, seed)
    ioi = ioi_patching(model, tokenizer, prompts, names or toy_gpt.NAMES, seed) if prompts else None
    ioi_heads = () if ioi is None else tuple(h for h in ioi.top(ioi.effect.size) if ioi.effect[h] >= ioi_min_effect)
    graph = None
    if with_graph and prompts and getattr(model.config, "model_type", None) == "gpt2":
        cap = Capture(pattern=True, qk=True, head_out=True, resid=True)
        with torch.no_grad(), attach(model, cap, tokenizer=tokenizer) as rec:
            model(**tokenizer([p.text for p in prompts], return_tensors="pt", padding=True))
        graph = circuit_graph(rec.trace(), model)
    return CircuitReport(induction, previous, ioi, tuple(induction.heads(induction_min)),
                         tuple(previous.heads(previous_min)), ioi_heads, graph)
