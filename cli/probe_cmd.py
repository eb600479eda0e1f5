"""``attnlab probe NAME RUN [--json]``: run a probe on a stored Run and print or save its result."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import emit_json, friendly, save_name

probe_app = typer.Typer(help="Run an analysis on a Run (see `attnlab probe --help` for the list).",
                        no_args_is_help=True)


def _show(result, as_json: bool, save: Path | None, run) -> None:
    frame = result.to_frame()
    if save is not None:
        result.save(run, save_name(save))
    if as_json:
        emit_json(result.to_dict())
        return
    from rich.console import Console

    Console().print(frame.head(40).to_string(index=False) if len(frame) else "(empty result)")
    if len(frame) > 40:
        typer.echo(f"... {len(frame)} rows; use --json for all")


def _make_single(name: str):
    @friendly
    def command(run: Path = typer.Argument(..., help="Run directory"),
                trace: str = typer.Option("main", "--trace", help="trace name inside the Run (e.g. main.vision)"),
                as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
                save: Path = typer.Option(None, "--save", help="also store the table in the Run under this name")):
        from attnlab.core.runs import Run
        from attnlab.probes.registry import run_probe

        save_name(save)
        opened = Run.open(run)
        _show(run_probe(name, opened.trace(trace)), as_json, save, opened)

    command.__doc__ = f"The '{name}' probe on a Run."
    return command


def _position_option(text: str | None):
    """``--position``: a token index, ``mean`` or ``pooled`` (checked by the probe, which names the choices)."""
    from attnlab.probes.tokens import POOLED_OUTPUTS

    if text is None or text in POOLED_OUTPUTS:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--position {text}: give a token index (negative counts from the end), 'mean' or "
                         "'pooled'") from None


def _make_relevance(name: str):
    @friendly
    def command(run: Path = typer.Argument(..., help="Run directory"),
                trace: str = typer.Option("main", "--trace", help="trace name inside the Run (e.g. main.vision)"),
                position: str = typer.Option(
                    None, "--position", help="output to explain: a real-token index (negative from the end; default "
                    "[CLS] for encoders, the last token for decoders), 'mean' (mean over real tokens) or 'pooled' "
                    "(the model's sentence-transformers pooling, e.g. mean for all-MiniLM-L6-v2)"),
                as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
                save: Path = typer.Option(None, "--save", help="also store the table in the Run under this name")):
        from attnlab.core.runs import Run
        from attnlab.probes.registry import run_probe

        save_name(save)
        wanted = _position_option(position)
        opened = Run.open(run)
        _show(run_probe(name, opened.trace(trace), position=wanted), as_json, save, opened)

    command.__doc__ = f"The '{name}' probe on a Run: relevance of every input token for one output."
    return command


def _vhd_command():
    @friendly
    def command(run: Path = typer.Argument(..., help="Run captured WITH the image (head_out)"),
                other: Path = typer.Argument(..., help="Run of the same prompt WITHOUT the image (head_out)"),
                as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
                save: Path = typer.Option(None, "--save", help="also store the table in RUN (the one with the image) "
                                                               "under this name; the dashboard's heads page shows it")):
        """Vision-aware head divergence between a Run with and one without the image."""
        from attnlab.core.runs import Run
        from attnlab.probes.registry import run_probe

        save_name(save)
        opened = Run.open(run)
        _show(run_probe("vhd", opened.trace("main"), Run.open(other).trace("main")), as_json, save, opened)

    return command


def register_probes() -> typer.Typer:
    """Add every registry probe (and the ones contributed by other CLI modules) to the probe app."""
    from attnlab.probes.registry import PROBES

    for name in PROBES:
        make = _make_relevance if name in ("rollout", "flow") else _make_single
        probe_app.command(name)(make(name))
    probe_app.command("vhd")(_vhd_command())
    for module in ("qk_cmd", "circuits_cmd"):
        try:
            mod = __import__(f"attnlab.cli.{module}", fromlist=["register_probe"])
        except ImportError:
            continue
        hook = getattr(mod, "register_probe", None) or getattr(mod, "register", None)
        if hook is not None and module == "qk_cmd":
            hook(probe_app)
        elif getattr(mod, "register_probe", None) is not None:
            mod.register_probe(probe_app)
    return probe_app
