"""Shared CLI plumbing: one-line errors with exit code 2, list parsing, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from typing import Callable

import typer

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def friendly(fn: Callable) -> Callable:
    """Turn ValueError/TypeError/FileNotFoundError from the library into one-line errors (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, FileNotFoundError) as err:
            fail(str(err).splitlines()[0] if str(err) else type(err).__name__)

    return wrapper


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """``"0,2,-1"`` or ``"0-3"`` -> layer tuple; ``None``/``"all"`` -> ``None`` (every layer)."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, None)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except (TypeError, ValueError):
            raise ValueError(f"Bad --layers value {spec!r}; use e.g. '0,2,-1' or '0-3' or 'all'") from None
    return tuple(out)


def emit_json(data) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
