"""A progress bar over the blocks of a model's main attention stack, for long forward passes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .hf_stacks import main_stack

#: Inputs at least this long show a bar per layer: at 4k tokens a CPU layer takes seconds.
LONG_INPUT_TOKENS = 4096


@contextlib.contextmanager
def layer_progress(model: nn.Module, desc: str = "layers", enabled: bool = True) -> Iterator[None]:
    """Tick a bar (stderr) as each block of ``model``'s main stack finishes; hooks are removed on exit.

    Args:
        model: a Hugging Face model attnlab can attach to (its main stack is found as :func:`attach` finds it).
        desc: the bar's label.
        enabled: ``False`` yields without a bar (so callers need no second code path).
    """
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    stack = main_stack(model)
    blocks = model.get_submodule(stack.prefix)  # ModuleList of the blocks
    bar = tqdm(total=len(blocks), desc=desc, unit="layer", leave=False)

    def tick(*_) -> None:  # a forward hook that returns anything would replace the block's output
        bar.update(1)

    handles = [block.register_forward_hook(tick) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
