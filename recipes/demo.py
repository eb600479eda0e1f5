"""The embedded demo: Runs of MiniLM and of the zoo's toy models, built on first use and cached.

``build_demo_run()`` returns a folder holding one Run per available model (MiniLM always; ``toy-vit``,
``toy-vit-reg``, ``toy-llava`` and ``toy-gpt`` when their checkpoints exist), plus:

* ``minilm-sink-reweight``: the same MiniLM inputs under a Plan that scales attention to special tokens
  by 0.4 and gives the freed mass to text tokens (for the Interventions page);
* for an LVLM: a text-only trace beside the image pass, the VHD table, greedy answers, and the same
  inputs under a Plan moving attention from the first token to the image; and an eval Run comparing
  baseline, VHR, VAR and ACT with POPE and CHAIR on a few fresh scenes (``recipes.demo_eval``);
* for a GPT-2: the head communication graph and IOI activation patching (``circuits``, ``patching``).

A Run is rebuilt when it is missing or was made by another version of this recipe; the others are kept.
The cache is ``$ATTNLAB_CACHE/demo`` or ``~/.cache/attnlab/demo``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from attnlab.core.atomic import atomic_file
from attnlab.core.capture import Capture
from attnlab.core.runs import Run, RunFormatError, RunInfo, save_run

DEMO_VERSION = 2
LOG = logging.getLogger("attnlab.recipes.demo")
MINILM_TEXTS = (
    "The quick brown fox jumps over the lazy dog, and the dog sleeps.",
    "Attention heads in small transformers often attend to the first token.",
    "A red circle sits next to a blue square on a white table.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
)
FULL_CAPTURE = Capture(pattern=True, stats=True, qk=True, resid=True)
SINK_PLAN_NAME = "special→text x0.4"
#: Runs a builder writes beside ``<name>`` (suffixes).
COMPANIONS = {"text-encoder": ("-sink-reweight",), "lvlm": ("-first-to-image", "-eval")}
LVLM_PLAN_NAME = "first→image x0.4"


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo.

    Attributes:
        name: Run folder name.
        model: zoo name or checkpoint directory.
        kind: ``text-encoder``, ``vision``, ``lvlm`` or ``gpt``.
        eval_questions: for an LVLM, POPE questions per split in its eval Run (scenes and calibration scenes
            scale with it; see :func:`attnlab.recipes.demo_eval.build_lvlm_eval`).
    """

    name: str
    model: str
    kind: str
    eval_questions: int = 8


