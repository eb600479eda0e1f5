"""``attnlab eval pope|chair|compare``: hallucination evaluations of baseline and intervention methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from attnlab.jobs import EVAL_BATCH_SIZE

from .common import check_writable, emit_json, friendly, holds_only
from .workers import WORKERS_HELP, with_workers

#: The methods' layer rules as ``attnlab eval --help`` states them; tests check them against vhr_layers/var_layers.
LAYER_RULES_HELP = "\n\n".join((
    "Layer rules scale with decoder depth L (rounding halves up); the papers' sets, chosen for 32-layer "
    "LLaVA-1.5, are the L=32 case. Each eval Run records the layers and heads every method chose (manifest 'plans').",
    "VHR (He et al. 2025): layer max(1, round(L/32)) + the last max(1, round(14L/32)) layers: "
    "L=32 {1, 18..31}; L=8 {1, 4..7}; L=3 {1, 2}.",
    "VAR (Kang et al. 2025): skip the first max(1, round(2L/32)) and the last max(1, round(L/32)) layers: "
    "L=32 2..30; L=8 1..6; L=3 {1}.",
))

eval_app = typer.Typer(help="Hallucination evaluations (POPE, CHAIR) of methods that steer attention.\n\n"
                       + LAYER_RULES_HELP, no_args_is_help=True)


def _methods(spec: str) -> list[str]:
    from attnlab.interventions.methods import check_method_name

    names = [m.strip() for m in spec.split(";") if m.strip()] if ";" in spec else _split_methods(spec)
    for name in names:
        check_method_name(name)
    if not names:
        raise ValueError("Give at least one --method")
    return names


def _split_methods(spec: str) -> list[str]:
    """Split on commas, keeping ``mask:SPEC`` lists (which contain commas) whole."""
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if out and out[-1].startswith("mask:") and part and (part[0].isdigit() or part[0] == "*"):
            out[-1] += "," + part
        elif part:
            out.append(part)
    return out


def _dataset(spec, questions: Path | None, images: Path | None, split: str | None, annotations: Path | None,
             out: Path, need_chair: bool):
    from attnlab.evals.benchmark import BenchmarkFiles
    from attnlab.zoo.toy_llava import toy_dataset

    if questions is None and annotations is None:
        return toy_dataset(spec, out)
    if images is None:
        raise ValueError("Give --images DIR with --questions/--annotations")
    if not images.is_dir():
        raise ValueError(f"--images {images} is not a directory")
    pope = {split or questions.stem: str(questions)} if questions else {}
    if questions is not None and not questions.is_file():
        raise ValueError(f"--questions {questions} does not exist")
    if need_chair and annotations is None:
        raise ValueError("CHAIR needs --annotations COCO_INSTANCES.json")
    return BenchmarkFiles(pope=pope, images=str(images), annotations=str(annotations) if annotations else None)



def _calibration(spec, out: Path, questions: Path | None, images: Path | None, test):
    """The calibration BenchmarkFiles: ``--calibration`` checked against the test set, else a zoo card's toy-world
    ``calibration`` split, else ``None`` (the methods then calibrate on nothing and say so)."""
    from attnlab.evals.benchmark import calibration_dataset
    from attnlab.zoo.toy_llava import toy_dataset

    if questions is not None:
        return calibration_dataset(questions, images, test)
    try:
        return toy_dataset(spec, out, split="calibration")
    except ValueError:
        return None

def _load_lvlm(model: str):
    from attnlab.hooks.inputs import default_device
    from attnlab.zoo import load, peek

    name, _, family, modality = peek(model)
    if modality != "vision-language":
        raise ValueError(f"{name} ({family}) is not a vision-language model; POPE and CHAIR need one with an image processor")
    loaded = load(model)
    if getattr(loaded[1], "image_processor", None) is None:
        raise ValueError(f"{name} has no image processor; save a LlavaProcessor with the checkpoint")
    loaded[0].to(default_device())  # this rank's GPU under torchrun on a CUDA machine; the CPU otherwise
    return loaded


@dataclass(frozen=True)
class EvalRequest:
    """One ``attnlab eval`` command's settings (paths as given; ``binding`` resolves them)."""

    task: str  # pope | chair | compare
    model: str
    method: str
    questions: Path | None = None
    images: Path | None = None
    split: str | None = None
    annotations: Path | None = None
    limit: int | None = None
    max_new_tokens: int = 8
    caption_tokens: int = 32
    calibration: Path | None = None
    calibration_images: Path | None = None
    batch_size: int = EVAL_BATCH_SIZE
    as_json: bool = False

    def binding(self) -> dict:
        """The settings that fix every row of an eval Run's tables; a finished Run accepts only the same again. The
        batch size is not one: a padded batch gives each item its answer alone (it is recorded beside them)."""
        def where(p):
            return str(Path(p).resolve()) if p is not None else None

        return {"task": self.task, "model": self.model, "methods": _methods(self.method),
                "questions": where(self.questions), "images": where(self.images), "split": self.split,
                "annotations": where(self.annotations), "limit": self.limit,
                "max_new_tokens": self.max_new_tokens if self.task != "chair" else None,
                "caption_tokens": self.caption_tokens, "calibration": where(self.calibration),
                "calibration_images": where(self.calibration_images)}


