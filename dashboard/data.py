"""Where the dashboard's data comes from: Runs under the allowed roots, read lazily and cached per app.

Security: a Run id is ``"<root index>:<relative path>"``. :meth:`RunCatalog.resolve` rejects absolute
paths, ``..`` parts and anything that, once symlinks are resolved, lies outside its root; nothing is
read from a path that did not pass it. Images named by a manifest are read only when they resolve
inside one of the roots too.

Laziness: discovery reads manifests only. Tensors are read one safetensors key at a time (a layer's
``pattern``, ``stats.entropy``, ...) and kept in a byte-bounded LRU keyed by ``(file, mtime, key)``; the
cache lives on the :class:`DashboardData` object that :func:`attnlab.dashboard.app.create_app` hangs on
the Flask server, so there is no module-level mutable state.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import torch

from attnlab.core.runs import Run, RunFormatError
from attnlab.core.trace import Segment, Trace
from attnlab.core.trace_files import load_trace, read_tensor, segments_of

#: How deep under a root Runs are searched for (a root may itself be a Run).
MAX_DEPTH = 3
DEFAULT_TENSOR_BYTES = 512 * 2**20
DEFAULT_RESULTS = 128
EXTENSION_KEY = "attnlab"


class RunAccessError(ValueError):
    """A Run id that is malformed, outside the served directories or not a Run."""


@dataclass(frozen=True)
class RunRef:
    """One discovered Run.

    Attributes:
        run_id: ``"<root index>:<relative path>"`` (``"."`` for a root that is itself a Run).
        path: the resolved Run directory.
        label: what the Run selector shows.
        error: why the Run failed validation (one line), or ``None`` for a valid Run.
    """

    run_id: str
    path: Path
    label: str
    error: str | None = None


class RunCatalog:
    """The Runs under the directories given at start.

    Args:
        roots: directories (each a Run or a folder holding Runs); each must exist.

    Raises:
        ValueError: a root that does not exist or is not a directory.
    """

    def __init__(self, roots: Iterable[str | Path]) -> None:
        resolved = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"{root} is not a directory; give Run directories (or folders holding Runs)")
            resolved.append(path)
        if not resolved:
            raise ValueError("Give at least one Run directory")
        self.roots: tuple[Path, ...] = tuple(resolved)

    def discover(self) -> list[RunRef]:
        """Every Run (a directory with ``manifest.json``) under the roots, sorted by id; reads only manifests."""
        found: list[RunRef] = []
        for index, root in enumerate(self.roots):
            for path in _walk_runs(root, MAX_DEPTH):
                rel = path.relative_to(root).as_posix()
                run_id = f"{index}:{rel}"
                found.append(_ref(root, rel, path, run_id))
        return sorted(found, key=lambda r: r.run_id)

    def resolve(self, run_id: object) -> Path:
        """The Run directory of ``run_id``, after checking it stays inside its root.

        Raises:
            RunAccessError: malformed id, traversal outside the root, or no Run there.
        """
        if not isinstance(run_id, str) or ":" not in run_id or "\x00" in run_id or "\\" in run_id:
            raise RunAccessError(f"{run_id!r} is not a Run id of this dashboard; pick a Run from the list")
        head, rel = run_id.split(":", 1)
        if not head.isdigit() or int(head) >= len(self.roots):
            raise RunAccessError(f"{run_id!r} names no served directory; pick a Run from the list")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise RunAccessError(f"{run_id!r} points outside the served directories; pick a Run from the list")
        root = self.roots[int(head)]
        path = (root / pure).resolve()
        if not path.is_relative_to(root):
            raise RunAccessError(f"{run_id!r} resolves outside the served directories; pick a Run from the list")
        if not (path / "manifest.json").is_file():
            raise RunAccessError(f"{run_id!r} is not a Run (no manifest.json); pick a Run from the list")
        return path

    def contains(self, path: Path) -> bool:
        """Whether a resolved path lies inside one of the roots."""
        return any(path == root or path.is_relative_to(root) for root in self.roots)


def _walk_runs(root: Path, depth: int) -> list[Path]:
    if (root / "manifest.json").is_file():
        return [root]
    if depth == 0:
        return []
    out = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    except OSError:
        return []
    for child in children:
        if child.is_symlink():  # a link may lead outside the root; Runs are searched in real folders only
            continue
        out += _walk_runs(child, depth - 1)
    return out


def _ref(root: Path, rel: str, path: Path, run_id: str) -> RunRef:
    """The Run's entry, validated once here (:mod:`attnlab.core.manifest`): an invalid one keeps its reason."""
    name = root.name if rel == "." else rel
    try:
        model = Run.open(path).manifest["model"].get("name") or "?"
    except (RunFormatError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return RunRef(run_id, path, f"{name} — invalid: {reason}", error=reason)
    return RunRef(run_id, path, f"{name} — {Path(str(model)).name}")


class ByteLRU:
    """A thread-safe least-recently-used cache bounded by total bytes (or by entries when sizes are 1)."""

    def __init__(self, max_bytes: int, size_of: Callable[[object], int] = lambda v: 1) -> None:
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key, compute: Callable[[], object]):
        """The cached value of ``key``, computing (outside the lock) and storing it when absent."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
        value = compute()
        size = self._size_of(value)
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old
        return value

    def __len__(self) -> int:
        return len(self._items)


def _tensor_bytes(value) -> int:
    return int(value.numel() * value.element_size()) if isinstance(value, torch.Tensor) else 1


class DashboardData:
    """The Runs an app serves, and the caches of what was read or computed from them.

    Args:
        roots: the directories given at start.
        max_tensor_bytes: budget of the tensor LRU.
        max_results: entries of the LRU of computed results (probe outputs, head statistics, figures' data).
    """

    def __init__(self, roots: Iterable[str | Path], max_tensor_bytes: int = DEFAULT_TENSOR_BYTES,
                 max_results: int = DEFAULT_RESULTS) -> None:
        self.catalog = RunCatalog(roots)
        self.tensors = ByteLRU(max_tensor_bytes, _tensor_bytes)
        self.results = ByteLRU(max_results)

    # -- Runs -----------------------------------------------------------------------------------------
    def runs(self) -> list[RunRef]:
        """The served Runs that pass validation (the ones every page offers)."""
        return [ref for ref in self.catalog.discover() if ref.error is None]

    def all_runs(self) -> list[RunRef]:
        """Every Run found, the invalid ones with their reason (:attr:`RunRef.error`), for the Runs listing."""
        return self.catalog.discover()

    def run(self, run_id: object) -> Run:
        """Open a Run by id (manifest only), checked against the roots; cached by manifest mtime."""
        path = self.catalog.resolve(run_id)
        stamp = (path / "manifest.json").stat().st_mtime_ns
        return self.results.get_or_compute(("run", str(path), stamp), lambda: Run.open(path))

    def stamp(self, run: Run) -> int:
        """The manifest's mtime: part of every cache key, so a rewritten Run is read again."""
        return (run.path / "manifest.json").stat().st_mtime_ns

    def cached(self, run: Run, key: tuple, compute: Callable[[], object]):
        """A computed value cached by ``(run path, manifest mtime, *key)``."""
        return self.results.get_or_compute((str(run.path), self.stamp(run), *key), compute)

    # -- tensors --------------------------------------------------------------------------------------
    def tensor_keys(self, run: Run, trace: str) -> tuple[str, ...]:
        """The keys stored in a trace's file (:meth:`attnlab.core.runs.Run.tensor_shapes`, checked against the
        manifest), cached per file version."""
        return tuple(self._shapes(run, trace))

    def _shapes(self, run: Run, trace: str) -> dict[str, tuple[int, ...]]:
        file = run.trace_file(trace)
        return self.results.get_or_compute(("shapes", str(file), file.stat().st_mtime_ns),
                                           lambda: run.tensor_shapes(trace))

    def tensor(self, run: Run, trace: str, key: str) -> torch.Tensor:
        """One tensor (e.g. ``layer.3.pattern``) of a trace, read alone (:meth:`Run.read`) and cached."""
        file = run.trace_file(trace)
        if key not in self.tensor_keys(run, trace):
            raise ValueError(f"Trace {trace!r} of this Run has no {key!r}; capture it to see this view")
        return self.tensors.get_or_compute((str(file), file.stat().st_mtime_ns, key),
                                           lambda: read_tensor(file, key))

    def tensor_part(self, run: Run, trace: str, key: str, item: int, head: int | None = None) -> torch.Tensor:
        """``tensor[item]`` or ``tensor[item, head]`` read alone (safetensors slices read only those bytes), cached.

        This is what keeps a large Run cheap: one head's map of one item is read, not the layer's ``[B, H, Q, K]``.
        """
        file = run.trace_file(trace)
        if key not in self.tensor_keys(run, trace):
            raise ValueError(f"Trace {trace!r} of this Run has no {key!r}; capture it to see this view")
        return self.tensors.get_or_compute((str(file), file.stat().st_mtime_ns, key, int(item), head),
                                           lambda: read_tensor(file, key, int(item), head))

    def layer_part(self, run: Run, trace: str, layer: int, field: str, item: int, head: int | None = None):
        """``layer.{layer}.{field}[item(, head)]``."""
        return self.tensor_part(run, trace, f"layer.{int(layer)}.{field}", item, head)

    def layer_field(self, run: Run, trace: str, layer: int, field: str) -> torch.Tensor:
        """``layer.{layer}.{field}`` of a trace (``pattern``, ``q``, ``stats.entropy``, ...)."""
        return self.tensor(run, trace, f"layer.{int(layer)}.{field}")

    def has_field(self, run: Run, trace: str, layer: int, field: str) -> bool:
        """Whether ``layer.{layer}.{field}`` was stored."""
        return f"layer.{int(layer)}.{field}" in self.tensor_keys(run, trace)

    def partial_trace(self, run: Run, trace: str, layers: Iterable[int] | None, fields: Iterable[str],
                      item: int | None = None) -> Trace:
        """A Trace holding only ``fields`` (``pattern``, ``q``, ``k``, ``head_out``, ``resid``, ``stats`` or
        ``stats.<name>``) of ``layers`` (``None``: every captured layer); nothing else is read.

        With ``item``, only that batch item is read and the Trace has batch size 1. The same loader as
        :meth:`attnlab.core.runs.Run.trace`, reading through this cache.
        """
        def read(key: str, i: int | None) -> torch.Tensor:
            return self.tensor(run, trace, key) if i is None else self.tensor_part(run, trace, key, i)

        return load_trace(run.trace_file(trace), trace, trace_header(run, trace), layers=layers, fields=tuple(fields),
                          item=item, shapes=self._shapes(run, trace), reader=read)

    # -- images ---------------------------------------------------------------------------------------
    def image_uri(self, run: Run, index: int) -> str | None:
        """The ``index``-th input image of a Run as a PNG data URI, or ``None`` when it is not served
        (missing, unreadable, or outside the served directories)."""
        images = run.info.inputs.get("images") or []
        if not 0 <= index < len(images):
            return None
        path = (run.path / str(images[index])).resolve()
        if not self.catalog.contains(path) or not path.is_file():
            return None
        return self.results.get_or_compute(("image", str(path), path.stat().st_mtime_ns), lambda: _png_uri(path))


def _png_uri(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def trace_header(run: Run, trace: str) -> dict:
    """The manifest entry of a trace (tokens, segments, meta, layers)."""
    if not run.manifest["traces"]:
        raise ValueError("This Run holds result tables only (no traces); pick a Run with traces for this view")
    return run.header(trace)


#: The two token axes of an attention map ``[Q, K]``: its rows (queries) and its columns (keys).
AXES = ("query", "key")


def is_cross(header: dict) -> bool:
    """Whether a trace header is a cross-attention trace's (keys another sequence's tokens: ``key_tokens``)."""
    return header.get("key_tokens") is not None


def axis_side(header: dict, axis: str) -> dict:
    """The tokens along one axis of a trace's attention maps, as a self-attention header.

    The one place the dashboard decides which tokens label an axis: the queries are the trace's ``tokens``; the
    keys are too, except in a cross-attention trace (``main.cross``), whose keys are the encoder's ``key_tokens``
    and ``key_segments`` (as :meth:`attnlab.core.trace.Trace.key_side`).

    Args:
        header: the trace header (:func:`trace_header`).
        axis: ``"query"`` or ``"key"``.

    Returns:
        The header with ``tokens`` and ``segments`` of that side, without ``key_*`` entries, and ``mask``: the name
        of the stored ``[B, N]`` real-token mask of that side (``token_mask`` or ``key_mask``).

    Raises:
        ValueError: an axis other than ``query`` or ``key``.
    """
    if axis not in AXES:
        raise ValueError(f"Unknown token axis {axis!r}; choose one of {AXES}")
    side = {k: v for k, v in header.items() if not k.startswith("key_")}
    if axis == "key" and is_cross(header):
        segments = header.get("key_segments") or [[] for _ in header["key_tokens"]]
        return {**side, "tokens": header["key_tokens"], "segments": segments, "mask": "key_mask"}
    return {**side, "mask": "token_mask"}


def token_labels(header: dict, item: int, axis: str = "query") -> list[str]:
    """``"position:token"`` labels of one batch item's tokens along ``axis`` (unique, so plotly keeps every tick)."""
    return [f"{n}:{tok}" for n, tok in enumerate(axis_side(header, axis)["tokens"][item])]


def image_segments(header: dict, item: int, axis: str = "query") -> list[Segment]:
    """Image spans with a patch grid of one batch item, among the tokens along ``axis``."""
    return [s for s in segments_of(axis_side(header, axis))[item] if s.kind == "image" and s.grid]
