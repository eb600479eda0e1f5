"""Load Hugging Face weights quietly: one plain line when weights a user relies on are missing, else nothing.

transformers 5 prints a coloured ``LOAD REPORT`` table (raw ANSI codes even when piped) whenever a checkpoint's
keys differ from the class's, e.g. a backbone loaded from a classifier checkpoint (unused head weights), and a
progress bar per load. Unused checkpoint weights are harmless; *missing* ones mean randomly initialised
parameters, which a user must hear about.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

#: checkpoints below this size load in well under a second: no progress bar
PROGRESS_MIN_BYTES = 200 * 2**20


def _weight_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(f.stat().st_size for f in path.glob("*.bin"))


@contextlib.contextmanager
def _quiet_transformers(progress: bool) -> Iterator[None]:
    """transformers' loading logger at ERROR and, unless ``progress``, its progress bars off; restored on exit."""
    from transformers.utils import logging as tf_logging

    level = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    if not progress:
        tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def load_pretrained(cls, path: str | Path, **kwargs):
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)`` in eval mode, without transformers' report.

    Args:
        cls: a transformers model class (``AutoModel``, ``LlavaForConditionalGeneration`` ...).
        path: a local checkpoint directory.
        kwargs: passed to ``from_pretrained``.

    Returns:
        The model. Missing weights (left randomly initialised) are named in one warning line on the
        ``attnlab.zoo.pretrained`` logger; unused checkpoint weights are not reported.
    """
    path = Path(path)
    with _quiet_transformers(progress=_weight_bytes(path) >= PROGRESS_MIN_BYTES):
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        log.warning("%s: %d weight(s) missing from %s and left randomly initialised: %s",
                    type(model).__name__, len(missing), path, shown)
    return model.eval()
