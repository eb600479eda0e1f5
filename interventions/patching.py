"""Causal checks on attention heads: activation patching and path patching, scored by a logit difference.

* **Activation patching** (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022, "Interpretability in the
  wild", arXiv 2211.00593): run a *base* input, replace one head's output ``z`` (before ``W_O``) by
  its value on a *source* input, and read the logit difference ``logit(target) - logit(foil)`` at the
  last real token. ``direction="denoise"`` patches clean into corrupted (base = corrupted);
  ``"noise"`` patches corrupted into clean.
* **Path patching** (Wang et al. 2022, §3.1; Goldowsky-Dill et al. 2023, arXiv 2304.05969): the
  effect of a sender head only through chosen paths. Step 1: run the base input with the sender's ``z``
  from the source and every other head frozen at its base value (MLPs recompute unless
  ``freeze_mlps``). To the logits: read them. To receiver heads: record the q/k/v the receivers
  computed in step 1, then run the base input again with only those receivers' q/k/v replaced.

Effects are normalised as ``(patched - corrupted) / (clean - corrupted)`` of the mean logit
difference, so 0 means "as corrupted" and 1 "as clean", whatever the direction.

The runs edit head outputs, q/k/v and MLP outputs through :mod:`attnlab.hooks.edits`. Hugging Face GPT-2 and
LLaMA-type models are supported (path patching to k/v receivers needs one key/value head per query head); a
TransformerLens ``TransformerBridge`` is supported for activation patching through ``hook_z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from attnlab.hooks.edits import QKV, Edits, last_positions, layer_sites, run
from attnlab.probes.results import ProbeResult

DIRECTIONS = ("denoise", "noise")


def logit_diff(logits: torch.Tensor, inputs: dict, target: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """``logit(target) - logit(foil)`` at each row's last real token, ``[B]``."""
    rows = torch.arange(logits.shape[0])
    final = logits[rows, last_positions(inputs).to(logits.device)]  # (B, V)
    return (final[rows, target.to(final.device)] - final[rows, foil.to(final.device)]).float().cpu()