def default_cache_dir() -> Path:
    """``$ATTNLAB_CACHE/demo``, else ``~/.cache/attnlab/demo``."""
    base = os.environ.get("ATTNLAB_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "attnlab") / "demo"


def demo_models() -> list[DemoModel]:
    """MiniLM and every zoo toy model whose checkpoint is present (the others are skipped)."""
    from attnlab.zoo.registry import CHECKPOINTS

    out = [DemoModel("minilm", "minilm", "text-encoder")]
    for name, kind in (("toy-vit", "vision"), ("toy-vit-reg", "vision"), ("toy-llava", "lvlm"), ("toy-gpt", "gpt")):
        if (CHECKPOINTS / name / "config.json").is_file():
            out.append(DemoModel(name, name, kind))
    return out


def build_demo_run(cache_dir: str | Path | None = None, progress: bool = True,
                   models: list[DemoModel] | None = None, strict: bool = False) -> Path:
    """Build (or reuse) the demo Runs and return the folder holding them.

    Args:
        cache_dir: where to keep them; ``None``: :func:`default_cache_dir`.
        progress: show a progress bar (stderr).
        models: the models to include; ``None``: :func:`demo_models`.
        strict: raise when any model's Runs fail to build (tests); by default a failing model other than the
            text encoder is left out with a warning, so the user still gets the rest.

    Returns:
        The folder, ready for ``create_app([folder])``.
    """
    from tqdm.auto import tqdm

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    todo = [m for m in (models if models is not None else demo_models())
            if not all(_complete(root / f"{m.name}{suffix}") for suffix in ("", *COMPANIONS.get(m.kind, ())))]
    if not todo:
        return root
    images = _scene_images(root)
    bar = tqdm(todo, desc="building the demo Runs", unit="model", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        try:
            BUILDERS[spec.kind](spec, root, images)
        except Exception:  # one model failing must not cost the user the rest of the demo
            if strict or spec.kind == "text-encoder":
                raise
            LOG.warning("skipping %s in the demo: it failed to build", spec.name, exc_info=True)
    return root


def _complete(path: Path) -> bool:
    try:
        return Run.open(path).info.extra.get("demo_version") == DEMO_VERSION
    except RunFormatError:
        return False


def _scene_images(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Four toy-world scenes saved under ``root/images`` (seed 12345: not the zoo's training seed)."""
    from attnlab.zoo.world import generate_world

    folder = root / "images"
    folder.mkdir(exist_ok=True)
    out = []
    for i, scene in enumerate(generate_world(4, seed=12345).scenes):
        file = folder / f"scene{i}.png"
        if not file.exists():
            with atomic_file(file) as tmp:
                scene.image.save(tmp, format="PNG")
        out.append((file, scene.names))
    return out


def _info(spec, capture: Capture, texts, images, timings, run_dir: Path, plan=None, extra=None) -> RunInfo:
    """Manifest fields; image paths are stored relative to the Run, so the cache folder can move."""
    rel = [os.path.relpath(p, start=run_dir) for p in images]
    return RunInfo(model=asdict(spec), inputs={"texts": list(texts), "images": rel},
                   capture=asdict(capture), plan=plan.to_dict() if plan is not None else None, timings=timings,
                   extra={"demo_version": DEMO_VERSION, **(extra or {})})


def _capture(model, processor, spec, texts, images, plan=None, capture: Capture = FULL_CAPTURE):
    from attnlab.hooks.inputs import capture_trace

    t0 = time.perf_counter()
    trace = capture_trace(model, processor, spec, capture, list(texts), images, plan=plan)
    return trace, time.perf_counter() - t0


def _load(name: str):
    from attnlab.zoo import load

    t0 = time.perf_counter()
    loaded = load(name)
    return loaded, time.perf_counter() - t0


def build_text_encoder(spec: DemoModel, root: Path, images) -> None:
    """MiniLM on a few sentences, and the same under the special->text reweighting Plan."""
    from attnlab.kernels.plan import LayerPlan, Plan, Reweight

    (model, tok, mspec), load_s = _load(spec.model)
    trace, fwd = _capture(model, tok, mspec, MINILM_TEXTS, [])
    save_run(root / spec.name, {"main": trace},
             _info(mspec, FULL_CAPTURE, MINILM_TEXTS, [], {"load": load_s, "forward": fwd}, root / spec.name),
             overwrite=True)
    plan = Plan({i: LayerPlan(reweight=Reweight("special", 0.4, target="text")) for i in range(mspec.n_layers)},
                name=SINK_PLAN_NAME)
    trace, fwd = _capture(model, tok, mspec, MINILM_TEXTS, [], plan=plan)
    save_run(root / f"{spec.name}-sink-reweight", {"main": trace},
             _info(mspec, FULL_CAPTURE, MINILM_TEXTS, [], {"forward": fwd}, root / f"{spec.name}-sink-reweight",
                   plan=plan), overwrite=True)


def build_vision(spec: DemoModel, root: Path, images) -> None:
    """A ViT on the toy scenes."""
    from PIL import Image

    (model, proc, mspec), load_s = _load(spec.model)
    pil = [Image.open(p).convert("RGB") for p, _ in images]
    trace, fwd = _capture(model, proc, mspec, [], pil)
    save_run(root / spec.name, {"main": trace},
             _info(mspec, FULL_CAPTURE, [], [p for p, _ in images], {"load": load_s, "forward": fwd}, root / spec.name),
             overwrite=True)


def lvlm_prompts(images) -> tuple[list[str], list]:
    """Yes/no questions, one per scene: a present object for even scenes, an absent one for odd scenes."""
    from attnlab.zoo.world import TOY_CLASS_NAMES

    prompts = []
    for i, (_, names) in enumerate(images):
        absent = [c for c in TOY_CLASS_NAMES if c not in names]
        asked = names[0] if i % 2 == 0 or not absent else absent[0]
        prompts.append(f"Is there a {asked} in the image?")
    return prompts, [p for p, _ in images]


def build_lvlm(spec: DemoModel, root: Path, images) -> None:
    """An LVLM: image and text-only passes, VHD, answers; the same inputs under a first->image Plan."""
    from PIL import Image

    from attnlab.evals.answer import generate_answer
    from attnlab.kernels.plan import LayerPlan, Plan, Reweight

    (model, proc, mspec), load_s = _load(spec.model)
    prompts, paths = lvlm_prompts(images)
    pil = [Image.open(p).convert("RGB") for p in paths]
    capture = Capture(pattern=True, stats=True, qk=True, resid=True, head_out=True)
    trace, fwd = _capture(model, proc, mspec, prompts, pil, capture=capture)
    text_trace = _text_only_trace(model, proc, mspec, prompts)
    results = _vhd_table(trace, text_trace)
    answers = {f"{i}: {p}": generate_answer(model, proc, mspec, im, p, max_new_tokens=8)
               for i, (p, im) in enumerate(zip(prompts, pil))}
    save_run(root / spec.name, {"main": trace, "text": text_trace},
             _info(mspec, capture, prompts, paths, {"load": load_s, "forward": fwd}, root / spec.name,
                   extra={"answers": answers}),
             results=results, overwrite=True)
    plan = Plan({i: LayerPlan(reweight=Reweight("first", 0.4, target="image")) for i in range(mspec.n_layers)},
                name=LVLM_PLAN_NAME)
    trace, fwd = _capture(model, proc, mspec, prompts, pil, plan=plan, capture=capture)
    planned = {f"{i}: {p}": generate_answer(model, proc, mspec, im, p, max_new_tokens=8, plan=plan,
                                            query_after_image=False) for i, (p, im) in enumerate(zip(prompts, pil))}
    save_run(root / f"{spec.name}-first-to-image", {"main": trace},
             _info(mspec, capture, prompts, paths, {"forward": fwd}, root / f"{spec.name}-first-to-image", plan=plan,
                   extra={"answers": planned}),
             overwrite=True)
    from .demo_eval import build_lvlm_eval

    build_lvlm_eval(spec.name, (model, proc, mspec), root, DEMO_VERSION, limit=spec.eval_questions)


def _text_only_trace(model, proc, mspec, prompts):
    """The language model on the prompts without their image (the run VHD compares against)."""
    from attnlab.hooks.inputs import capture_trace, without_image

    texts = [without_image(p) for p in prompts]
    return capture_trace(model, proc, mspec, Capture(pattern=True, stats=True, head_out=True), texts, [])


def _vhd_table(trace, text_trace) -> dict:
    from attnlab.probes.vhd import head_divergence

    return {"vhd": head_divergence(trace, text_trace).to_table()}


def build_gpt(spec: DemoModel, root: Path, images) -> None:
    """A GPT-2 on IOI prompts and a repeated sequence, with its circuit graph and IOI patching."""
    import numpy as np

    from attnlab.zoo import toy_gpt

    (model, tok, mspec), load_s = _load(spec.model)
    prompts = toy_gpt.heldout_ioi_prompts(3, seed=0)
    words = [str(w) for w in np.random.default_rng(0).choice(toy_gpt.INDUCTION_WORDS, 10)]
    texts = [p.text for p in prompts] + [" ".join(words + words)]
    capture = Capture(pattern=True, stats=True, qk=True, resid=True, head_out=True)
    trace, fwd = _capture(model, tok, mspec, texts, [], capture=capture)
    t0 = time.perf_counter()
    results = _circuit_tables(model, tok)
    save_run(root / spec.name, {"main": trace},
             _info(mspec, capture, texts, [], {"load": load_s, "forward": fwd, "circuits": time.perf_counter() - t0},
                   root / spec.name),
             results=results, overwrite=True)


def _circuit_tables(model, tok) -> dict:
    """Circuit heads, the head graph and IOI patching; a failure fails the model's build (see
    :func:`build_demo_run`), never a silently thinner Run."""
    from attnlab.interventions.known_circuits import trace_circuits

    report = trace_circuits(model, tok, n_prompts=16, n_sequences=8)
    tables = {"circuit_heads": report.to_table()}
    if report.ioi is not None:
        tables["patching"] = report.ioi.to_table()
    if report.graph is not None:
        tables["circuits"] = report.graph.to_table()
    return tables


BUILDERS = {"text-encoder": build_text_encoder, "vision": build_vision, "lvlm": build_lvlm, "gpt": build_gpt}
