"""One batch of eval items answered under a method: the generation, its time per item, and a clear out-of-memory."""

from __future__ import annotations

import time

import torch

from attnlab.evals.answer import generate_answers


def answer_batch(loaded, method_state, images: list, prompts: list[str], max_new_tokens: int
                 ) -> tuple[list[str], float]:
    """Greedy answers to ``prompts`` (one image each) in one padded generation under the method.

    Args:
        loaded: ``(model, processor, spec)``.
        method_state: object with ``steering_for(images, prompts)`` (see ``interventions.methods``).
        images, prompts: the batch; max_new_tokens: answer length cap.

    Returns:
        ``(answers, seconds per item)``: the batch's wall time shared by its items.

    Raises:
        RuntimeError: the accelerator ran out of memory, naming the batch size and the fix (a smaller
            ``--batch-size``; the eval resumes where it stopped, keeping every answer recorded).
    """
    model, processor, spec = loaded
    t0 = time.perf_counter()
    try:
        answers = generate_answers(model, processor, spec, images, prompts, max_new_tokens=max_new_tokens,
                                   batch_size=len(prompts), **method_state.steering_for(images, prompts))
    except torch.OutOfMemoryError as err:
        raise RuntimeError(f"Out of memory answering {len(prompts)} items in one generation; rerun with a smaller "
                           "--batch-size (the eval resumes where it stopped, keeping the answers recorded)") from err
    return answers, (time.perf_counter() - t0) / len(prompts)
