"""What every probe result shares: a JSON-ready ``to_dict``, tables saved in a Run and read back whole, and the
patch-grid view of token values.

Results hold numpy arrays (float64 for scores) so tables and figures need no torch. ``to_dict``
turns every field into plain Python (lists, floats, ``None`` for NaN) so ``json.dumps`` accepts it;
:func:`encode_value` / :func:`decode_value` store a result losslessly in its table (``to_table`` /
``from_frame``, see ``docs/run-format.md``).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import math
import zlib
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from attnlab.core.trace import Segment


def jsonable(value):
    """Plain-Python copy of ``value``: arrays to nested lists, NaN/inf to ``None``, dataclasses to dicts.

    Args:
        value: a number, string, array, tensor-free container or dataclass.

    Returns:
        Something ``json.dumps`` accepts.
    """
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    return value


def encode_value(value):
    """JSON-ready encoding of a result field that :func:`decode_value` turns back into an equal value.

    Unlike :func:`jsonable` (a readable view) it loses nothing: arrays keep dtype, shape and bits (zlib, base64),
    tables stay tables (parquet), tuples stay tuples, NaN stays NaN, dict keys keep their types and nested dataclasses (``Segment``, a
    ``CircuitGraph`` inside a report) their type.

    Raises:
        TypeError: a value with no encoding (a torch tensor, an object array); results hold numpy and plain Python.
    """
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("encode_value: an object array cannot be stored; hold results as numeric or str arrays")
        data = base64.b64encode(zlib.compress(np.ascontiguousarray(value).tobytes())).decode("ascii")
        return {"__array__": {"dtype": value.dtype.str, "shape": list(value.shape), "data": data}}
    if isinstance(value, pd.DataFrame):
        buffer = io.BytesIO()
        value.to_parquet(buffer)
        return {"__frame__": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else {"__float__": repr(f)}
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode_value(v) for v in sorted(value)], "frozen": isinstance(value, frozenset)}
    if isinstance(value, dict):
        return {"__dict__": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": _type_path(type(value)),
                "fields": {f.name: encode_value(getattr(value, f.name)) for f in fields(value)}}
    raise TypeError(f"encode_value: cannot store a {type(value).__name__}; result fields hold numpy arrays and "
                    f"plain Python")


def decode_value(value):
    """The value :func:`encode_value` encoded (see there)."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        spec = value["__array__"]
        raw = zlib.decompress(base64.b64decode(spec["data"]))
        return np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
    if "__frame__" in value:
        return pd.read_parquet(io.BytesIO(base64.b64decode(value["__frame__"])))
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(decode_value(v) for v in value["__tuple__"])
    if "__set__" in value:
        items = (decode_value(v) for v in value["__set__"])
        return frozenset(items) if value["frozen"] else set(items)
    if "__dict__" in value:
        return {_hashable(decode_value(k)): decode_value(v) for k, v in value["__dict__"]}
    if "__dataclass__" in value:
        return _import_type(value["__dataclass__"])(**{k: decode_value(v) for k, v in value["fields"].items()})
    raise ValueError(f"decode_value: {sorted(value)} is not an encode_value encoding")


def _hashable(key):
    """A decoded dict key (a list only where the key was one, which JSON cannot tell from a tuple) made hashable."""
    return tuple(key) if isinstance(key, list) else key


