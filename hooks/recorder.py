"""The backend-independent half of capture: run attention through the kernels and keep what was asked.

Backends (Hugging Face, TransformerLens, plain torch) only translate their modules' inputs into
``q, k, v [B, H, N, d]`` and masks, then call :meth:`Recorder.attend`. The recorder owns one
:class:`StackState` per attention stack (a LLaVA model has two: the language model and the vision tower).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch

from attnlab.core.capture import Capture, ModelShape
from attnlab.core.trace import NESTED_TRACES, LayerRecord, Segment, Trace, TraceMeta
from attnlab.kernels.api import attention, run_attention
from attnlab.kernels.plan import Plan
from attnlab.kernels.reference import pattern_stats, positional_mask, softmax_row_stats

from .bridge_scores import score_rows, weight_rows
from .module_adapters import scatter_packed

#: ``fn(layer, hidden_in [B, N, d] or None, static_sets {name: [B, K]} (a read-only mapping), preview=...,
#: token_mask=[B, N], n_queries=int) -> {name: [B, K] or [B, H, K] bool}``. ``n_queries``: the tokens the forward call
#: brings (a prompt's at prefill, one per decoding step). A function whose ``reads_hidden`` attribute is ``False`` (ACT's
#: sinks, read from ``preview``) is handed ``None`` for ``hidden_in``, and no block is hooked for it.
KeySetFn = Callable[[int, "torch.Tensor | None", dict], dict]


@dataclass
class Pass:
    """What one forward call of a stack recorded."""

    tokens: list[list[str]]
    segments: list[list[Segment]]
    token_mask: torch.Tensor  # (B, N)
    layers: dict[int, LayerRecord] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    #: ``{(n_queries, device): [B, Q] bool or None}``: the real query rows, computed once per pass, not per layer.
    real_rows: dict = field(default_factory=dict)
    #: cross-attention: the keys' ``(tokens, segments, token_mask [B, K])``, another sequence's; ``None``: the queries'
    keys: tuple | None = None
    #: ``[B, N]`` bool for a stack that runs its items packed into one sequence ``[S, d]`` (Qwen2-VL's vision
    #: tower): where each packed token sits in the padded batch; ``None`` for a batched stack
    slots: torch.Tensor | None = None

    def batched(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block's hidden state as ``[B, N, d]``: a packed ``[S, d]`` is padded into the batch with zeros."""
        return hidden if self.slots is None or hidden.dim() != 2 else scatter_packed(hidden, self.slots)

    def key_side(self) -> Trace:
        """The pass's keys as a Trace without layers (see :meth:`attnlab.core.trace.Trace.key_side`)."""
        if self.keys is None:
            return Trace(self.tokens, self.segments, {}, None, self.token_mask)
        return Trace(*self.keys[:2], {}, None, self.keys[2])


