"""``attnlab capture``, ``attnlab info`` and ``attnlab demo``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import typer

from attnlab.core.capture import Capture
from attnlab.core.atomic import check_replaceable
from attnlab.core.runs import Run, RunInfo, run_kind, save_run
from attnlab.core.trace import Trace

from .common import check_writable, emit_json, friendly, parse_layers
from .dataset_cmd import DATASET_HELP, dataset_budget, run_dataset_capture
from .summary import print_summary, run_summary
from .workers import WORKERS_HELP

DEMO_TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps."


def attention_budget(trace: Trace) -> list[dict]:
    """Per layer: each input's mean over heads and real queries of the entropy and the mass on each recorded key
    set, averaged over inputs: what ``attnlab info`` shows for a dataset Run (:func:`item_statistics`)."""
    from attnlab.core.item_stats import item_statistics

    first = next(iter(trace.layers.values()))
    key_sets = tuple(sorted(n[len("mass."):] for n in first.stats if n.startswith("mass.")))
    per_item = item_statistics(trace, key_sets)  # {name: [B, L, H]}
    names = [n for n in per_item if n == "entropy" or n.startswith("mass.")]
    return [{"layer": layer, **{n.replace("mass.", "mass on "): float(per_item[n][:, j].mean()) for n in names}}
            for j, layer in enumerate(sorted(trace.layers))]


def read_prompt_file(path: Path) -> str:
    """The whole content of a ``--text-file`` (UTF-8), or a ValueError naming the flag and the fix."""
    if not path.is_file():
        raise ValueError(f"--text-file {path} is not a file; give a UTF-8 text file holding one prompt")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--text-file {path} is not UTF-8 text (byte {err.start}); convert it, e.g. with iconv") \
            from None
    if not content.strip():
        raise ValueError(f"--text-file {path} is empty; give a file holding the prompt")
    return content


def capture_estimate(model, spec, capture: Capture, inputs: dict) -> str:
    """One line, printed before the pass: the captured tensors' size against the budget and the memory one
    attention layer holds while it runs (blocks of rows for statistics; the whole map for patterns).

    Raises:
        ValueError: the capture is over its budget (before the pass, naming the cheaper option).
    """
    from attnlab.core.capture import ModelShape, format_bytes
    from attnlab.hooks.hf_stacks import main_stack, stack_meta
    from attnlab.hooks.inputs import check_positions
    from attnlab.kernels.api import working_bytes

    check_positions(inputs, model)  # an over-long input is refused first, in one line
    ids = inputs.get("input_ids")
    if ids is None or spec.modality != "text":  # image tokens: their count is known only inside the pass
        return f"capturing {', '.join(capture.captured)} (budget {format_bytes(capture.budget_bytes)})"
    batch, n = ids.shape
    meta = stack_meta(model, main_stack(model), spec.name)
    kept = capture.check_budget(ModelShape(meta.n_layers, meta.n_heads, meta.d_head, meta.d_model), batch, n)
    work = working_bytes(batch, meta.n_heads, n, n, meta.d_head, pattern=capture.pattern)
    how = "the full map, per layer" if capture.pattern else "in row blocks, never the N x N map"
    return (f"capturing {batch} x {n} tokens, {len(capture.layer_indices(spec.n_layers))} layers: about "
            f"{format_bytes(kept)} kept (budget {format_bytes(capture.budget_bytes)}); attention holds "
            f"{format_bytes(work)} while a layer runs ({how})")


def run_capture(model_name: str, texts: list[str], images: list[str], capture: Capture, out: Path,
                overwrite: bool = False, audio: list[str] = ()) -> Path:
    """Load a model, capture one batch and save it as a Run; returns the Run directory."""
    from attnlab.hooks.inputs import check_request, load_audio, load_images, prepare_inputs, trace_inputs
    from attnlab.zoo import load, peek

    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; choose another --out or pass --overwrite")
    check_writable(out)
    if overwrite:
        check_replaceable(out, "capture", run_kind)  # before the model is loaded; save_run checks again
    name, _, _, modality = peek(model_name)
    check_request(name, modality, texts, images, list(audio))
    t0 = time.perf_counter()
    pil = load_images(images)
    model, processor, spec = load(model_name)
    waves = []
    if audio:  # read at the rate, and within the window, of the model's own feature extractor
        extractor = processor.feature_extractor
        waves = load_audio(audio, extractor.sampling_rate, getattr(extractor, "chunk_length", None))
    t1 = time.perf_counter()
    inputs = prepare_inputs(processor, spec, texts, pil, waves)  # tokenized once, for the estimate and the pass
    typer.echo(capture_estimate(model, spec, capture, inputs), err=True)
    trace = trace_inputs(model, processor, spec, capture, inputs, progress=True)
    t2 = time.perf_counter()
    info = RunInfo(model=asdict(spec), inputs={"texts": texts, "images": [str(p) for p in images],
                                               **({"audio": [str(p) for p in audio]} if audio else {})},
                   capture={k: v for k, v in asdict(capture).items()},
                   timings={"load": t1 - t0, "forward": t2 - t1})
    path = save_run(out, {"main": trace}, info, overwrite=overwrite)
    return path


def _with_probe_needs(what: str | None, probes: str | None) -> str | None:
    """``--capture`` plus what the ``--for`` probes read (:func:`attnlab.probes.registry.capture_for`)."""
    if not probes:
        return what
    from attnlab.probes.registry import capture_for

    names = [n.strip() for n in probes.split(",") if n.strip()]
    needed = capture_for(names).split(",")
    given = [w.strip() for w in what.split(",") if w.strip()] if what else []
    return ",".join(dict.fromkeys(given + needed))


def register(app: typer.Typer) -> None:
    """Add the capture commands (``capture``, ``info``, ``demo``) to the app."""
    _register_capture(app)
    _register_info_and_demo(app)


def _register_capture(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def capture(
        model: str = typer.Option(..., "--model", help="zoo name (minilm, toy-gpt, ...) or a local HF checkpoint directory"),
        text: list[str] = typer.Option([], "--text", help="prompt; repeat for a batch"),
        text_file: list[Path] = typer.Option([], "--text-file", help="a UTF-8 file whose whole content is one prompt "
                                             "(long inputs: a shell argument holds at most 128 KiB); repeatable"),
        image: list[str] = typer.Option([], "--image", help="image file; repeat for a batch"),
        audio: list[str] = typer.Option([], "--audio", help="recording for a speech model (Whisper type): a PCM .wav "
                                        "at the model's sampling rate or a .npy waveform; repeat for a batch, with "
                                        "an optional --text per recording for the decoder"),
        what: str = typer.Option(None, "--capture", help="comma list of pattern,stats,qk,head_out,resid "
                                 "(default pattern,stats; stats with --dataset)"),
        probes: str = typer.Option(None, "--for", help="comma list of probes to capture for (e.g. sinks,rollout): "
                                   "adds what they read to --capture; see `attnlab probe --help`"),
        layers: str = typer.Option(None, "--layers", help="e.g. '0,2,-1', '0-3' or 'all'"),
        budget_gb: float = typer.Option(4.0, "--budget-gb", help="refuse captures estimated above this size"),
        out: Path = typer.Option(..., "--out", help="Run directory to create"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing Run"),
        dataset: Path = typer.Option(None, "--dataset", help=DATASET_HELP),
        image_dir: Path = typer.Option(None, "--image-dir", help="folder relative image paths in --dataset refer to"),
        batch_size: int = typer.Option(8, "--batch-size", help="inputs per forward pass with --dataset"),
        sample: int = typer.Option(2048, "--sample", help="tokens in the query/key sample (--capture stats,qk)"),
        seed: int = typer.Option(0, "--seed", help="seed of the query/key sample"),
        bins: int = typer.Option(48, "--bins", help="log-spaced bins of the received-attention histograms"),
        workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    ):
        """Capture attention from a model into a Run directory (one batch, or statistics over a --dataset)."""
        what = _with_probe_needs(what, probes)
        if dataset is not None:
            if image or audio:
                raise ValueError("With --dataset the inputs come from the dataset; drop --image/--audio (use "
                                 "--image-dir for relative image paths; datasets of recordings are not supported)")
            run_dataset_capture(model, dataset, image_dir, text[0] if text else None, what or "stats",
                                parse_layers(layers), budget_gb, batch_size, sample, seed, bins, out, overwrite,
                                workers=workers)
            return
        if workers != 1:
            raise ValueError("--workers needs --dataset (a single batch runs in one process)")
        text = list(text) + [read_prompt_file(f) for f in text_file]
        cap = Capture.parse(what or "pattern,stats", layers=parse_layers(layers), budget_bytes=int(budget_gb * 2**30))
        path = run_capture(model, text, image, cap, out, overwrite, audio)
        typer.echo(f"wrote {path}")


def _register_info_and_demo(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def info(run: Path = typer.Argument(..., help="Run directory"),
             as_json: bool = typer.Option(False, "--json", help="print JSON")):
        """Describe a Run: model, layers, heads, tokens per item, what was captured."""
        opened = Run.open(run)
        summary = run_summary(opened)
        if as_json:
            emit_json(summary)
        else:
            if "main" not in opened.trace_names:  # a dataset capture: tables, no Trace
                print_summary(summary, dataset_budget(opened))
                return
            trace = opened.trace("main")
            print_summary(summary, attention_budget(trace) if any(r.stats for r in trace.layers.values()) else None)

    @app.command()
    @friendly
    def demo(text: str = typer.Option(DEMO_TEXT, "--text", help="sentence to analyse"),
             out: Path = typer.Option(Path("runs/demo"), "--out",
                                      help="Run directory (an earlier demo or capture Run there is replaced; "
                                           "anything else is refused)")):
        """The main job: capture the embedded MiniLM on a sentence and summarise where attention goes."""
        path = run_capture("minilm", [text], [], Capture(pattern=True, stats=True, resid=True), out, overwrite=True)
        opened = Run.open(path)
        print_summary(run_summary(opened), attention_budget(opened.trace("main")))
