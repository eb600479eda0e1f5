"""How a sentence model pools its token states into one output, read from its sentence-transformers config.

sentence-transformers checkpoints list their modules in ``modules.json``; the pooling module's folder
(``1_Pooling`` by convention) holds ``config.json`` with one ``pooling_mode_*`` flag set. all-MiniLM-L6-v2
mean-pools (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019, Section 3), so explaining its [CLS] row
explains an output the model does not use.
"""

from __future__ import annotations

import json
from pathlib import Path

#: ``pooling_mode_*`` flag -> the name a Trace records (``TraceMeta.pooling``), checked in this order.
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean",  # the mean times sqrt(n): the same direction
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


def _pooling_folder(checkpoint: Path) -> Path | None:
    """The pooling module's folder named by ``modules.json``, else ``1_Pooling`` when it exists."""
    modules = checkpoint / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text())
        except (OSError, ValueError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("type", "")).endswith(".Pooling"):
                return checkpoint / str(entry.get("path", ""))
    folder = checkpoint / "1_Pooling"
    return folder if folder.is_dir() else None


def sentence_pooling(checkpoint: str | Path) -> str:
    """The pooling a sentence-transformers checkpoint applies to its last hidden states.

    Args:
        checkpoint: the model's directory (``model.name_or_path``); a hub id or a missing folder reads as unknown.

    Returns:
        ``"mean"``, ``"cls"``, ``"last"``, ``"max"`` or ``"weightedmean"``; ``""`` when the directory holds no
        readable pooling config (a plain transformers checkpoint) or several modes are set at once.
    """
    path = Path(str(checkpoint)) if checkpoint else None
    if path is None or not path.is_dir():
        return ""
    folder = _pooling_folder(path)
    if folder is None or not (folder / "config.json").is_file():
        return ""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    modes = {name for flag, name in POOLING_MODES.items() if isinstance(config, dict) and config.get(flag) is True}
    return modes.pop() if len(modes) == 1 else ""
