"""Fault injection: corrupt and adversarial Runs, bad arguments, occupied folders.

Each case of :data:`CASES` builds a small world in a temporary folder, runs one ``attnlab`` command in it and states
the exit code and the one-line message (a regular expression over the whole of stderr). Every file under the folder
is hashed before and after: no byte outside the command's own output may change (a refusal changes nothing).
New commands and readers join the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.core.runs import RunInfo, save_run, write_results
from attnlab.core.trace import LayerRecord, Segment, Trace, TraceMeta

runner = CliRunner()


def make_trace(n_heads: int = 2, n_tokens: int = 5) -> Trace:
    g = torch.Generator().manual_seed(0)
    pattern = torch.softmax(torch.randn(1, n_heads, n_tokens, n_tokens, generator=g), -1)
    rec = LayerRecord(pattern=pattern, stats={"entropy": torch.rand(1, n_heads, n_tokens, generator=g)})
    meta = TraceMeta("m", "bert", 1, n_heads, 4, 8, False, captured=("pattern", "stats"))
    tokens = ["[CLS]"] + [f"t{i}" for i in range(n_tokens - 1)]
    return Trace([tokens], [[Segment("special", 0, 1, label="[CLS]"), Segment("text", 1, n_tokens)]], {0: rec}, meta,
                 torch.ones(1, n_tokens, dtype=torch.bool))


def capture_run(root: Path, name: str = "cap") -> Path:
    return save_run(root / name, {"main": make_trace()}, RunInfo(model={"name": "m", "family": "bert"}))


def user_folder(root: Path, name: str = "mine") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


def eval_run(root: Path, name: str = "ev") -> Path:
    from attnlab.cli.eval_cmd import EvalRequest

    command = EvalRequest("pope", "toy-llava", "baseline").binding()
    info = RunInfo(model={"name": "toy-llava"}, extra={"methods": ["baseline"], "task": "pope", "command": command})
    summary = pd.DataFrame({"task": ["pope"], "split": ["random"], "method": ["baseline"], "accuracy": [0.5]})
    write_results(root / name, info, {"summary": summary}, kind="eval")
    return root / name


def edit_manifest(run: Path, change: Callable[[dict], None]) -> Path:
    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def trace_header(m: dict) -> dict:
    return m["traces"]["main"]


@dataclass(frozen=True)
class Case:
    """One fault: ``setup(root) -> argv`` (run with ``root / cwd`` as working directory), then the outcome."""

    name: str
    setup: Callable[[Path], list[str]]
    code: int
    message: str
    cwd: str = "."
    output: str | None = None  # the command's own output (relative to root), the only thing it may change


def _damaged(change: Callable[[dict], None], *extra: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        edit_manifest(capture_run(root), change)
        return ["probe", "rollout", "cap", *extra]

    return setup


def _symlinked_trace(root: Path) -> list[str]:
    run = capture_run(root)
    outside = capture_run(root, "outside")
    (run / "traces" / "main.safetensors").unlink()
    (run / "traces" / "main.safetensors").symlink_to(outside / "traces" / "main.safetensors")
    return ["probe", "rollout", "cap"]


def _outside_trace(root: Path) -> list[str]:
    run = capture_run(root / "runs")
    secret = capture_run(root, "outside")
    (secret / "traces" / "main.safetensors").rename(secret / "traces" / "secret.safetensors")
    name = "../../outside/traces/secret"
    edit_manifest(run, lambda m: m["traces"].update({name: m["traces"]["main"]}))
    return ["probe", "rollout", "runs/cap", "--trace", name]


def _truncated_tensors(root: Path) -> list[str]:
    run = capture_run(root)
    file = run / "traces" / "main.safetensors"
    file.write_bytes(file.read_bytes()[:-40])
    return ["probe", "rollout", "cap"]


def _file_in_the_way(root: Path) -> list[str]:
    (root / "notes").write_text("mine")
    return ["capture", "--model", "minilm", "--text", "hi", "--out", "notes/run"]


def _truncated_weights(root: Path) -> list[str]:
    import shutil

    from attnlab.zoo.registry import CHECKPOINTS

    shutil.copytree(CHECKPOINTS / "toy-gpt", root / "gpt")
    weights = root / "gpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["capture", "--model", "gpt", "--text", "hi", "--out", "x"]


def _locked(root: Path) -> list[str]:
    from filelock import FileLock

    from attnlab.core.locks import HOLDER_NAME, LOCK_NAME

    (root / "busy").mkdir()
    (root / "busy" / HOLDER_NAME).write_text(json.dumps({"pid": 4242, "host": "lab", "since": 0.0,
                                                         "command": "attnlab eval pope --out busy"}))
    lock = FileLock(str(root / "busy" / LOCK_NAME))
    lock.acquire()
    HELD.append(lock)
    return ["eval", "pope", "--model", "toy-llava", "--out", "busy"]


HELD: list = []
EVAL = ["eval", "pope", "--model", "toy-llava"]

CASES = [
    # -- never replace what is not an attnlab Run of the same kind -------------------------------------------------
    Case("demo into the current directory", lambda r: (user_folder(r, "work"), ["demo", "--out", "."])[1], 2,
         r"error: --out \. is the current directory or a parent of it; attnlab never replaces it", cwd="work"),
    Case("demo into a parent of the current directory", lambda r: (user_folder(r, "a/b"), ["demo", "--out", ".."])[1],
         2, r"error: --out \.\. is the current directory or a parent of it; attnlab never replaces it", cwd="a/b"),
    Case("demo over a user's folder", lambda r: (user_folder(r), ["demo", "--out", "mine"])[1], 2,
         r"error: --out mine is not an attnlab capture \(no valid manifest\); attnlab only replaces its own output.*"),
    Case("capture --overwrite over a user's folder",
         lambda r: (user_folder(r), ["capture", "--model", "minilm", "--text", "hi", "--out", "mine", "--overwrite"])[1],
         2, r"error: --out mine is not an attnlab capture .*nothing was replaced\)"),
    Case("capture --overwrite over an eval Run",
         lambda r: (eval_run(r), ["capture", "--model", "minilm", "--text", "hi", "--out", "ev", "--overwrite"])[1],
         2, r"error: --out ev holds an attnlab eval, not a capture; .*"),
    Case("dataset capture --overwrite over a user's folder",
         lambda r: (user_folder(r), (r / "d.txt").write_text("a\n"),
                    ["capture", "--model", "minilm", "--dataset", "d.txt", "--out", "mine", "--overwrite"])[2],
         2, r"error: --out mine is not an attnlab dataset .*"),
    Case("dataset capture into a capture Run",
         lambda r: (capture_run(r), (r / "d.txt").write_text("a\n"),
                    ["capture", "--model", "minilm", "--dataset", "d.txt", "--out", "cap"])[2],
         2, r"error: --out cap holds an attnlab capture Run; choose another --out \(nothing was written\)"),
    Case("zoo world --overwrite over a user's folder",
         lambda r: (user_folder(r), ["zoo", "world", "--out", "mine", "--n-images", "2", "--overwrite"])[1], 2,
         r"error: --out mine is not an attnlab world .*"),
    Case("zoo world --overwrite over a capture Run",
         lambda r: (capture_run(r), ["zoo", "world", "--out", "cap", "--n-images", "2", "--overwrite"])[1], 2,
         r"error: --out cap is not an attnlab world .*"),
    Case("eval into a capture Run", lambda r: (capture_run(r), [*EVAL, "--out", "cap"])[1], 2,
         r"error: --out cap holds an attnlab capture Run; an eval never writes into it: choose another --out"),
    Case("eval into a user's folder", lambda r: (user_folder(r), [*EVAL, "--out", "mine"])[1], 2,
         r"error: --out mine is not an attnlab eval Run; choose another --out \(nothing was written\)"),
    Case("a second eval with another method", lambda r: (eval_run(r), [*EVAL, "--method", "mask:0.1", "--out", "ev"])[1],
         2, r"error: --out ev holds a finished eval \(pope: baseline\) made with other settings \(methods\); .*"),
    Case("a second eval of another task",
         lambda r: (eval_run(r), ["eval", "chair", "--model", "toy-llava", "--out", "ev"])[1],
         2, r"error: --out ev holds a finished eval \(pope: baseline\) made with other settings \(task, .*"),
    Case("two jobs into one --out", _locked, 2,
         r"error: --out busy is in use by another attnlab job \(pid 4242 on lab, since .*: attnlab eval pope --out "
         r"busy\); wait for it to finish or choose another --out"),
    # -- one bad Run, one line -------------------------------------------------------------------------------------
    Case("model is a string", _damaged(lambda m: m.update(model="toy-gpt")), 2,
         r"error: .*cap/manifest\.json is malformed \(model: Input should be a valid dictionary.*\); re-create the Run"),
    Case("plan is a string", _damaged(lambda m: m.update(plan="vhr")), 2, r"error: .*is malformed \(plan: .*"),
    Case("traces is a list", _damaged(lambda m: m.update(traces=[])), 2, r"error: .*is malformed \(traces: .*"),
    Case("a null trace", _damaged(lambda m: m["traces"].update(main=None)), 2,
         r"error: .*is malformed \(traces\.main: .*"),
    Case("created is a string", _damaged(lambda m: m.update(created="yesterday")), 2,
         r"error: .*is malformed \(created: .*"),
    Case("a trace without layers", _damaged(lambda m: trace_header(m).pop("layers")), 2,
         r"error: .*is malformed \(traces\.main\.layers: Field required\); re-create the Run"),
    Case("not JSON", lambda r: ((capture_run(r) / "manifest.json").write_text("{oops"), ["info", "cap"])[1], 2,
         r"error: .*cap/manifest\.json is corrupt \(not valid JSON: .*\); re-create the Run"),
    Case("wrong head count", _damaged(lambda m: trace_header(m)["meta"].update(n_heads=3)), 2,
         r"error: trace main: layer\.0\.pattern has 2 heads; the manifest says 3"),
    Case("tokens shorter than the tensors",
         _damaged(lambda m: (trace_header(m)["tokens"][0].pop(), trace_header(m)["segments"][0][-1].update(end=4))),
         2, r"error: trace main: .* spans 5 positions but the manifest lists 4 tokens per item"),
    Case("a trace name leading out of the Run", _outside_trace, 2,
         r"error: .*is malformed \(traces: Value error, trace name '\.\./\.\./outside/traces/secret' is not a plain "
         r"file name inside the Run\); re-create the Run"),
    Case("a symlinked tensor file", _symlinked_trace, 2,
         r"error: cap/traces/main\.safetensors is a symbolic link; a Run's files must lie inside it"),
    Case("truncated tensors", _truncated_tensors, 2, r"error: .*main\.safetensors is corrupt or truncated .*"),
    # -- bad arguments: one line, before any model is loaded -------------------------------------------------------
    Case("--limit 0", lambda r: [*EVAL, "--limit", "0", "--out", "e"], 2, r"error: --limit must be a positive integer, got 0"),
    Case("--limit -1", lambda r: [*EVAL, "--limit", "-1", "--out", "e"], 2, r"error: --limit must be a positive integer, got -1"),
    Case("--limit -100", lambda r: [*EVAL, "--limit", "-100", "--out", "e"], 2,
         r"error: --limit must be a positive integer, got -100"),
    Case("--max-new-tokens 0", lambda r: [*EVAL, "--max-new-tokens", "0", "--out", "e"], 2,
         r"error: --max-new-tokens must be a positive integer, got 0"),
    Case("--out below a file", _file_in_the_way, 2, r"error: --out notes/run: notes is a file, so the folder cannot be created"),
    Case("truncated model weights", lambda r: _truncated_weights(r), 2,
         r"error: a weights file is damaged or truncated \(.*\); re-download or re-save the model"),
    Case("text longer than the model's positions",
         lambda r: ["capture", "--model", "minilm", "--text", "word " * 700, "--out", "long"], 2,
         r"error: The input is 702 tokens long but the model takes at most 512 positions; shorten the --text \(or "
         r"split it\)"),
    Case("a capture over its budget is explained in CLI flags",
         lambda r: ["capture", "--model", "minilm", "--text", "hi", "--budget-gb", "1e-9", "--out", "b"], 2,
         r"error: This capture needs about .*\(--capture stats\) needs .*\. Or capture fewer layers \(--layers\), "
         r"a smaller batch, or raise --budget-gb\."),
    Case("probe --save into a folder", lambda r: (capture_run(r), ["probe", "rollout", "cap", "--save", "a/b"])[1], 2,
         r"error: --save a/b: give a plain table name \(e\.g\. --save rollout\); it is stored inside the Run as "
         r"results/<name>\.parquet"),
    Case("probe --position that is not an output", lambda r: (capture_run(r), ["probe", "rollout", "cap",
                                                                               "--position", "average"])[1], 2,
         r"error: --position average: give a token index \(negative counts from the end\), 'mean' or 'pooled'"),
    Case("probe --position pooled on a model of unknown pooling",
         lambda r: (capture_run(r), ["probe", "flow", "cap", "--position", "pooled"])[1], 2,
         r"error: position='pooled': the Trace does not know how the model pools .*; pass position='mean' or a "
         r"token index instead"),
]


def tree(root: Path, skip: str | None) -> dict[str, str]:
    """``{relative path: sha256 of the bytes (or the link target)}`` of everything under ``root`` but ``skip``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if skip and (rel == skip or rel.startswith(skip + "/")):
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, tmp_path, monkeypatch):
    argv = case.setup(tmp_path)
    monkeypatch.chdir(tmp_path / case.cwd)
    before = tree(tmp_path, case.output)
    try:
        result = runner.invoke(app, argv)
    finally:
        while HELD:
            HELD.pop().release()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(case.message, lines[0]), result.stderr
    assert tree(tmp_path, case.output) == before


def test_an_earlier_capture_run_is_replaced_whole(tmp_path):
    """``--overwrite`` of a capture Run: the new Run appears whole, the old one is gone, nothing else is left."""
    run = capture_run(tmp_path)
    (tmp_path / "neighbour.txt").write_text("untouched")
    save_run(run, {"main": make_trace(n_heads=3)}, RunInfo(model={"name": "m2"}), overwrite=True)
    assert json.loads((run / "manifest.json").read_text())["model"]["name"] == "m2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap", "neighbour.txt"]


def test_dashboard_port_in_use_is_one_line(tmp_path):
    run = capture_run(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["dashboard", str(run), "--port", str(port), "--no-browser"])
    assert result.exit_code == 2
    assert result.stdout == ""  # nothing printed before the refusal: no URL of the other server
    assert re.fullmatch(rf"error: --port {port} on 127\.0\.0\.1 is in use by another program \(.*\); stop it or pick "
                        r"another --port", result.stderr.strip())