class PromptSets(Mapping):
    """The static key sets of a prompt, ``{name: [B, N] bool}``: each segment kind of ``kinds`` that occurs in it (and
    ``text`` always), then the user's ``extra`` sets (which win over a kind of the same name). A set is made when first
    read, so a generation that only steers attention pays for the few sets its plan reads (VAR: ``image``; ACT:
    none), not for every kind the capture lists.

    Args:
        prompt: a Trace of the prompt's tokens (:meth:`Pass.key_side`); kinds: segment kinds; extra: ``{name: [B, N]}``.
    """

    def __init__(self, prompt: Trace, kinds: tuple[str, ...], extra: dict[str, torch.Tensor]) -> None:
        self._prompt, self._kinds, self._extra = prompt, tuple(kinds), dict(extra)
        self._masks: dict[str, torch.Tensor | None] = {}

    def _mask(self, name: str) -> torch.Tensor | None:
        """The set ``name``, or ``None`` when the prompt has none of it (a kind with no span, other than text)."""
        if name not in self._masks:
            mask = None
            if name in self._extra:
                mask = self._extra[name].to(torch.bool)
            elif name in self._kinds:
                mask = self._prompt.key_set(name)  # (B, N)
                mask = mask if name == "text" or mask.any() else None
            self._masks[name] = mask
        return self._masks[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        mask = self._mask(name)
        if mask is None:
            raise KeyError(name)
        return mask

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._mask(name) is not None

    def __iter__(self):
        return (name for name in dict.fromkeys((*self._kinds, *self._extra)) if self._mask(name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class StackState:
    """One attention stack: its metadata, the layers to record and the passes so far."""

    meta: TraceMeta
    layers: tuple[int, ...]
    passes: list[Pass] = field(default_factory=list)
    #: ``{layer: [B, N, d]}`` the hidden state entering each layer that runs attnlab's attention with a key-set
    #: function, held until that layer's call hands it over (a prefill's residual stream is not kept alive meanwhile)
    block_input: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the static key sets ``{name: [B, N_prompt] bool}`` of the first pass: they depend on the prompt alone.
    static_sets: "PromptSets | None" = None
    #: key sets fitted to the growing keys of a generation, ``{(layer or None for a static set, name): (set
    #: [B, (H,) N], padded copy [B, (H,) capacity] on its device, or None until the set comes back)}``: while
    #: decoding the sets stay the same tensors as the keys grow, and each step reads a slice of the padded copy.
    grown_sets: dict = field(default_factory=dict)


class Recorder:
    """Collects Traces inside ``attach(...)``. Not constructed by users.

    Args:
        capture: what to record.
        plan: intervention applied to the main stack, or ``None``.
        key_sets: extra static key sets ``{name: [B, N] bool}`` for stats and the plan.
        key_set_fn: computes dynamic, per-layer key sets (e.g. VAR's sinks) from the block input.
        impl: attention implementation for recorded layers (``auto``, ``torch``, ``eager``, ``triton``).
    """

    def __init__(self, capture: Capture, plan: Plan | None, key_sets: dict | None = None,
                 key_set_fn: KeySetFn | None = None, impl: str = "auto") -> None:
        self.capture = capture
        self.plan = plan
        self.extra_key_sets = dict(key_sets or {})
        self.key_set_fn = key_set_fn
        self.impl = impl
        self.stacks: dict[str, StackState] = {}
        self.main = "main"
        #: whether anything is recorded (Capture is frozen), and each main-stack layer's plan, asked at every call
        self._recording = bool(capture.captured)
        self._layer_plans: dict[int, object] = {}
        #: ``(stack, layer)`` whose first attention call passed :func:`attnlab.kernels.attention`'s input checks
        self._checked: set[tuple[str, int]] = set()

    # -- set-up -----------------------------------------------------------------------------------
    def add_stack(self, name: str, meta: TraceMeta, main: bool = False) -> None:
        """Register a stack; ``main=True`` marks the one plans and ``Capture.layers`` refer to."""
        layers = self.capture.layer_indices(meta.n_layers) if main else tuple(range(meta.n_layers))
        meta.captured = self.capture.captured
        self.stacks[name] = StackState(meta=meta, layers=layers)
        if main:
            self.main = name

    def begin_pass(self, stack: str, tokens: list[list[str]], segments: list[list[Segment]],
                   token_mask: torch.Tensor, keys: tuple | None = None) -> None:
        """Start a forward call of ``stack``; checks the memory budget before anything runs.

        ``keys``: for cross-attention, the key side's ``(tokens, segments, token_mask [B, K])``.
        """
        st = self.stacks[stack]
        if not st.passes:
            m = st.meta
            shape = ModelShape(m.n_layers, m.n_heads, m.d_head, m.d_model)
            # Capture.layers index the main stack; other stacks (a vision tower) record every layer.
            cap = self.capture if stack == self.main else replace(self.capture, layers=None)
            n_tokens = max(int(token_mask.shape[1]), int(keys[2].shape[1]) if keys is not None else 0)
            cap.check_budget(shape, batch=int(token_mask.shape[0]), n_tokens=n_tokens)
        st.passes.append(Pass(tokens=tokens, segments=segments, token_mask=token_mask, keys=keys))
        st.block_input.clear()

    # -- what the backends call -------------------------------------------------------------------
    def mark_causal(self, stack: str) -> None:
        """Record that ``stack`` turned out causal at run time (its modules' ``is_causal`` said otherwise)."""
        self.stacks[stack].meta.causal = True

    def wants(self, stack: str, layer: int) -> bool:
        """Whether this layer needs attnlab's attention (recorded or intervened)."""
        st = self.stacks.get(stack)
        if st is None or not st.passes:
            return False
        if layer in st.layers and self._recording:
            return True
        return self._layer_plan(stack, layer) is not None

    def _layer_plan(self, stack: str, layer: int):
        """The main stack's :class:`~attnlab.kernels.plan.LayerPlan` at ``layer`` (``None`` where it changes nothing, on
        other stacks and without a plan), looked up once per layer: the Plan is frozen."""
        if self.plan is None or stack != self.main:
            return None
        if layer not in self._layer_plans:
            self._layer_plans[layer] = self.plan.for_layer(layer)
        return self._layer_plans[layer]

    def _store(self, value: torch.Tensor) -> torch.Tensor:
        value = value.detach()
        return value if self.capture.keep_on_device else value.to("cpu")

    def _record(self, stack: str, layer: int, name: str, value: torch.Tensor) -> None:
        rec = self.stacks[stack].passes[-1].layers.setdefault(layer, LayerRecord())
        setattr(rec, name, self._store(value))

    def _key_sets(self, stack: str, layer: int, n_keys: int, device: torch.device,
                  preview: Callable[[], torch.Tensor] | None = None,
                  names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Static key sets from the segments plus dynamic ones, fitted to ``n_keys`` keys (generated keys belong to the
        sets :func:`_generated_keys_in` names, text and ``after_*``, and to no other).

        ``preview()`` returns the attention each key receives ``[B, H, K]`` without the plan, for dynamic key
        sets that depend on the layer's own attention (ACT's sinks). ``names``: the static sets to fit (``None``:
        all of them); the dynamic ones are all returned.
        """
        st = self.stacks[stack]
        first = st.passes[0]
        sets = self._static_sets(st)
        fitted = {name: _grown(st.grown_sets, (None, name), sets[name], n_keys, device)
                  for name in (sets if names is None else names) if name in sets}
        if self.key_set_fn is None or stack != self.main:
            return fitted
        dynamic = self.key_set_fn(layer, st.block_input.pop(layer, None), sets, preview=preview,
                                  token_mask=first.token_mask, n_queries=st.passes[-1].token_mask.shape[1])
        return {**fitted, **{name: _grown(st.grown_sets, (layer, name), mask, n_keys, device)
                             for name, mask in dynamic.items()}}

    def _static_sets(self, st: StackState) -> "PromptSets":
        """The segment key sets of the stack's first pass plus the user's, ``{name: [B, N_prompt] bool}``, each made
        when first read."""
        if st.static_sets is None:
            first = st.passes[0]
            extra = self.extra_key_sets if first.keys is None else {}  # user sets index queries
            st.static_sets = PromptSets(first.key_side(), self.capture.key_sets, extra)  # cross-attention: the keys'
        return st.static_sets

    def attend(self, stack: str, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
               causal: bool, key_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
               scale: float | None, return_pattern: bool = False, softcap: float | None = None,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run attention for a layer, recording what the capture asks.

        Args:
            q: ``[B, H, Q, d]``; k, v: ``[B, Hkv, K, d]``.
            causal, key_mask, attn_mask, scale: as in :func:`attnlab.kernels.attention`.
            softcap: logit soft-capping (Gemma 2); bias: ``[1|B, 1|H, Q, K]`` additive scores (ALiBi). Both as
                in :func:`attnlab.kernels.attention`, passed only when set.
            return_pattern: return the applied pattern even when the capture does not record it
                (for modules whose caller asked for attention weights).

        Returns:
            ``(out [B, H, Q, d], pattern [B, H, Q, K] or None)``.
        """
        st = self.stacks[stack]
        cap = self.capture
        record = layer in st.layers and self._recording
        lplan = self._layer_plan(stack, layer)
        stats = cap.stat_names if record else ()
        stats = stats + ("mass",) if stats else stats
        # (B, Q) or None: read by what is recorded and by the preview, not by a call that only steers
        real_queries = self._real_queries(st, q.shape[2], key_mask, q.device) if record else None
        terms = {name: t for name, t in (("softcap", softcap), ("bias", bias)) if t is not None}
        # the first call of each layer goes through attention()'s checks of its inputs (a plan naming a key set
        # nobody supplies fails there, with its name); later calls (decoding steps) build the same inputs again
        call = run_attention if (stack, layer) in self._checked else attention

        def preview() -> torch.Tensor:
            # only the heads the plan reweights: the other heads' sets change nothing (ACT: its calibrated heads)
            heads = _reweighted_heads(lplan, q.shape[1])
            sub = _head_subset(heads, q, k, v[..., :0], attn_mask, terms)  # values of width 0: no output to weigh
            _, plain = call(*sub[:3], causal=causal, key_mask=key_mask, attn_mask=sub[3], scale=scale,
                            stats=("received",), **sub[4], impl="torch" if self.impl == "eager" else self.impl,
                            received_queries=self._real_queries(st, q.shape[2], key_mask, q.device))
            if heads is None:
                return plain.received  # (B, H, K)
            received = plain.received.new_zeros(q.shape[0], q.shape[1], k.shape[2])
            received[:, heads] = plain.received
            return received  # (B, H, K), zero on the heads left alone

        n_q = q.shape[2]
        if lplan is not None and not stats:  # nothing recorded: the kernel reads (and checks) the plan's sets only
            reads, queries = _plan_sets(lplan)
            key_sets = self._key_sets(stack, layer, k.shape[2], k.device, preview, names=reads + queries)
            query_sets = {name: key_sets[name][:, -n_q:] for name in queries if name in key_sets}
            key_sets = {name: key_sets[name] for name in reads if name in key_sets}
        else:
            key_sets = self._key_sets(stack, layer, k.shape[2], k.device, preview) if stats or lplan is not None else {}
            query_sets = ({name: m[:, -n_q:] for name, m in key_sets.items() if m.dim() == 2}
                          if lplan is not None else {})
        want_pattern = record and cap.pattern
        impl = "eager" if (want_pattern or return_pattern) else self.impl
        out, stt = call(q, k, v, causal=causal, key_mask=key_mask, attn_mask=attn_mask, scale=scale, plan=lplan,
                        stats=stats, key_sets=key_sets, query_sets=query_sets, impl=impl,
                        return_pattern=want_pattern or return_pattern,
                        received_queries=real_queries if "received" in stats else None, **terms)
        self._checked.add((stack, layer))
        if record:
            self._note_scores(st, q, k, scale, attn_mask, real_queries, **terms)
            self._record_layer(st, layer, stt.pattern if want_pattern else None, stt.as_dict(), q, k, out)
        return out, stt.pattern

    def _note_scores(self, st: StackState, q: torch.Tensor, k: torch.Tensor, scale: float | None,
                     attn_mask: torch.Tensor | None, real_queries: torch.Tensor | None,
                     softcap: float | None = None, bias: torch.Tensor | None = None) -> None:
        """Record in the stack's meta how its scores relate to ``q . k`` (:attr:`TraceMeta.score_scale`,
        :attr:`TraceMeta.score_terms`), so that whoever rebuilds a map from stored queries and keys knows whether
        it can (masks are compared only when queries and keys are captured). q ``[B, H, Q, d]``, k ``[B, Hkv, K, d]``, attn_mask ``[1|B, 1|H, Q, K]`` bool or ``None``."""
        meta = st.meta
        meta.score_scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
        if not self.capture.qk:  # only a map rebuilt from stored queries and keys needs the terms
            return
        terms = set(meta.score_terms)
        if softcap is not None:
            terms.add("softcap")
        if bias is not None and "bias" not in terms:  # a bias that is zero wherever attending is allowed adds nothing
            finite = bias > torch.finfo(bias.dtype).min / 2
            if bool((bias[finite] != 0).any()):
                terms.add("bias")
        if attn_mask is not None and "mask" not in terms and self._other_mask(st, attn_mask, q.shape[2], k.shape[2],
                                                                              real_queries):
            terms.add("mask")
        meta.score_terms = tuple(sorted(terms))

    @staticmethod
    def _other_mask(st: StackState, attn_mask: torch.Tensor, n_q: int, n_k: int,
                    real_queries: torch.Tensor | None) -> bool:
        """Whether ``attn_mask`` hides pairs on real query rows that causality and key padding do not (a sliding
        window, a prefix-LM's image block); only checked at prefill, where the pass's masks cover every key."""
        current = st.passes[-1]
        keys = current.keys[2] if current.keys is not None else current.token_mask  # (B, K)
        if keys.shape[1] != n_k:
            return False
        causal = st.meta.causal and current.keys is None
        allowed = (keys.to(attn_mask.device, torch.bool)[:, None, :]  # (B, Q, K): key padding, then causality
                   & positional_mask(0, n_q, 0, n_k, n_q, n_k, causal, None, attn_mask.device))
        given = attn_mask.to(torch.bool).expand(allowed.shape[0], -1, n_q, n_k)  # (B, 1|H, Q, K)
        differs = given != allowed[:, None]
        if real_queries is not None:
            differs = differs & real_queries.to(differs.device)[:, None, :, None]
        return bool(differs.any())

    def observe(self, stack: str, layer: int, pattern: torch.Tensor, scores: torch.Tensor,
                q: torch.Tensor | None = None, k: torch.Tensor | None = None, out: torch.Tensor | None = None,
                score_qk: tuple | None = None) -> None:
        """Record a layer whose attention the model computed itself (a TransformerLens bridge's hook points), with
        the statistics the kernels would emit, computed from its pattern and scores by the same definitions
        (:func:`attnlab.kernels.reference.pattern_stats` for ``max`` and the masses).

        Args:
            pattern: ``[B, H, Q, K]`` the applied attention; scores: ``[B, H, Q, K]`` the scaled scores, masked
                pairs at the dtype's minimum or ``-inf`` (for ``lse``).
            q, k: ``[B, H|Hkv, Q|K, d]`` when ``qk`` is captured; out: ``[B, H, Q, d]`` when ``head_out`` is.
            score_qk: ``(q [B, H, Q, d], k [B, Hkv, K, d], scale)`` the bridge's queries and keys, for a bridge that
                hands weights as its scores: ``lse`` and the entropy then come from them when they reproduce the
                weights (:mod:`attnlab.hooks.bridge_scores`); they are not recorded.
        """
        st = self.stacks[stack]
        cap = self.capture
        if layer not in st.layers or not cap.captured:
            return
        stats = cap.stat_names + ("mass",) if cap.stat_names else ()
        p = pattern.float()
        real_queries = self._real_queries(st, p.shape[2], None, p.device)  # (B, Q) or None

        def received() -> torch.Tensor:  # (B, H, K), real query rows only: one matrix-vector product per head
            if real_queries is None:
                return p.sum(-2)
            return (real_queries[:, None, None, :].to(p.dtype) @ p)[..., 0, :]

        key_sets = self._key_sets(stack, layer, p.shape[-1], p.device, received) if stats else {}
        # TransformerLens' generic AttentionBridge hands the weights to the scores' hook: one query row tells (a whole
        # map compare cost 1.5 ms a layer at 12 x 512 x 512); scores equal to weights on a whole row do not occur
        has_scores = not torch.equal(scores[..., :1, :], pattern[..., :1, :])
        rows = None
        if "lse" in stats or "entropy" in stats:  # from what the model computed, no pass of exp or log over the map
            rows = score_rows(p, scores) if has_scores else weight_rows(p, score_qk)
        if "lse" in stats and rows is None:
            raise ValueError(f"Layer {layer} of this model hands its attention weights, not its scores, to the hook "
                             "for scores (TransformerLens' generic AttentionBridge does), and its hook_q and hook_k do "
                             "not reproduce them, so the log-sum-exp cannot be read off it; capture the other "
                             "statistics (Capture(stats=('entropy', 'max', 'received'))) or attach() to the Hugging "
                             "Face model for lse")
        found = pattern_stats(p, tuple(n for n in stats if n == "mass" or (n == "max" and rows is None)
                                       or (n == "entropy" and rows is None)), key_sets)
        if rows is not None:
            anchor, p_anchor, dead, p_dot_d, p_max = rows
            lse, entropy = softmax_row_stats(anchor, p_anchor, dead, p_dot_d if "entropy" in stats else None)
            found.update({name: value for name, value in (("lse", lse), ("entropy", entropy), ("max", p_max))
                          if name in stats})
        if "received" in stats:
            found["received"] = received()
        self._record_layer(st, layer, pattern if cap.pattern else None, found, q, k, out)

    def _record_layer(self, st: StackState, layer: int, pattern: torch.Tensor | None, stats: dict,
                      q: torch.Tensor | None, k: torch.Tensor | None, out: torch.Tensor | None) -> None:
        """Store what the capture asks for one layer of the current pass (q/k with keys repeated to ``H`` heads)."""
        cap = self.capture
        rec = st.passes[-1].layers.setdefault(layer, LayerRecord())
        if pattern is not None:
            rec.pattern = self._store(pattern)
        rec.stats = {name: self._store(t) for name, t in stats.items()}
        if cap.qk and q is not None and k is not None:
            rec.q = self._store(q)
            rec.k = self._store(k.repeat_interleave(q.shape[1] // k.shape[1], dim=1))
        if cap.head_out and out is not None:
            rec.head_out = self._store(out)

    @staticmethod
    def _real_queries(st, n_q: int, key_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """``[B, Q]`` True for the query rows of real tokens, so padding rows add nothing to ``received``.

        The rows are the pass's tokens at prefill (``token_mask``, checked once per pass rather than per layer),
        or the last ``Q`` keys of a key mask; while decoding (``Q`` new tokens, all real) nothing is masked.
        """
        current = st.passes[-1] if st.passes else None
        if current is not None and current.token_mask.shape[1] == n_q:
            key = (n_q, device)
            if key not in current.real_rows:
                mask = current.token_mask
                current.real_rows[key] = None if bool(mask.all()) else mask.to(device=device, dtype=torch.bool)
            return current.real_rows[key]
        if key_mask is not None:
            return key_mask[:, -n_q:]
        return None

    def reads_block_inputs(self, stack: str) -> bool:
        """Whether anything reads the hidden state entering ``stack``'s blocks: the residual stream captured (the
        embeddings are the first block's input), or a key-set function that reads it (:meth:`_fn_reads_hidden`). A
        backend hooks the blocks only then; :meth:`block_output` is read only when the residual stream is captured."""
        return self.capture.resid or self._fn_reads_hidden(stack)

    def _fn_reads_hidden(self, stack: str) -> bool:
        """Whether the key-set function reads ``stack``'s block inputs: it runs on the main stack only, and reads
        them unless it says otherwise (``reads_hidden = False``: ACT's sinks come from the layer's own attention)."""
        fn = self.key_set_fn
        return fn is not None and stack == self.main and getattr(fn, "reads_hidden", True)

    def block_input(self, stack: str, layer: int, hidden: torch.Tensor) -> None:
        """Called with the hidden state ``[B, N, d]`` entering a block; kept for the layer's key-set function when the
        layer runs attnlab's attention."""
        st = self.stacks.get(stack)
        if st is None or not st.passes:
            return
        hidden = st.passes[-1].batched(hidden)
        if self._fn_reads_hidden(stack) and self.wants(stack, layer):
            st.block_input[layer] = hidden.detach()
        if layer == 0 and self.capture.resid:
            st.passes[-1].embeddings = self._store(hidden)

    def block_output(self, stack: str, layer: int, hidden: torch.Tensor) -> None:
        """Called with a block's output hidden state ``[B, N, d]``."""
        st = self.stacks.get(stack)
        if st is None or not st.passes or not self.capture.resid or layer not in st.layers:
            return
        self._record(stack, layer, "resid", st.passes[-1].batched(hidden))

    # -- results ------------------------------------------------------------------------------------
    def traces(self, stack: str | None = None) -> list[Trace]:
        """Every forward call of a stack (the main one by default) as a Trace, in call order."""
        st = self.stacks[stack or self.main]
        return [Trace(p.tokens, p.segments, p.layers, st.meta, p.token_mask, p.embeddings,
                      **(dict(zip(("key_tokens", "key_segments", "key_mask"), p.keys)) if p.keys else {}))
                for p in st.passes]

    def trace(self) -> Trace:
        """The first forward call (the prefill, when generating), with the other stacks' first Traces nested by
        their names (``vision``; ``encoder`` and ``cross`` of an encoder-decoder model)."""
        main = self.traces()
        if not main:
            ran = [name for name, st in self.stacks.items() if st.passes]
            if ran:  # a tower called on its own (CLIP's get_image_features)
                raise RuntimeError(f"Only the {ran} stack(s) ran, not the main one ({self.main!r}): read "
                                   f"rec.traces({ran[0]!r}) for what they recorded")
            raise RuntimeError("Nothing was recorded: call the model inside the `with attach(...)` block first")
        out = main[0]
        for name in self.stacks:
            if name != self.main and name in NESTED_TRACES and self.stacks[name].passes:
                setattr(out, name, self.traces(name)[0])
        return out


def _generated_keys_in(name: str) -> bool:
    """Whether the key set ``name`` holds generated keys: they are text, and follow the prompt (``after_*``)."""
    return name == "text" or name.startswith("after_")


#: Keys a grown set holds beyond the first step that asks for it: the padding of about this many decoding steps.
GROWN_SPARE_KEYS = 256


def _grown(held: dict, key: tuple, mask: torch.Tensor, n_keys: int, device: torch.device) -> torch.Tensor:
    """Key set ``mask`` ``[B, (H,) N]`` fitted to ``n_keys`` keys on ``device`` (padded with generated keys, which
    belong to text and ``after_*`` sets, or trimmed), as a slice of a padded copy kept in ``held[key]`` once the same
    tensor comes back: a decoding step then costs a view instead of a pad and a copy."""
    fill = _generated_keys_in(key[1])
    entry = held.get(key)
    if entry is None or entry[0] is not mask:  # first sight of this tensor: fit it, and remember it
        held[key] = (mask, None)
        return _fit_keys(mask, n_keys, fill=fill).to(device)
    n = mask.shape[-1]
    if n >= n_keys:
        return _fit_keys(mask, n_keys).to(device)
    padded = entry[1]
    if padded is None or padded.shape[-1] < n_keys or padded.device != device:
        padded = torch.full((*mask.shape[:-1], n_keys + GROWN_SPARE_KEYS), fill, dtype=torch.bool, device=device)
        padded[..., :n] = mask
        held[key] = (mask, padded)
    return padded.narrow(-1, 0, n_keys)


def _fit_keys(mask: torch.Tensor, n_keys: int, fill: bool = False) -> torch.Tensor:
    """Pad (with ``fill``) or trim a ``[B, N]`` or ``[B, H, N]`` key mask to ``n_keys`` keys."""
    n = mask.shape[-1]
    if n == n_keys:
        return mask
    if n > n_keys:
        return mask[..., :n_keys]
    return torch.nn.functional.pad(mask, (0, n_keys - n), value=fill)


@functools.lru_cache(maxsize=256)
def _plan_sets(plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(key sets, query sets)`` a layer plan's reweighting reads, worked out once per (frozen) plan: a decoding
    step asks at every planned layer."""
    rw = plan.reweight
    if rw is None:
        return (), ()
    return rw.key_set_names(), (() if not rw.queries else (rw.queries,))


def _reweighted_heads(plan, n_heads: int) -> list[int] | None:
    """The heads a layer plan's reweighting changes (factor != 1), or ``None`` for all of them (or no plan)."""
    if plan is None or plan.reweight is None:
        return None
    heads = list(plan.reweight.changed_heads(n_heads))
    return None if len(heads) == n_heads else heads


def _head_subset(heads: list[int] | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 attn_mask: torch.Tensor | None, terms: dict) -> tuple:
    """``(q, k, v, attn_mask, terms)`` cut to the query ``heads`` (``None``: unchanged): q ``[B, H, Q, d]``, k/v
    ``[B, Hkv, K, d]`` (each kept query head's key/value head, for grouped-query attention), a per-head mask or bias
    ``[B|1, H, Q, K]``."""
    if heads is None:
        return q, k, v, attn_mask, terms
    n_heads = q.shape[1]
    index = torch.tensor(heads, device=q.device)
    kv = torch.tensor([h // (n_heads // k.shape[1]) for h in heads], device=k.device)
    per_head = lambda t: t if t is None or t.dim() < 2 or t.shape[1] == 1 else t.index_select(1, index)  # noqa: E731
    terms = {name: per_head(t) if name == "bias" else t for name, t in terms.items()}
    return q.index_select(1, index), k.index_select(1, kv), v.index_select(1, kv), per_head(attn_mask), terms

