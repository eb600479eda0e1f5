"""The one schema of a Run's ``manifest.json``, checked with pydantic, and the checks of tensors against it.

Every reader of a Run goes through :func:`validate_manifest` (via :meth:`attnlab.core.runs.Run.open`), so a
manifest with a string where a table belongs, a ``traces`` list, a ``null`` trace, a name that would lead out of
the Run, or a head count that disagrees with its tensors fails in one place, with one line, as
:class:`RunFormatError`, instead of as a ``KeyError`` deep inside a reader.

The layout the schema describes is ``docs/run-format.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .trace import Segment

SCHEMA = "attnlab.run"
SCHEMA_VERSION = 1
#: What a Run holds: one captured batch (``capture``), statistics over a dataset (``dataset``), eval tables (``eval``).
RUN_KINDS = ("capture", "dataset", "eval")
#: A trace or result name: one path component, no leading dot (``main``, ``main.vision``, ``predictions-pope-x``).
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=-]*$")
#: Layer tensor fields whose second axis is the head and third the position.
PER_HEAD = ("pattern", "q", "k", "head_out")


class RunFormatError(ValueError):
    """A directory that is not a valid attnlab Run (corrupt, truncated, inconsistent or foreign)."""


def check_name(name: str, what: str) -> str:
    """``name`` if it is a safe file stem inside a Run (no ``/``, ``..`` or leading dot), else ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ValueError(f"{what} name {name!r} is not a plain file name inside the Run")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ModelEntry(_Strict):
    """The model spec fields readers use (others are kept as they are)."""

    name: str | None = None
    family: str | None = None
    modality: str | None = None
    n_layers: int | None = Field(None, ge=0)
    n_heads: int | None = Field(None, ge=1)
    causal: bool | None = None
    path: str | None = None


class PlanEntry(_Strict):
    """``Plan.to_dict()``: readers use the name."""

    name: str | None = None


class MetaEntry(_Strict):
    """A trace's :class:`~attnlab.core.trace.TraceMeta` (no other fields: it is rebuilt from them)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    model: str
    family: str
    n_layers: int = Field(ge=0)
    n_heads: int = Field(ge=1)
    d_head: int = Field(ge=0)
    d_model: int = Field(ge=0)
    causal: bool
    captured: list[str] = []
    dtype: str = "float32"
    backend: str = "hf"
    pooling: str = ""
    score_scale: float | None = None
    score_terms: list[str] = []


class SegmentEntry(_Strict):
    """A labelled span; the rules are :class:`~attnlab.core.trace.Segment`'s own."""

    model_config = ConfigDict(strict=True, extra="forbid")
    kind: str
    start: int
    end: int
    grid: list[int] | None = None
    label: str = ""

    @model_validator(mode="after")
    def _segment_rules(self) -> "SegmentEntry":
        if self.grid is not None and len(self.grid) != 2:
            raise ValueError(f"segment grid {self.grid} is not [rows, cols]")
        Segment(self.kind, self.start, self.end, tuple(self.grid) if self.grid else None, self.label)
        return self


class TraceHeader(_Strict):
    """``traces[name]``: token strings ``[B][N]``, segments ``[B][...]``, meta and the captured layers."""

    model_config = ConfigDict(strict=True, extra="forbid")
    tokens: list[list[str]]
    segments: list[list[SegmentEntry]]
    meta: MetaEntry
    layers: list[int]
    #: a cross-attention trace's key side (another sequence's tokens); absent for self-attention
    key_tokens: list[list[str]] | None = None
    key_segments: list[list[SegmentEntry]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TraceHeader":
        if len(self.segments) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} token lists but {len(self.segments)} segment lists")
        lengths = {len(t) for t in self.tokens}
        if len(lengths) > 1:
            raise ValueError(f"token lists of different lengths {sorted(lengths)} (a batch is padded to one length)")
        for b, segs in enumerate(self.segments):
            for s in segs:
                if s.end > len(self.tokens[b]):
                    raise ValueError(f"item {b} has a segment [{s.start}, {s.end}) past its {len(self.tokens[b])} tokens")
        bad = [i for i in self.layers if not 0 <= i < self.meta.n_layers]
        if bad:
            raise ValueError(f"layers {bad} are outside the model's {self.meta.n_layers} layers")
        return self