def _ids(value, batch: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(value, dtype=torch.long).reshape(-1)
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise ValueError(f"{what} needs one token id per batch row ({batch}), got {ids.numel()}")
    return ids


def _check_pair(clean: dict, corrupt: dict) -> None:
    a, b = clean["input_ids"], corrupt["input_ids"]
    if a.shape != b.shape:
        raise ValueError(f"Clean and corrupted inputs must have the same shape to patch position by position "
                         f"(got {tuple(a.shape)} and {tuple(b.shape)}); use corruptions with the same token count")
    ma, mb = clean.get("attention_mask"), corrupt.get("attention_mask")
    if (ma is None) != (mb is None) or (ma is not None and not torch.equal(ma.bool(), mb.bool())):
        raise ValueError("Clean and corrupted inputs must have the same attention_mask (same real lengths)")


@dataclass(frozen=True, eq=False)
class PatchingResult(ProbeResult):
    """A layer x head table of patching effects.

    Attributes:
        effect: ``[L, H]`` normalised effect ``(patched - corrupted) / (clean - corrupted)`` (NaN: not patched).
        metric: ``[L, H]`` mean logit difference of the patched runs.
        clean, corrupted: mean logit difference of the clean and the corrupted run.
        method: ``activation`` or ``path``.
        direction: ``denoise`` (clean into corrupted) or ``noise`` (corrupted into clean).
        receivers: path patching receivers ``(layer, head)`` (empty: to the logits / activation patching).
        receiver_inputs: which of ``q``, ``k``, ``v`` of the receivers were patched.
    """

    effect: np.ndarray
    metric: np.ndarray
    clean: float
    corrupted: float
    method: str
    direction: str
    receivers: tuple[tuple[int, int], ...] = ()
    receiver_inputs: str = ""
    probe = "patching"

    def head_grid(self, item: int = 0) -> tuple[np.ndarray, list[int]]:
        """``([L, H] effect, layers)``, the per-head view the dashboard draws (``item`` is unused: the effect is
        already a mean over the prompts; NaN marks heads that were not patched)."""
        return self.effect, list(range(self.effect.shape[0]))

    def to_frame(self) -> pd.DataFrame:
        """One row per head: ``layer, head, effect, metric``."""
        n_layers, n_heads = self.effect.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        return pd.DataFrame({"layer": layer, "head": head, "effect": self.effect.reshape(-1),
                             "metric": self.metric.reshape(-1)})

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest ``|effect|``, as ``(layer, head)``."""
        flat = np.nan_to_num(np.abs(self.effect), nan=-1.0).reshape(-1)
        order = np.argsort(-flat, kind="stable")[:k]
        return [tuple(int(x) for x in divmod(int(i), self.effect.shape[1])) for i in order]


@dataclass
class _Setup:
    base: dict
    source: dict
    target: torch.Tensor
    foil: torch.Tensor
    clean: float
    corrupted: float
    base_z: dict
    source_z: dict
    base_mlp: dict

    def normalise(self, metric: float) -> float:
        return (metric - self.corrupted) / (self.clean - self.corrupted)

    def metric(self, logits: torch.Tensor) -> float:
        return float(logit_diff(logits, self.base, self.target, self.foil).mean())


def _setup(model, clean, corrupt, target, foil, direction, with_mlp=False) -> _Setup:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    _check_pair(clean, corrupt)
    batch = clean["input_ids"].shape[0]
    target, foil = _ids(target, batch, "target"), _ids(foil, batch, "foil")
    runs = {}
    for name, inputs in (("clean", clean), ("corrupt", corrupt)):
        ed = Edits(record_z={}, record_mlp={} if with_mlp else None)
        logits = run(model, inputs, ed)
        runs[name] = (float(logit_diff(logits, inputs, target, foil).mean()), ed)
    clean_m, corrupt_m = runs["clean"][0], runs["corrupt"][0]
    if abs(clean_m - corrupt_m) < 1e-6:
        raise ValueError(f"The clean and corrupted runs give the same logit difference ({clean_m:.4g}), so effects "
                         "cannot be normalised; choose a corruption that changes the prediction, or another foil")
    base, source = ("corrupt", "clean") if direction == "denoise" else ("clean", "corrupt")
    inputs = {"clean": clean, "corrupt": corrupt}
    return _Setup(inputs[base], inputs[source], target, foil, clean_m, corrupt_m, runs[base][1].record_z,
                  runs[source][1].record_z, runs[base][1].record_mlp or {})


def _one_head(n_heads: int, head: int) -> torch.Tensor:
    return torch.arange(n_heads) == head


def activation_patching(model: nn.Module, clean: dict, corrupt: dict, target, foil, *, direction: str = "denoise",
                        positions: torch.Tensor | None = None) -> PatchingResult:
    """Patch each head's output ``z`` from the source run into the base run, one head at a time.

    Args:
        model: Hugging Face GPT-2 / LLaMA-type model or TransformerLens bridge.
        clean, corrupt: ``{"input_ids": [B, N], "attention_mask": [B, N]}`` of the same shape.
        target, foil: token id(s), one or one per row; the metric is ``logit(target) - logit(foil)``.
        direction: ``denoise`` (clean into corrupted) or ``noise``.
        positions: ``[B, N]`` bool positions to patch; ``None`` for all.

    Returns:
        :class:`PatchingResult` with ``method="activation"``.

    Example:
        >>> res = activation_patching(model, tok(["When Mary and John ..., John gave it to"], return_tensors="pt"),
        ...                           corrupt_inputs, target=mary_id, foil=john_id)  # doctest: +SKIP
    """
    s = _setup(model, clean, corrupt, target, foil, direction)
    n_layers, n_heads = len(s.base_z), next(iter(s.base_z.values())).shape[2]
    metric = np.full((n_layers, n_heads), np.nan)
    for layer in range(n_layers):
        for head in range(n_heads):
            ed = Edits(z={layer: (s.source_z[layer], _one_head(n_heads, head))}, positions=positions)
            metric[layer, head] = s.metric(run(model, s.base, ed))
    return PatchingResult(effect=s.normalise(metric), metric=metric, clean=s.clean, corrupted=s.corrupted,
                          method="activation", direction=direction)


def _sender_edits(s: _Setup, sender: tuple[int, int], n_heads: int, freeze_mlps: bool, **record) -> Edits:
    """Step 1 of path patching: sender from the source, every other head frozen at its base value."""
    z = {}
    for layer, base in s.base_z.items():
        values = base.clone()
        if layer == sender[0]:
            values[:, :, sender[1]] = s.source_z[layer][:, :, sender[1]]
        z[layer] = (values, torch.ones(n_heads, dtype=torch.bool))
    return Edits(z=z, mlp=dict(s.base_mlp) if freeze_mlps else None, **record)


def path_patching(model: nn.Module, clean: dict, corrupt: dict, target, foil, *,
                  receivers: Sequence[tuple[int, int]] = (), receiver_inputs: str = QKV,
                  senders: Sequence[tuple[int, int]] | None = None, direction: str = "denoise",
                  positions: torch.Tensor | None = None, freeze_mlps: bool = False) -> PatchingResult:
    """Path patching of every sender head (or ``senders``) to the logits or to receiver heads' inputs.

    Args:
        model: Hugging Face GPT-2 or LLaMA-type model.
        clean, corrupt, target, foil, direction: as in :func:`activation_patching`.
        receivers: ``(layer, head)`` receivers; empty for the path sender -> logits.
        receiver_inputs: which receiver inputs carry the sender's effect, a subset of ``"qkv"``.
        senders: heads to test; ``None`` for all. Senders with no receiver in a later layer get NaN.
        positions: ``[B, N]`` bool positions where the receivers' inputs are patched; ``None`` for all.
        freeze_mlps: also freeze MLP outputs at their base values in step 1 (default: they recompute).

    Returns:
        :class:`PatchingResult` with ``method="path"`` over the senders.
    """
    sites = layer_sites(model)
    n_layers, n_heads = len(sites), sites[0].n_heads
    which = tuple(dict.fromkeys(receiver_inputs))
    if not which or set(which) - set(QKV):
        raise ValueError(f"receiver_inputs must be letters from 'qkv', got {receiver_inputs!r}")
    if receivers and set(which) & set("kv") and sites[0].n_kv_heads != n_heads:
        raise ValueError("Path patching to receivers' k or v needs one key/value head per query head; this model "
                         "groups them. Use receiver_inputs='q'")
    for layer, head in receivers:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"Receiver {layer}.{head} is outside the model ({n_layers} layers x {n_heads} heads)")
    s = _setup(model, clean, corrupt, target, foil, direction, with_mlp=freeze_mlps)
    senders = [(l, h) for l in range(n_layers) for h in range(n_heads)] if senders is None else list(senders)
    metric = np.full((n_layers, n_heads), np.nan)
    for sender in senders:
        if receivers and not any(r[0] > sender[0] for r in receivers):
            continue
        if not receivers:
            metric[sender] = s.metric(run(model, s.base, _sender_edits(s, sender, n_heads, freeze_mlps)))
            continue
        step1 = _sender_edits(s, sender, n_heads, freeze_mlps, record_qkv={})
        run(model, s.base, step1)
        qkv: dict = {}
        for layer, head in receivers:
            if layer <= sender[0]:
                continue
            for name in which:
                values = step1.record_qkv[layer][name]
                prev = qkv.setdefault(layer, {}).get(name, (values, torch.zeros(n_heads, dtype=torch.bool)))
                qkv[layer][name] = (values, prev[1] | _one_head(n_heads, head))
        metric[sender] = s.metric(run(model, s.base, Edits(qkv=qkv, positions=positions)))
    return PatchingResult(effect=s.normalise(metric), metric=metric, clean=s.clean, corrupted=s.corrupted,
                          method="path", direction=direction, receivers=tuple(map(tuple, receivers)),
                          receiver_inputs="".join(which) if receivers else "")


def single_token_id(tokenizer, word: str) -> int:
    """The id of ``word`` as one token (also tried with a leading space, as byte-BPE vocabularies need)."""
    for text in (word, " " + word):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            return int(ids[0])
    raise ValueError(f"{word!r} is not a single token of this tokenizer; give a word it has as one token")