def _check_request(request: EvalRequest, out: Path) -> None:
    """Refuse bad numbers and an unusable ``--out`` before any model is loaded (one line each).

    ``--out`` must be new, an unfinished eval (only its progress, shards and toy worlds), or a finished eval Run
    made with exactly these settings (rerunning it rebuilds the same tables). Another eval there (other methods,
    task, limit, ...) is refused naming what differs: one Run holds one comparison, never a mix of two.
    """
    from attnlab.core.runs import Run, run_kind

    for flag, value in (("--limit", request.limit), ("--max-new-tokens", request.max_new_tokens),
                        ("--caption-tokens", request.caption_tokens), ("--batch-size", request.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    bound = request.binding()
    check_writable(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "manifest.json").exists():
        if not holds_only(out, ("progress", "shards", "results"), ("toy-world-",)):
            raise ValueError(f"--out {out} is not an attnlab eval Run; choose another --out (nothing was written)")
        return
    kind = run_kind(out)
    if kind != "eval":
        what = f"holds an attnlab {kind} Run" if kind else "holds a manifest.json that is not a valid attnlab Run"
        raise ValueError(f"--out {out} {what}; an eval never writes into it: choose another --out")
    stored = Run.open(out).info.extra.get("command", {})
    changed = [k for k in bound if k in stored and stored[k] != bound[k]]
    if changed or not stored:
        raise ValueError(f"--out {out} holds a finished eval ({stored.get('task', '?')}: "
                         f"{', '.join(stored.get('methods', [])) or '?'}) made with other settings "
                         f"({', '.join(changed) or 'unknown'}); an eval Run is never overwritten or mixed: use another --out")


@with_workers(check=_check_request)
def _run(request: EvalRequest, out: Path, shard=None) -> None:
    from attnlab.evals.benchmark import prepare_chair
    from attnlab.jobs.compare import run_comparison, save_comparison

    task, limit = request.task, request.limit
    names = _methods(request.method)
    out.mkdir(parents=True, exist_ok=True)
    loaded = _load_lvlm(request.model)
    if shard is not None:
        shard.wait_for_leader()  # followers read the toy worlds rank 0 writes next
    data = _dataset(loaded[2], request.questions, request.images, request.split, request.annotations, out,
                    need_chair=task in ("chair", "compare"))
    chair = prepare_chair(data, limit) if task in ("chair", "compare") else None
    calibrated = any(name in ("act", "var") for name in names)
    calib = _calibration(loaded[2], out, request.calibration, request.calibration_images, data) if calibrated else None
    if shard is not None:
        shard.release_followers()  # rank 0 has written the shared toy worlds; every rank builds its methods now
    summary, tables, info = run_comparison(loaded, names, data, out, calibration=calib, chair=chair,
                                           pope=task != "chair", pope_limit=limit, chair_limit=limit,
                                           max_new_tokens=request.max_new_tokens,
                                           caption_tokens=request.caption_tokens, shard=shard,
                                           batch_size=request.batch_size, task=task,
                                           command=request.binding())
    if shard is not None and not shard.is_main:
        return  # every rank holds the merged tables; rank 0 writes the Run
    save_comparison(out, summary, tables, info)
    _report(summary, tables.get("significance"), info, out, request.as_json)


def _report(summary, differences, info, out: Path, as_json: bool) -> None:
    """Print the comparison table and the paired differences (or one JSON object)."""
    if as_json:
        from attnlab.evals.significance import difference_records

        emit_json({"run": str(out), "table": summary.to_dict(orient="records"), "plans": info.extra["plans"],
                   "differences": difference_records(differences)})
        return
    from rich.console import Console

    from attnlab.evals.significance import format_differences

    console = Console()
    console.print(summary.drop(columns=[c for c in ("n",) if c in summary]).round(3).to_string(index=False))
    if differences is not None:
        level = f"{differences['confidence'].iloc[0]:.0%}"
        console.print(f"\nmethod - baseline on the same items ({level} paired bootstrap CI; McNemar's exact "
                      "test on accuracy):")
        console.print(format_differences(differences).to_string(index=False))
    typer.echo(f"wrote {out}")


OUT_HELP = "eval Run directory (resumes an interrupted eval with the same settings; never overwrites results)"
CALIB_HELP = ("POPE-format JSONL that ACT searches its heads on and VAR detects sink dimensions from; must not share "
              "questions with the test set (default: the zoo card's calibration split)")
CALIB_IMAGES_HELP = "image folder of the --calibration questions (default: --images)"
BATCH_HELP = ("items answered in one padded generation: larger batches share each generation's fixed costs "
              "(each item still gets the answer it gets alone); lower it if memory runs short")


@eval_app.command("pope")
@friendly
def pope(model: str = typer.Option(..., "--model"), questions: Path = typer.Option(None, "--questions"),
         images: Path = typer.Option(None, "--images"), method: str = typer.Option("baseline", "--method"),
         split: str = typer.Option(None, "--split"), limit: int = typer.Option(None, "--limit"),
         max_new_tokens: int = typer.Option(8, "--max-new-tokens"),
         out: Path = typer.Option(Path("runs/eval-pope"), "--out", help=OUT_HELP),
         calibration: Path = typer.Option(None, "--calibration", help=CALIB_HELP),
         calibration_images: Path = typer.Option(None, "--calibration-images", help=CALIB_IMAGES_HELP),
         workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
         batch_size: int = typer.Option(EVAL_BATCH_SIZE, "--batch-size", help=BATCH_HELP),
         as_json: bool = typer.Option(False, "--json")):
    """POPE accuracy/precision/recall/F1/yes-ratio; without --questions, all three toy-world splits."""
    _run(EvalRequest("pope", model, method, questions=questions, images=images, split=split, limit=limit,
                     max_new_tokens=max_new_tokens, calibration=calibration, calibration_images=calibration_images,
                     batch_size=batch_size, as_json=as_json), out, workers=workers)


@eval_app.command("chair")
@friendly
def chair(model: str = typer.Option(..., "--model"), annotations: Path = typer.Option(None, "--annotations"),
          images: Path = typer.Option(None, "--images"), method: str = typer.Option("baseline", "--method"),
          limit: int = typer.Option(None, "--limit"), max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
          out: Path = typer.Option(Path("runs/eval-chair"), "--out", help=OUT_HELP),
          calibration: Path = typer.Option(None, "--calibration", help=CALIB_HELP),
          calibration_images: Path = typer.Option(None, "--calibration-images", help=CALIB_IMAGES_HELP),
          workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
          batch_size: int = typer.Option(EVAL_BATCH_SIZE, "--batch-size", help=BATCH_HELP),
          as_json: bool = typer.Option(False, "--json")):
    """Captions scored with CHAIR_s, CHAIR_i, recall and length; without --annotations, the toy world."""
    _run(EvalRequest("chair", model, method, images=images, annotations=annotations, limit=limit,
                     max_new_tokens=max_new_tokens, caption_tokens=max_new_tokens, calibration=calibration,
                     calibration_images=calibration_images, batch_size=batch_size, as_json=as_json), out,
         workers=workers)


@eval_app.command("compare")
@friendly
def compare(model: str = typer.Option(..., "--model"),
            method: str = typer.Option("baseline,vhr,var,act", "--method", help="comma list of methods"),
            questions: Path = typer.Option(None, "--questions"), annotations: Path = typer.Option(None, "--annotations"),
            images: Path = typer.Option(None, "--images"), limit: int = typer.Option(None, "--limit"),
            max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="POPE answer length cap"),
            caption_tokens: int = typer.Option(32, "--caption-tokens", help="CHAIR caption length cap"),
            out: Path = typer.Option(Path("runs/eval-compare"), "--out", help=OUT_HELP),
            calibration: Path = typer.Option(None, "--calibration", help=CALIB_HELP),
            calibration_images: Path = typer.Option(None, "--calibration-images", help=CALIB_IMAGES_HELP),
            workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
            batch_size: int = typer.Option(EVAL_BATCH_SIZE, "--batch-size", help=BATCH_HELP),
            as_json: bool = typer.Option(False, "--json")):
    """Baseline vs every method on the same POPE questions and CHAIR images: paired bootstrap CIs, McNemar's
    test, and median per-item time ratios (after a warm-up batch)."""
    _run(EvalRequest("compare", model, method, questions=questions, images=images, annotations=annotations,
                     limit=limit, max_new_tokens=max_new_tokens, caption_tokens=caption_tokens,
                     calibration=calibration, calibration_images=calibration_images, batch_size=batch_size,
                     as_json=as_json), out, workers=workers)