def _type_path(cls: type) -> str:
    """``module:QualName`` of an attnlab type, the name :func:`_import_type` reads back."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_type(path: str) -> type:
    """The attnlab type named ``module:QualName``; ValueError for anything outside attnlab (a stored table is
    data, and names no code to run from elsewhere)."""
    module, _, name = path.partition(":")
    if module != "attnlab" and not module.startswith("attnlab."):
        raise ValueError(f"A stored result names the type {path!r}; only attnlab's own result types load")
    found = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def result_from_table(frame: pd.DataFrame) -> "ProbeResult":
    """The result a stored table holds, whatever its type (``Run.result(name)``, saved by ``result.save``).

    Raises:
        ValueError: the table holds no stored result.
    """
    stored = frame.attrs.get("attnlab.result")
    if not stored or "type" not in stored:
        raise ValueError("This table holds no stored result; save results with result.save(run) or the CLI's --save")
    return _import_type(stored["type"]).from_frame(frame)


class ProbeResult:
    """Mixin for probe result dataclasses: ``to_dict`` from the fields, ``to_frame`` per subclass, and
    :meth:`save` into a Run under the result's own :attr:`table_name`."""

    #: Registry name of the probe that made the result.
    probe: str = ""
    #: The kind of table :meth:`save` stores, which readers (the dashboard) look for with
    #: :meth:`attnlab.core.runs.Run.results_of`; a subclass that does not set it gets its :attr:`probe` name.
    table_name: str = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("table_name"):
            cls.table_name = cls.probe

    def save(self, run, name: str | None = None):
        """Store :meth:`to_table` in ``run`` (a :class:`~attnlab.core.runs.Run`) as a table of kind
        :attr:`table_name`, named ``name`` (default: the kind). Returns the table's path."""
        return run.add_result(name or self.table_name, self.to_table(), kind=self.table_name)

    def to_table(self) -> pd.DataFrame:
        """:meth:`to_frame` (the rows people and the dashboard read) with the whole result encoded in
        ``attrs["attnlab.result"]`` (:func:`encode_value`; parquet keeps ``attrs``), so :meth:`from_frame`
        gives back an equal result, arrays bit for bit, whatever the rows leave out."""
        frame = self.to_frame()
        frame.attrs["attnlab.result"] = {"kind": self.table_name, "type": _type_path(type(self)),
                                         "fields": {f.name: encode_value(getattr(self, f.name))
                                                    for f in fields(self)}}  # type: ignore[arg-type]
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame):
        """The result a :meth:`to_table` table (e.g. ``Run.result(name)``) was made from.

        Raises:
            ValueError: the table is not a stored result of this type (it names the kind it is).
        """
        stored = frame.attrs.get("attnlab.result")
        if not stored or stored.get("kind") != cls.table_name or "type" not in stored:
            kind = stored.get("kind") if stored else "a table without a stored result"
            raise ValueError(f"This table is not a stored {cls.table_name} result (it is {kind}); save results with "
                             f"result.save(run) or the CLI's --save")
        return cls(**{name: decode_value(value) for name, value in stored["fields"].items()})

    def to_dict(self) -> dict:
        """Every field as JSON-ready Python, plus ``"probe"``."""
        out = {"probe": self.probe}
        out.update({f.name: jsonable(getattr(self, f.name)) for f in fields(self)})  # type: ignore[arg-type]
        return out

    def to_frame(self) -> pd.DataFrame:
        """The result as a long-form table."""
        raise NotImplementedError


@dataclass(frozen=True)
class PatchGrid:
    """Values of one image span laid out on its patch grid.

    Attributes:
        segment: the image :class:`Segment` (``grid = (rows, cols)``).
        values: ``[rows, cols]`` values, row-major as the patches are ordered in the sequence.
    """

    segment: Segment
    values: np.ndarray


def patch_grids(values: np.ndarray, segments: list[Segment]) -> list[PatchGrid]:
    """Lay the values of every image span with a grid onto that grid.

    Args:
        values: ``[N]`` one value per token position of one batch item.
        segments: that item's segments.

    Returns:
        One :class:`PatchGrid` per image segment that has a ``grid``, in sequence order.
    """
    out = []
    for seg in segments:
        if seg.kind == "image" and seg.grid is not None:
            out.append(PatchGrid(seg, np.asarray(values[seg.start : seg.end]).reshape(seg.grid)))  # (rows, cols)
    return out


class TokenRelevance(ProbeResult):
    """Shared view of results that score every input token for one output position per item.

    Subclasses have ``relevance`` ``[B, N]``, ``positions``, ``tokens``, ``segments`` and ``mask`` ``[B, N]``.
    """

    def grids(self, batch: int = 0) -> list[PatchGrid]:
        """Relevance of batch item ``batch`` on the patch grid of each of its image spans."""
        return patch_grids(self.relevance[batch], self.segments[batch])  # type: ignore[attr-defined]

    def to_frame(self) -> pd.DataFrame:
        """One row per real input token: ``batch, output_position, position, token, relevance``.

        ``output_position`` is -1 (:data:`attnlab.probes.tokens.MEAN_POOLED`) for a mean-pooled output.
        """
        rows = []
        for b, toks in enumerate(self.tokens):  # type: ignore[attr-defined]
            out = self.positions[b]  # type: ignore[attr-defined]
            for n, tok in enumerate(toks):
                if self.mask[b, n]:  # type: ignore[attr-defined]
                    rows.append((b, out, n, tok, float(self.relevance[b, n])))  # type: ignore[attr-defined]
        return pd.DataFrame(rows, columns=["batch", "output_position", "position", "token", "relevance"])
