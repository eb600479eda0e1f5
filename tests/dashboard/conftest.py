"""Demo Runs for the dashboard tests: MiniLM plus tiny random stand-ins for the zoo's toy models.

The tiny checkpoints have the toy models' architectures (DINOv2, DINOv2 with registers, LLaVA), so every page
has data of every kind (text, image patches, registers, an LVLM's vision tower) at test speed. toy-gpt is the
shipped trained checkpoint: its circuit and patching tables come from the pipeline (a random GPT-2 has no
circuits to find). The demo is built strictly: any model that fails to build fails the tests. Two hand-written
fixtures sit beside it, for figure tests that need known values: ``toy-gpt-tables`` (toy-gpt's capture with
hand-written circuit and patching tables) and an eval Run with a hand-written summary table.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from attnlab.core.runs import Run, RunInfo, write_results

TINY = {"toy-vit": ("dinov2", "vision"), "toy-vit-reg": ("dinov2_with_registers", "vision"),
        "toy-llava": ("llava", "lvlm")}


def eval_summary() -> pd.DataFrame:
    """A small POPE/CHAIR summary in the layout ``attnlab eval compare`` writes."""
    rows = []
    for method, acc in (("baseline", 0.71), ("act", 0.74)):
        for split in ("random", "adversarial"):
            rows.append({"task": "pope", "split": split, "method": method, "accuracy": acc, "precision": acc + 0.02,
                         "recall": acc - 0.05, "f1": acc - 0.01, "yes_ratio": 0.55, "n": 20, "seconds": 1.5,
                         "time_vs_baseline": 1.0})
        rows.append({"task": "chair", "split": "captions", "method": method, "chair_s": 0.3, "chair_i": 0.12,
                     "recall": 0.6, "mean_length": 9.5, "n": 10, "seconds": 2.0, "time_vs_baseline": 1.1})
    return pd.DataFrame(rows)


def circuit_edges() -> pd.DataFrame:
    """A hand-written edge table in the layout of ``CircuitGraph.to_frame()`` (2 layers x 4 heads)."""
    return pd.DataFrame({"upstream": ["0.1", "embed", "0.2", "0.3"], "downstream": ["1.3", "1.0", "1.1", "1.2"],
                         "side": ["src", "dest", "src", "dest"], "strength": [0.7, 0.4, 0.1, 0.25],
                         "count": [3, 2, 1, 2], "firings": [4, 4, 4, 4], "components": [[0], [1], [2], [0, 1]],
                         "kind": ["head", "embed", "head", "head"]})


def patching_effects():
    """A hand-written :class:`PatchingResult` (2 layers x 4 heads)."""
    import numpy as np

    from attnlab.interventions.patching import PatchingResult

    effect = np.array([[0.5, -0.2, 0.0, 0.1], [0.1, 0.9, 0.05, -0.1]])
    return PatchingResult(effect, np.zeros_like(effect), 1.0, 0.0, "activation", "denoise")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A built demo folder (session-wide): MiniLM, tiny toy stand-ins, intervention Runs and an eval Run."""
    from attnlab.recipes.demo import DemoModel, build_demo_run
    from attnlab.zoo.tiny import save_tiny

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    models = [DemoModel("minilm", "minilm", "text-encoder")]
    for name, (family, kind) in TINY.items():
        models.append(DemoModel(name, str(save_tiny(family, checkpoints / name, image_size=32, patch=8)), kind,
                                eval_questions=2))
    models.append(DemoModel("toy-gpt", "toy-gpt", "gpt"))
    root = build_demo_run(tmp_path_factory.mktemp("cache") / "demo", progress=False, models=models, strict=True)
    write_results(root / "eval-compare", RunInfo(model={"name": "toy-llava", "family": "llava"},
                                                 extra={"task": "compare"}), {"summary": eval_summary()}, kind="eval")
    assert {"circuit_heads", "circuits", "patching"} <= set(Run.open(root / "toy-gpt").manifest["results"])
    shutil.copytree(root / "toy-gpt", root / "toy-gpt-tables")
    hand = Run.open(root / "toy-gpt-tables")
    hand.add_result("circuits", circuit_edges())
    patching_effects().save(hand, "patching")
    return root


@pytest.fixture(scope="session")
def app(demo_root):
    """The dashboard over the demo folder."""
    from attnlab.dashboard.app import create_app

    return create_app([demo_root])


@pytest.fixture
def ctx(app):
    """An app context, so callbacks find the app's data."""
    with app.server.app_context():
        yield app
