"""``attnlab probe circuits RUN`` and ``attnlab patch``: circuit tracing and causal checks from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, friendly, save_name

#: What ``probe circuits`` needs in the Run (``pattern`` and ``qk`` are used when present).
CIRCUITS_NEEDS = ("resid", "head_out")
CAPTURE_HINT = "attnlab capture --model MODEL --text ... --capture pattern,qk,head_out,resid --out RUN"


def load_run_for_circuits(run: Path):
    """``(trace, model_path)`` of a Run fit for circuit tracing; ValueError naming what is missing otherwise."""
    from attnlab.core.runs import Run

    opened = Run.open(run)
    trace = opened.trace("main")
    family = trace.meta.family
    if family != "gpt2":
        raise ValueError(f"probe circuits needs a Run captured from a GPT-2 model; {run} holds a {family} model "
                         "(rotary and encoder models have no single QK matrix per head)")
    missing = [n for n in CIRCUITS_NEEDS if n not in trace.meta.captured]
    if missing:
        raise ValueError(f"probe circuits needs the capture options {', '.join(CIRCUITS_NEEDS)} (and pattern,qk to "
                         f"check them); {run} lacks {', '.join(missing)}. Re-capture: {CAPTURE_HINT}")
    absent = sorted(set(range(trace.meta.n_layers)) - set(trace.layers))
    if absent:
        raise ValueError(f"probe circuits needs every layer captured; {run} lacks layers {absent}. "
                         f"Re-capture without --layers: {CAPTURE_HINT}")
    path = opened.manifest.get("model", {}).get("path")
    if not path:
        raise ValueError(f"{run}'s manifest does not name the model directory (model.path); re-capture the Run")
    return trace, path


def circuits_summary(result, run: Path, model_path: str) -> dict:
    """The JSON document of ``probe circuits``: settings, counts and the edge table."""
    return {"probe": "circuits", "run": str(run), "model": model_path, "weighting": result.weighting,
            "threshold": result.threshold, "attn_threshold": result.attn_threshold, "min_share": result.min_share,
            "n_firings": int(len(result.firings)), "score_error": result.score_error,
            "edges": [{**row, "components": list(row["components"])} for row in result.to_frame().to_dict("records")]}


def register_probe(probe_app: typer.Typer) -> None:
    """Add ``circuits`` to the ``probe`` sub-app."""

    @probe_app.command("circuits")
    @friendly
    def circuits(run: Path = typer.Argument(..., help="Run of a GPT-2 captured with pattern,qk,head_out,resid"),
                 threshold: float = typer.Option(0.7, "--threshold",
                                                 help="share of the score the kept singular vectors carry"),
                 attn_threshold: float = typer.Option(0.5, "--attn-threshold",
                                                      help="attention that counts as a firing"),
                 min_share: float = typer.Option(0.2, "--min-share", help="writer share that makes an edge"),
                 weighting: str = typer.Option("paper", "--weighting", help="paper or exact"),
                 as_json: bool = typer.Option(False, "--json", help="print JSON"),
                 save: Path = typer.Option(None, "--save", help="also store the edge table in the Run under this "
                                                                "name; the dashboard's circuits page shows it")):
        """Trace which upstream heads each head reads (sparse attention decomposition, Franco & Crovella 2024)."""
        from attnlab.core.runs import Run
        from attnlab.probes.circuits import circuit_graph
        from attnlab.zoo import load

        name = save_name(save)
        trace, path = load_run_for_circuits(run)
        model, _, _ = load(path)
        result = circuit_graph(trace, model, threshold=threshold, attn_threshold=attn_threshold,
                               min_share=min_share, weighting=weighting)
        if name is not None:
            result.save(Run.open(run), name)
        if as_json:
            emit_json(circuits_summary(result, run, path))
            return
        frame = result.to_frame()
        typer.echo(f"{len(result.firings)} firings traced; {len(frame)} edges (share among upstream heads >= {min_share})")
        if len(frame):
            typer.echo(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def default_foil(model, clean: dict, corrupt: dict, target: int) -> int:
    """The corrupted run's most likely next token other than ``target`` (the first row's last real token)."""
    from attnlab.hooks.edits import last_positions, run

    logits = run(model, corrupt)[0, int(last_positions(corrupt)[0])].clone()  # (V,)
    logits[target] = float("-inf")
    return int(logits.argmax())


def _run_of_same_model(path: Path, spec):
    """The Run at ``path`` opened for ``patch --save``, refused unless its main trace has the model's layers and
    heads (a per-head table of another model would be drawn on the wrong grid)."""
    from attnlab.core.runs import Run

    run = Run.open(path)
    traces = run.manifest.get("traces", {})
    if "main" not in traces:
        raise ValueError(f"--run {path} has no main trace; capture the model first with `attnlab capture`")
    meta = traces["main"]["meta"]
    if (meta["n_layers"], meta["n_heads"]) != (spec.n_layers, spec.n_heads):
        raise ValueError(f"--run {path} holds a model of {meta['n_layers']} layers x {meta['n_heads']} heads but "
                         f"{spec.name} has {spec.n_layers} x {spec.n_heads}; give a Run captured from {spec.name}")
    return run


def register(app: typer.Typer) -> None:
    """Add ``patch`` to the app."""

    @app.command("patch")
    @friendly
    def patch(model: str = typer.Option(..., "--model", help="zoo name or local HF causal LM directory"),
              clean: str = typer.Option(..., "--clean", help="clean prompt"),
              corrupt: str = typer.Option(..., "--corrupt", help="corrupted prompt with the same number of tokens"),
              target: str = typer.Option(..., "--target", help="token whose logit the clean prompt should raise"),
              foil: str = typer.Option(None, "--foil", help="token to compare against (default: the corrupted "
                                                              "prompt's top prediction other than the target)"),
              direction: str = typer.Option("denoise", "--direction", help="denoise (clean into corrupted) or noise"),
              as_json: bool = typer.Option(False, "--json", help="print JSON"),
              save: Path = typer.Option(None, "--save", help="store the table under this name in the Run given by "
                                                             "--run; the dashboard's heads and circuits pages show it"),
              into: Path = typer.Option(None, "--run", help="a Run captured from the same model, to --save into")):
        """Activation patching of every head's output: a layer x head table of normalised effects (0 corrupted, 1 clean)."""
        from attnlab.hooks.inputs import check_positions
        from attnlab.interventions.patching import activation_patching, single_token_id
        from attnlab.zoo import load, peek

        name = save_name(save)
        if (save is None) != (into is None):
            raise ValueError("--save NAME and --run RUN go together: the table is stored in a Run of the same model "
                             "(capture one with `attnlab capture --model ...`)")
        _, _, family, modality = peek(model)
        if modality != "text":
            raise ValueError(f"patch needs a causal language model; {model} is a {family} ({modality}) model")
        loaded, tok, spec = load(model)
        if not spec.causal or getattr(loaded, "get_output_embeddings", lambda: None)() is None:
            raise ValueError(f"patch needs a causal language model; {model} is a {family} encoder "
                             f"({'bidirectional' if not spec.causal else 'no language-model head'})")
        clean_in, corrupt_in = dict(tok([clean], return_tensors="pt")), dict(tok([corrupt], return_tensors="pt"))
        for prompt in (clean_in, corrupt_in):
            check_positions(prompt, loaded)  # before any forward pass
        target_run = _run_of_same_model(into, spec) if into is not None else None
        target_id = single_token_id(tok, target)
        foil_id = single_token_id(tok, foil) if foil else default_foil(loaded, clean_in, corrupt_in, target_id)
        result = activation_patching(loaded, clean_in, corrupt_in, target_id, foil_id, direction=direction)
        foil_text = tok.convert_ids_to_tokens(foil_id)
        if target_run is not None:
            result.save(target_run, name)
        if as_json:
            emit_json({**result.to_dict(), "target": target, "foil": foil_text, "target_id": target_id,
                       "foil_id": foil_id})
            return
        typer.echo(f"logit({target}) - logit({foil_text}): clean {result.clean:.3f}, corrupted {result.corrupted:.3f}")
        table = result.to_frame().pivot(index="layer", columns="head", values="effect")
        typer.echo(f"normalised effect of patching each head ({direction}; 0 = corrupted, 1 = clean):")
        typer.echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