class Manifest(_Strict):
    """``manifest.json`` of schema ``attnlab.run`` version 1 (further top-level fields are kept)."""

    schema_: Literal["attnlab.run"] = Field(alias="schema")
    version: Literal[1]
    created: float
    kind: Literal["capture", "dataset", "eval"] | None = None
    model: ModelEntry
    inputs: dict[str, Any] = {}
    capture: dict[str, Any] = {}
    plan: PlanEntry | None = None
    timings: dict[str, float] = {}
    extra: dict[str, Any] = {}
    traces: dict[str, TraceHeader]
    results: list[str] = []
    result_kinds: dict[str, str] = {}

    @field_validator("traces", "results")
    @classmethod
    def _stored_names(cls, value, info: ValidationInfo):
        """Trace and result names become file names inside the Run: each must be a plain name."""
        for name in value:
            check_name(name, info.field_name.rstrip("s"))
        return value

    @property
    def run_kind(self) -> str:
        """``kind``, or for manifests written before it existed: traces -> capture, methods -> eval, else dataset."""
        if self.kind:
            return self.kind
        if self.traces:
            return "capture"
        return "eval" if "methods" in self.extra else "dataset"


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "manifest"
    return f"{where}: {first['msg']}"


def validate_manifest(data: object, file: Path) -> Manifest:
    """The validated manifest, or :class:`RunFormatError` with one line naming ``file``, the field and the cause."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise RunFormatError(f"{file} is not an attnlab Run manifest (schema {found!r})")
    if data.get("version") != SCHEMA_VERSION:
        raise RunFormatError(f"{file} has schema version {data.get('version')}; this attnlab reads version {SCHEMA_VERSION}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise RunFormatError(f"{file} is malformed ({_reason(err)}); re-create the Run") from None


def read_manifest(path: Path) -> tuple[dict, Manifest]:
    """Read and validate ``path/manifest.json``; returns the raw dict and its validated form.

    Raises:
        RunFormatError: not a directory, no manifest, a symlinked manifest, not JSON, or against the schema.
    """
    file = path / "manifest.json"
    if not path.is_dir():
        raise RunFormatError(f"{path} is not a Run directory (it does not exist or is a file)")
    if file.is_symlink():
        raise RunFormatError(f"{file} is a symbolic link; a Run's files must lie inside it")
    if not file.exists():
        raise RunFormatError(f"{path} has no manifest.json; it is not an attnlab Run")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunFormatError(f"{file} is corrupt (not valid JSON: {err}); re-create the Run") from err
    except OSError as err:
        raise RunFormatError(f"{file} cannot be read ({err.strerror})") from err
    return data, validate_manifest(data, file)


def run_kind(path: Path) -> str | None:
    """The kind of the Run at ``path`` (``capture``, ``dataset``, ``eval``), or ``None`` when it is not a valid Run."""
    try:
        return read_manifest(Path(path))[1].run_kind
    except RunFormatError:
        return None


def inside(run: Path, *parts: str) -> Path:
    """``run / parts`` after checking it is a regular file or folder inside the Run, reached without symlinks.

    Raises:
        RunFormatError: a part that is a symlink or resolves outside ``run``.
    """
    path = Path(run)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise RunFormatError(f"{path} is a symbolic link; a Run's files must lie inside it")
    if not path.resolve().is_relative_to(Path(run).resolve()):
        raise RunFormatError(f"{path} resolves outside its Run")
    return path


def check_shapes(name: str, header: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse tensors that disagree with their trace header (batch, tokens, heads).

    Args:
        name: the trace name (for the message).
        header: the manifest's ``traces[name]``.
        shapes: ``{key: shape}`` of the trace's safetensors file.

    Raises:
        RunFormatError: the first disagreement, e.g. ``layer.0.pattern has 3 heads; the manifest says 2``.
    """
    batch = len(header["tokens"])
    n_tok = len(header["tokens"][0]) if batch else 0
    heads = header["meta"]["n_heads"]
    keys = header.get("key_tokens")
    n_key = (len(keys[0]) if keys else 0) if keys is not None else n_tok  # cross-attention: keys are another sequence
    for key, shape in shapes.items():
        field = key.split(".", 2)[2] if key.startswith("layer.") else key
        if not shape or shape[0] != batch:
            raise RunFormatError(f"trace {name}: {key} holds {shape[0] if shape else 0} item(s); the manifest lists {batch}")
        per_head = field in PER_HEAD or field.startswith("stats.")
        if per_head and (len(shape) < 3 or shape[1] != heads):
            raise RunFormatError(f"trace {name}: {key} has {shape[1] if len(shape) > 1 else 0} heads; "
                                 f"the manifest says {heads}")
        positions = (shape[2:4] if field == "pattern" else shape[2:3]) if per_head else shape[1:2]
        expected = {"pattern": (n_tok, n_key), "k": (n_key,), "stats.received": (n_key,), "key_mask": (n_key,)}
        want = expected.get(field, (n_tok,) * len(positions))
        for n, w in zip(positions, want):
            if n != w:
                raise RunFormatError(f"trace {name}: {key} spans {n} positions but the manifest lists {w} tokens "
                                     "per item")
