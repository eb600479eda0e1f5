"""The demo's eval Run: baseline, VHR, VAR and ACT on a few fresh toy-world scenes, scored with POPE and CHAIR.

The scenes come from a world seed the zoo never trains on (:data:`EVAL_SEED`); ACT searches its heads and
VAR detects sink dimensions on a second, smaller world (:data:`CALIBRATION_SEED`), so no method sees the
questions it is scored on. The Run has the layout ``attnlab eval compare`` writes (a ``summary`` table plus
per-question predictions and per-image captions), so the Interventions page reads both the same way.
"""

from __future__ import annotations

from pathlib import Path


EVAL_SEED = 24680
CALIBRATION_SEED = 13579
METHODS = ("baseline", "vhr", "var", "act")


def demo_worlds(root: Path, n_images: int = 6, n_calibration: int = 4):
    """The eval and calibration Datasets of the demo, written under ``root`` once.

    Returns:
        ``(data, calibration)``: :class:`attnlab.evals.benchmark.BenchmarkFiles` objects.
    """
    from attnlab.evals.benchmark import BenchmarkFiles
    from attnlab.zoo.world_files import benchmark_files, write_world

    folders = {}
    for name, n, seed in (("eval-world", n_images, EVAL_SEED), ("eval-calibration", n_calibration, CALIBRATION_SEED)):
        folder = root / f"{name}-{n}"
        if not (folder / "world.json").exists():
            write_world(folder, n, seed, overwrite=True)
        folders[name] = folder
    world, calib = folders["eval-world"], folders["eval-calibration"]
    data = benchmark_files(world)
    calibration = BenchmarkFiles(pope={"calibration": str(calib / "pope_random.jsonl")}, images=str(calib / "images"))
    return data, calibration


def build_lvlm_eval(name: str, loaded, root: Path, version: int, *, limit: int = 8, max_new_tokens: int = 4,
                    caption_tokens: int = 24) -> Path:
    """Compare every method on the demo scenes and save the eval Run ``root / f"{name}-eval"``.

    Args:
        name: the demo model's Run name.
        loaded: ``(model, processor, spec)`` of a vision-language model.
        root: the demo folder.
        version: the demo recipe version stored in the manifest.
        limit: POPE questions per split; the scenes (one CHAIR caption each) number ``max(2, limit // 2)`` and
            the calibration scenes ``max(2, limit // 4)``.
        max_new_tokens, caption_tokens: answer and caption length caps.

    Returns:
        The Run directory.
    """
    from attnlab.evals.benchmark import prepare_chair
    from attnlab.jobs.compare import run_comparison, save_comparison

    n_images = max(2, limit // 2)
    data, calibration = demo_worlds(root, n_images, max(2, limit // 4))
    out = root / f"{name}-eval"
    summary, tables, info = run_comparison(loaded, list(METHODS), data, out, calibration=calibration,
                                           chair=prepare_chair(data, n_images), pope_limit=limit,
                                           chair_limit=n_images, max_new_tokens=max_new_tokens,
                                           caption_tokens=caption_tokens, progress=False, demo_version=version,
                                           task="compare")
    save_comparison(out, summary, tables, info)
    return out
