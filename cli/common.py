"""Shared CLI plumbing: one-line errors with exit code 2, list parsing, JSON output."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

import typer

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    """Print ``error: message`` on stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def friendly(fn: Callable) -> Callable:
    """Turn bad input from the library into one-line errors (exit 2), never a traceback.

    Caught: ValueError/TypeError (bad arguments, :class:`~attnlab.core.manifest.RunFormatError`), OSError (an
    unreadable, missing or read-only path) and safetensors' ``SafetensorError`` (truncated weights).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as err:
            fail(_first_line(err))
        except OSError as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            fail(f"{err.strerror or _first_line(err)}{where}")
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            fail(f"a weights file is damaged or truncated ({_first_line(err)}); re-download or re-save the model")

    return wrapper


def _first_line(err: BaseException) -> str:
    return cli_terms(str(err).splitlines()[0]) if str(err) else type(err).__name__


def _capture_flags(match: re.Match) -> str:
    args = [a.strip() for a in match.group(1).split(",") if "=" in a]
    on = [a.split("=", 1)[0] for a in args if a.split("=", 1)[1].strip() == "True"]
    parts = ([f"--capture {','.join(on)}"] if on else []) + (["--layers"] if any(a.startswith("layers=") for a in args) else [])
    return " with ".join(parts) or "--capture"


def cli_terms(message: str) -> str:
    """A library message in the words of the command line: ``Capture(resid=True)`` -> ``--capture resid``,
    ``layers=...`` -> ``--layers``, ``budget_bytes`` -> ``--budget-gb``.

    Example:
        >>> cli_terms("capture again with Capture(pattern=False, stats=True) or raise budget_bytes")
        'capture again with --capture stats or raise --budget-gb'
    """
    message = re.sub(r"Capture\(([^)]*)\)", _capture_flags, message)
    return message.replace("layers=...", "--layers").replace("budget_bytes", "--budget-gb")


def check_writable(out: Path, flag: str = "--out") -> None:
    """Refuse, before any model is loaded, an output path that cannot be created or written.

    Raises:
        ValueError: ``out`` is a file, or the folder (or its nearest existing parent) is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file; give a directory path")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {out}: {probe} is a file, so the folder cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out} is not writable ({probe} is read-only for this user); choose another {flag}")


def holds_only(folder: Path, names: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> bool:
    """Whether every entry of ``folder`` is one of ``names``, starts with one of ``prefixes``, or is a lock file."""
    from attnlab.core.locks import HOLDER_NAME, LOCK_NAME

    allowed = (*names, LOCK_NAME, HOLDER_NAME)
    return all(p.name in allowed or p.name.startswith(prefixes or ("\0",)) for p in folder.iterdir())


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


def save_name(save: Path | None) -> str | None:
    """The result-table name ``--save`` asks for (``x.parquet`` -> ``x``), checked before any work."""
    from attnlab.core.manifest import check_name

    if save is None:
        return None
    try:
        return check_name(save.stem if save.suffix else str(save), "--save")
    except ValueError:
        raise ValueError(f"--save {save}: give a plain table name (e.g. --save rollout); it is stored inside the "
                         "Run as results/<name>.parquet") from None
