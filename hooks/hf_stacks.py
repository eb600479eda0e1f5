"""Which attention stacks of a Hugging Face model attnlab can capture, and why it refuses the others.

There is no list of supported architectures: a model is captured when each of its attention modules hands
its scores to transformers' ``AttentionInterface`` (where attnlab registers its function), or is one of the few
that compute them inside and that :mod:`attnlab.hooks.module_adapters` rewrites to hand them over, and needs no
score term attnlab's kernels lack. Anything else is refused when ``attach`` starts, naming the module and
the reason, instead of producing a Trace with missing or wrong layers.

Encoder-decoder models (T5, BART, Whisper) hold three stacks: the encoder's self-attention (``encoder``), the
decoder's self-attention (``main``) and the decoder's cross-attention (``cross``). A decoder block holds one module
of each role, so modules are grouped by block list and role.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

from torch import nn

from attnlab.core.trace import TraceMeta

from .module_adapters import has_adapter
from .pooling import sentence_pooling

#: the leftmost numbered part of a module name is its block index (T5 nests a numbered list inside each block)
_LAYER_RE = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
#: the last name part of a cross-attention module: T5's ``EncDecAttention``, BART's and Whisper's ``encoder_attn``
_CROSS_NAMES = ("encdecattention", "encoder_attn", "crossattention", "cross_attn")


@dataclass
class Stack:
    """An attention stack found in a model: ``prefix.{i}`` are its blocks.

    Attributes:
        name: ``main`` (the stack plans and ``Capture.layers`` refer to; an encoder-decoder's decoder
            self-attention), ``vision`` (an LVLM's or CLIP's image tower), ``encoder`` (an encoder-decoder's
            encoder) or ``cross`` (its decoder's cross-attention).
        prefix: dotted name of the block list (``model.layers``, ``vision_model.encoder.layers``).
        attn_names: layer index -> dotted name of the attention module.
        config: the attention modules' config.
        owner: dotted name of the deepest ``PreTrainedModel`` holding the stack (``""``: the model).
        vision: whether the stack reads ``pixel_values`` (patch tokens) rather than ``input_ids``.
        role: ``self`` or ``cross`` (queries from the stack's tokens, keys from the encoder's).
    """

    name: str
    prefix: str
    attn_names: dict[int, str]
    config: object
    owner: str
    vision: bool = False
    role: str = "self"

    @property
    def runner(self) -> str:
        """Dotted name of the module whose forward runs the block list (T5's ``encoder``, BART's ``model.decoder``)."""
        return self.prefix.rpartition(".")[0]


def refuse(module: str, cls: str, reason: str) -> ValueError:
    """The one refusal message: which module, of which class, cannot be captured and why."""
    return ValueError(f"attnlab cannot capture attention module {module!r} ({cls}): {reason}. "
                      "See docs/models.md for the architectures attnlab captures and what it refuses.")


@functools.lru_cache(maxsize=None)
def routes_through_interface(cls: type) -> bool:
    """Whether ``cls.forward`` dispatches to transformers' ``AttentionInterface`` (where attnlab hooks in)."""
    try:
        source = inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


@functools.lru_cache(maxsize=None)
def kernel_score_terms() -> frozenset[str]:
    """Score terms beyond ``q k^T`` that :func:`attnlab.kernels.api.attention` takes (``softcap``, ``bias``)."""
    from attnlab.kernels.api import attention

    return frozenset(inspect.signature(attention).parameters) & {"softcap", "bias"}


@functools.lru_cache(maxsize=None)
def forward_parameters(cls: type) -> frozenset[str]:
    """The parameter names of ``cls.forward`` (a fact of the class, read once per class, not once per module)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def _is_attention_module(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.startswith("transformers.models") and cls.__name__.endswith("Attention")


def is_vision_config(cfg) -> bool:
    """A patch-embedding (ViT-style) tower: its config names a patch size and no vocabulary."""
    return getattr(cfg, "patch_size", None) is not None and getattr(cfg, "vocab_size", None) is None


def _why_not_interface(model: nn.Module, cls: type) -> str:
    cfg = model.config
    if getattr(cfg, "alibi", False) or cfg.model_type == "bloom":
        return ("it adds ALiBi position biases (Press et al., 2022) to the scores inside the module, not through "
                "transformers' AttentionInterface")
    relative_args = {"position_bias", "relative_pos", "rel_embeddings"}  # T5, DeBERTa
    if getattr(cfg, "relative_attention", False) or relative_args & forward_parameters(cls):
        return ("it computes relative-position attention inside the module, not through transformers' "
                "AttentionInterface")
    return "it computes attention itself instead of calling transformers' AttentionInterface, so attnlab never sees it"


def _check_capturable(model: nn.Module, name: str, module: nn.Module) -> None:
    """Raise the refusal for one attention module that attnlab's attention function cannot stand in for."""
    cls = type(module)
    if not routes_through_interface(cls) and not has_adapter(cls):
        raise refuse(name, cls.__name__, _why_not_interface(model, cls))
    cfg = getattr(module, "config", None)
    terms = kernel_score_terms()
    if getattr(cfg, "attn_logit_softcapping", None) is not None and "softcap" not in terms:
        raise refuse(name, cls.__name__, f"attention logit soft-capping (attn_logit_softcapping="
                     f"{cfg.attn_logit_softcapping}) is not in attnlab's kernels yet")
    if "position_bias" in forward_parameters(cls) and "bias" not in terms:
        raise refuse(name, cls.__name__, "its relative position bias (Raffel et al., 2020) needs the kernels' "
                     "additive bias term, which they do not take yet")
    if getattr(cfg, "alibi", False) and "bias" not in terms:
        raise refuse(name, cls.__name__, "ALiBi position biases (alibi=True) reach the attention function as an "
                     "additive mask, which attnlab's kernels do not take yet")


def is_cross_attention(name: str, module: nn.Module) -> bool:
    """Whether an attention module attends from one sequence to another (an encoder-decoder's cross-attention)."""
    return name.rpartition(".")[2].lower() in _CROSS_NAMES or "CrossAttention" in type(module).__name__


def _name_encoder_decoder(model: nn.Module, stacks: list[Stack]) -> None:
    """Name the stacks of a model with cross-attention ``encoder``, ``main`` (decoder) and ``cross``, or refuse it."""
    cross = [s for s in stacks if s.role == "cross"]
    selfs = [s for s in stacks if s.role == "self"]
    decoder = [s for s in selfs if cross and s.prefix == cross[0].prefix]
    encoder = [s for s in selfs if not decoder or s is not decoder[0]]
    if len(cross) != 1 or len(decoder) != 1 or len(encoder) != 1 or encoder[0].vision:
        name = cross[0].attn_names[min(cross[0].attn_names)]
        module = model.get_submodule(name)
        raise refuse(name, type(module).__name__, f"{model.config.model_type} has cross-attention but not one text or "
                     "audio encoder stack and one decoder stack holding it (encoder-decoder models such as T5, BART "
                     "and Whisper are captured)")
    encoder[0].name, decoder[0].name, cross[0].name = "encoder", "main", "cross"


def find_stacks(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> list[Stack]:
    """Attention stacks of a HF model: innermost ``*Attention`` modules grouped by block-list prefix and role.

    ``modules``: ``dict(model.named_modules())`` when the caller has it already (``attach`` walks the model once).

    Raises:
        ValueError: an attention module attnlab cannot capture (naming it and why), cross-attention outside an
            encoder-decoder, or no attention stack at all.
    """
    found = {name: m for name, m in (model.named_modules() if modules is None else modules.items())
             if _is_attention_module(m)}
    inner = {n: m for n, m in found.items() if not any(o != n and o.startswith(n + ".") for o in found)}
    grouped: dict[tuple[str, str], dict[int, str]] = {}
    configs: dict[tuple[str, str], object] = {}
    for name, module in inner.items():
        match = _LAYER_RE.match(name)
        if not match:
            continue
        _check_capturable(model, name, module)
        group = (match.group(1), "cross" if is_cross_attention(name, module) else "self")
        idx = int(match.group(2))
        if idx in grouped.get(group, {}):
            raise refuse(name, type(module).__name__, f"block {group[0]}.{idx} holds a second attention module "
                         f"({grouped[group][idx]}); stacks of stages with several attention blocks each are not "
                         "mapped to layers yet")
        grouped.setdefault(group, {})[idx] = name
        configs[group] = getattr(module, "config", None) or model.config
    stacks = []
    for (prefix, role), names in grouped.items():
        vision = is_vision_config(configs[prefix, role]) or "vision" in prefix.lower() or "visual" in prefix.lower()
        stacks.append(Stack("vision" if vision else "main", prefix, names, configs[prefix, role],
                            _owner_of(model, prefix), vision, role))
    if any(s.role == "cross" for s in stacks):
        _name_encoder_decoder(model, stacks)
    elif len(stacks) == 1:
        stacks[0].name = "main"
    if not stacks:
        raise ValueError(f"No attention layers found in {type(model).__name__}; attnlab captures Hugging Face models "
                         "whose attention modules call transformers' AttentionInterface (see docs/models.md)")
    if sum(s.name == "main" for s in stacks) != 1:
        raise ValueError(f"Could not tell the main attention stack of {type(model).__name__} among "
                         f"{[s.prefix for s in stacks]}; attnlab captures one text stack plus image towers")
    return stacks


def _owner_of(model: nn.Module, prefix: str) -> str:
    """Name of the deepest PreTrainedModel containing ``prefix`` (``""`` for the model itself)."""
    from transformers import PreTrainedModel

    parts = prefix.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        if isinstance(model.get_submodule(name), PreTrainedModel):
            return name
    return ""


def main_stack(model: nn.Module) -> Stack:
    """The stack plans and ``Capture.layers`` refer to (refusing what cannot be captured, like ``attach``)."""
    return next(s for s in find_stacks(model) if s.name == "main")


def stack_meta(model: nn.Module, stack: Stack, model_id: str) -> TraceMeta:
    """TraceMeta of a stack from its attention config."""
    cfg = stack.config
    first = model.get_submodule(stack.attn_names[min(stack.attn_names)])
    # BART's decoder may have other head counts than its encoder and T5's d_kv need not be d_model / heads: the
    # module's own numbers come first, the config's after.
    n_heads = _first_int(first, ("num_heads", "n_heads")) or cfg.num_attention_heads
    d_model = _first_int(first, ("embed_dim", "dim")) or cfg.hidden_size  # Qwen2-VL's hidden_size is the merger's
    d_head = (_first_int(first, ("head_dim", "key_value_proj_dim")) or getattr(cfg, "head_dim", None)
              or d_model // n_heads)
    causal = bool(getattr(first, "is_causal", False))
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    family = model.config.model_type if stack.name == "main" else cfg.model_type
    pooling = sentence_pooling(getattr(model, "name_or_path", "")) if stack.name == "main" else ""
    return TraceMeta(model=model_id, family=family, n_layers=len(stack.attn_names), n_heads=n_heads,
                     d_head=d_head, d_model=d_model, causal=causal, dtype=dtype, backend="hf", pooling=pooling)


def _first_int(obj, names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that ``obj`` holds as an int, or ``None``."""
    values = [getattr(obj, n, None) for n in names]
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool)), None)
