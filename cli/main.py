"""The ``attnlab`` command line."""

from __future__ import annotations

import typer

from . import capture_cmd, circuits_cmd, dashboard_cmd
from .eval_cmd import eval_app
from .probe_cmd import register_probes
from .zoo_cmd import zoo_app

app = typer.Typer(help="attnlab: capture, probe and steer attention in transformers.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
capture_cmd.register(app)
circuits_cmd.register(app)
dashboard_cmd.register(app)
app.add_typer(zoo_app, name="zoo")
app.add_typer(eval_app, name="eval")
app.add_typer(register_probes(), name="probe")


@app.callback()
def main() -> None:
    """attnlab: capture, probe and steer attention in transformers."""
    from transformers.utils import logging as hf_logging

    # The CLI owns its terminal: keep the loaders' per-file progress bars out of its output, and their advice
    # (e.g. "sequence length is longer than the specified maximum"), which attnlab checks itself in one line.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


if __name__ == "__main__":  # pragma: no cover
    app()
