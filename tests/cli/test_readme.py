"""Every ``attnlab ...`` command the README shows exists, with every flag it shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    spans = re.findall(r"`((?:\.venv/bin/)?attnlab [^`]+)`", text)
    spans += re.findall(r"^\s*(?:bash scripts/setup.sh && )?(\.venv/bin/attnlab [^#\n]+)", text, re.M)
    return sorted({s.strip().removeprefix(".venv/bin/") for s in spans})


def _subcommand_and_flags(command: str) -> tuple[list[str], list[str]]:
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("...", " "))[1:]
    words = ["rollout" if w == "NAME" else w for w in words]  # `probe NAME RUN`: NAME stands for any probe
    sub = []
    for w in words:
        if w.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", w) or w.isupper():
            break
        sub.append(w)
    return sub, [w.split("=")[0] for w in words if w.startswith("--")]


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_and_flags_exist(command):
    sub, flags = _subcommand_and_flags(command)
    result = CliRunner().invoke(app, [*sub, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, f"`attnlab {' '.join(sub)}` does not exist: {result.output[-300:]}"
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", result.output), f"`{command}`: {flag} is not an option"
