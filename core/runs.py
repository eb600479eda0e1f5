"""The Run store: Traces and results on disk, written atomically, loaded lazily, never unpickled.

Layout (see ``docs/run-format.md``)::

    RUN/manifest.json            schema, model, inputs, capture, plan, timings, traces (tokens, segments, meta)
    RUN/traces/<name>.safetensors    layer.{i}.<field> tensors, token_mask, embeddings
    RUN/results/<name>.parquet       probe result tables
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .atomic import atomic_file, replace_directory, write_text_atomic
from .manifest import SCHEMA, SCHEMA_VERSION, Manifest, RunFormatError, check_name, inside, read_manifest, run_kind
from .trace import NESTED_TRACES, Trace
from .trace_files import load_trace, read_tensor, tensor_shapes

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Run", "RunFormatError", "RunInfo", "run_kind", "save_run", "write_results"]


@dataclass
class RunInfo:
    """The manifest's descriptive part.

    Attributes:
        model: model name or path and its spec fields.
        inputs: what was fed (texts, image paths, ...).
        capture: the Capture options.
        plan: the Plan applied (``Plan.to_dict()``) or ``None``.
        timings: seconds per phase (``load``, ``forward``, ``write``).
        extra: anything else a command wants to keep (e.g. eval settings).
    """

    model: dict
    inputs: dict = field(default_factory=dict)
    capture: dict = field(default_factory=dict)
    plan: dict | None = None
    timings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _trace_entries(trace: Trace, name: str) -> list[tuple[str, Trace]]:
    out = [(name, trace)]
    for nested in NESTED_TRACES:
        if getattr(trace, nested) is not None:
            out.append((f"{name}.{nested}", getattr(trace, nested)))
    return out


def _trace_header(trace: Trace) -> dict:
    header = {
        "tokens": trace.tokens,
        "segments": [[asdict(s) for s in segs] for segs in trace.segments],
        "meta": asdict(trace.meta),
        "layers": sorted(trace.layers),
    }
    if trace.is_cross:  # cross-attention: the keys are another sequence's tokens
        keys = trace.key_side()
        header["key_tokens"] = keys.tokens
        header["key_segments"] = [[asdict(s) for s in segs] for segs in keys.segments]
    return header


def _trace_tensors(trace: Trace) -> dict[str, torch.Tensor]:
    tensors = {"token_mask": trace.token_mask.to(torch.bool)}
    if trace.key_mask is not None:
        tensors["key_mask"] = trace.key_mask.to(torch.bool)
    if trace.embeddings is not None:
        tensors["embeddings"] = trace.embeddings
    for i, rec in trace.layers.items():
        for key, value in rec.tensors().items():
            tensors[f"layer.{i}.{key}"] = value
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_run(path: str | Path, traces: dict[str, Trace], info: RunInfo, results: dict[str, pd.DataFrame] | None = None,
             overwrite: bool = False) -> Path:
    """Write a capture Run atomically: everything goes to a temporary sibling directory, renamed at the end.

    Args:
        path: the Run directory to create.
        traces: ``{name: Trace}``; a Trace's nested Traces (vision tower, encoder, cross-attention) are stored as
            ``<name>.vision``, ``<name>.encoder``, ``<name>.cross``.
        info: manifest fields.
        results: ``{name: DataFrame}`` result tables.
        overwrite: replace an existing capture Run (see :func:`attnlab.core.atomic.check_replaceable`: never a
            user's folder, another kind of Run or the current directory; the old Run is removed last).

    Returns:
        The Run directory.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another --out or pass --overwrite (nothing was overwritten)")
    for name in [*traces, *(results or {})]:
        check_name(name, "trace or result")
    with replace_directory(path, "capture", run_kind) as tmp:
        (tmp / "traces").mkdir()
        headers = {}
        for name, trace in traces.items():
            for entry, tr in _trace_entries(trace, name):
                save_file(_trace_tensors(tr), str(tmp / "traces" / f"{entry}.safetensors"))
                headers[entry] = _trace_header(tr)
        for name, frame in (results or {}).items():
            (tmp / "results").mkdir(exist_ok=True)
            frame.to_parquet(tmp / "results" / f"{name}.parquet")
        manifest = {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": "capture", "created": time.time(),
                    **asdict(info), "traces": headers, "results": sorted(results or {})}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return path


class Run:
    """A Run on disk, opened lazily: only the manifest is read until a Trace or result is asked for.

    Example:
        >>> run = Run.open("runs/minilm")  # doctest: +SKIP
        >>> run.trace("main").layer(0).pattern.shape  # doctest: +SKIP
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Read and validate the manifest (see :mod:`attnlab.core.manifest`); raises :class:`RunFormatError`."""
        path = Path(path)
        return cls(path, read_manifest(path)[0])

    @property
    def kind(self) -> str:
        """``capture``, ``dataset`` or ``eval`` (see :data:`attnlab.core.manifest.RUN_KINDS`)."""
        return Manifest.model_validate(self.manifest).run_kind

    @property
    def trace_names(self) -> list[str]:
        """Names of the stored Traces (nested ones appear as ``<name>.vision``, ``<name>.encoder``, ...)."""
        return list(self.manifest["traces"])

    @property
    def info(self) -> RunInfo:
        """The descriptive manifest fields."""
        m = self.manifest
        return RunInfo(m["model"], m.get("inputs", {}), m.get("capture", {}), m.get("plan"), m.get("timings", {}), m.get("extra", {}))

    def header(self, name: str = "main") -> dict:
        """The manifest entry of a stored Trace (tokens, segments, meta, layers); ValueError naming the traces."""
        if name not in self.manifest["traces"]:
            raise ValueError(f"Run {self.path} has no trace {name!r}; it has {self.trace_names}")
        return self.manifest["traces"][name]

    def trace_file(self, name: str = "main") -> Path:
        """The safetensors file of a stored Trace; RunFormatError when it is missing."""
        self.header(name)
        file = inside(self.path, "traces", f"{check_name(name, 'trace')}.safetensors")
        if not file.is_file():
            raise RunFormatError(f"{file} is missing; the Run is incomplete")
        return file

    def tensor_shapes(self, name: str = "main") -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of a Trace's tensors (``layer.{i}.{field}``, ``token_mask``, ``embeddings``), read from
        the file's header alone and checked against the manifest."""
        return tensor_shapes(self.trace_file(name), name, self.header(name))

    def read(self, name: str, key: str, item: int | None = None, head: int | None = None) -> torch.Tensor:
        """One stored tensor, or only its batch item ``item`` (and head ``head``), reading only those bytes.

        Example:
            >>> run.read("main", "layer.3.pattern", item=0, head=5).shape  # (Q, K)  # doctest: +SKIP
        """
        file = self.trace_file(name)
        if key not in tensor_shapes(file, name, self.header(name)):
            raise ValueError(f"Trace {name!r} of {self.path} has no {key!r}; capture it to read it")
        return read_tensor(file, key, item, head)

    def trace(self, name: str = "main", layers: list[int] | None = None, with_vision: bool = True,
              fields: tuple[str, ...] | None = None, item: int | None = None) -> Trace:
        """Load one Trace, or only part of it: some ``layers``, some ``fields`` (``pattern``, ``q``, ``k``,
        ``head_out``, ``resid``, ``stats`` or ``stats.<name>``), one batch ``item`` (batch size 1).

        Only what is asked for is read (:func:`attnlab.core.trace_files.load_trace`). The nested Traces (vision
        tower, encoder, cross-attention) ride along as ``trace.vision``, ``trace.encoder``, ``trace.cross``
        (whole) unless ``with_vision`` is false or a part was asked for.
        """
        trace = load_trace(self.trace_file(name), name, self.header(name), layers=layers, fields=fields, item=item)
        if with_vision and fields is None and item is None:
            for nested in NESTED_TRACES:
                if f"{name}.{nested}" in self.manifest["traces"]:
                    setattr(trace, nested, self.trace(f"{name}.{nested}"))
        return trace

    def result(self, name: str) -> pd.DataFrame:
        """A stored result table."""
        file = inside(self.path, "results", f"{check_name(name, 'result')}.parquet")
        if not file.exists():
            raise ValueError(f"Run {self.path} has no result {name!r}; it has {self.manifest.get('results', [])}")
        try:
            return pd.read_parquet(file)
        except Exception as err:  # pyarrow raises several types for damaged files
            raise RunFormatError(f"{file} is corrupt ({err})") from err

    def results_of(self, kind: str) -> list[str]:
        """Names of the stored tables of one kind, oldest first: those saved with ``kind``, and a table named
        ``kind`` itself saved without one (Runs that name tables by their kind, such as the demo's)."""
        kinds = self.manifest.get("result_kinds", {})
        names = set(self.manifest.get("results", []))
        tagged = [n for n, k in kinds.items() if k == kind and n in names]
        untagged = [kind] if kind in names and kind not in kinds else []
        return untagged + tagged

    def add_result(self, name: str, frame: pd.DataFrame, kind: str | None = None) -> Path:
        """Store a result table atomically (temporary file, then rename) and list it in the manifest.

        Args:
            name: the table's name inside the Run (a plain name).
            frame: the table.
            kind: what the table is, the result type's ``table_name`` (``vhd``, ``patching``, ``circuits`` ...):
                readers such as the dashboard find tables by kind (:meth:`results_of`), whatever their name.
        """
        check_name(name, "result")
        folder = self.path / "results"
        folder.mkdir(exist_ok=True)
        target = folder / f"{name}.parquet"
        with atomic_file(target) as tmp:
            frame.to_parquet(tmp)
        self.manifest["results"] = sorted(set(self.manifest.get("results", [])) | {name})
        kinds = {k: v for k, v in self.manifest.get("result_kinds", {}).items() if k != name}
        self.manifest["result_kinds"] = {**kinds, **({name: kind} if kind else {})}
        _write_json_atomic(self.path / "manifest.json", self.manifest)
        return target


def _write_json_atomic(file: Path, data: dict) -> None:
    write_text_atomic(file, json.dumps(data, indent=1))


def write_results(path: str | Path, info: RunInfo, results: dict[str, pd.DataFrame], *, kind: str,
                  streamed: tuple[str, ...] = (), fields: dict | None = None) -> Run:
    """Make ``path`` (an existing directory, e.g. an eval's working folder) a Run holding result tables only.

    Each table is written to a temporary file and renamed; the manifest is written last, so a folder whose
    manifest exists is complete.

    Args:
        path: the Run directory.
        info: manifest fields.
        results: ``{name: DataFrame}`` tables to write.
        kind: ``dataset`` or ``eval``; a folder already holding another kind of Run is refused.
        streamed: names of tables the caller already wrote to ``results/<name>.parquet`` (too large to hold).
        fields: further manifest entries (e.g. ``reductions``, ``shards``).
    """
    path = Path(path)
    old = []
    if (path / "manifest.json").exists():
        raw, found = read_manifest(path)
        if found.run_kind != kind:
            raise ValueError(f"{path} holds an attnlab {found.run_kind} Run, not a {kind} Run; choose another --out "
                             "(nothing was written)")
        old = raw.get("results", [])
    for name in [*results, *streamed]:
        check_name(name, "result")
    path.mkdir(parents=True, exist_ok=True)
    (path / "results").mkdir(exist_ok=True)
    for name, frame in results.items():
        with atomic_file(path / "results" / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp)
    manifest = {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": kind, "created": time.time(), **asdict(info),
                "traces": {},
                "results": sorted(set(old) | set(results) | set(streamed)), **(fields or {})}
    _write_json_atomic(path / "manifest.json", manifest)
    return Run(path, manifest)
