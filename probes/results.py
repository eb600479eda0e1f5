"""What every probe result shares: a JSON-ready ``to_dict`` and the patch-grid view of token values.

Results hold numpy arrays (float64 for scores) so tables and figures need no torch. ``to_dict``
turns every field into plain Python (lists, floats, ``None`` for NaN) so ``json.dumps`` accepts it.
"""

from __future__ import annotations

import dataclasses
import math
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

    #: the fields a table's rows do not hold; :meth:`to_table` keeps them in the table's ``attrs`` (stored with it)
    attr_fields: tuple[str, ...] = ()

    def save(self, run, name: str | None = None):
        """Store :meth:`to_table` in ``run`` (a :class:`~attnlab.core.runs.Run`) as a table of kind
        :attr:`table_name`, named ``name`` (default: the kind). Returns the table's path."""
        return run.add_result(name or self.table_name, self.to_table(), kind=self.table_name)

    def to_table(self) -> pd.DataFrame:
        """:meth:`to_frame`, with the fields its rows do not hold in ``attrs["attnlab.result"]`` (parquet keeps
        them), so :meth:`from_frame` can rebuild the result from a stored table."""
        frame = self.to_frame()
        frame.attrs["attnlab.result"] = {"kind": self.table_name,
                                         "fields": {n: jsonable(getattr(self, n)) for n in self.attr_fields}}
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame):
        """The result a :meth:`to_table` table (e.g. ``Run.result(name)``) was made from.

        Raises:
            ValueError: the table is not a stored result of this type (it names the kind it is).
            NotImplementedError: a type whose table does not hold the whole result.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from its table")

    @classmethod
    def _stored_fields(cls, frame: pd.DataFrame) -> dict:
        """The ``attrs`` fields of a :meth:`to_table` table of this type; ValueError for any other table."""
        stored = frame.attrs.get("attnlab.result")
        if not stored or stored.get("kind") != cls.table_name:
            kind = stored.get("kind") if stored else "a table without a stored result"
            raise ValueError(f"This table is not a stored {cls.table_name} result (it is {kind}); save results with "
                             f"result.save(run) or the CLI's --save")
        return stored["fields"]

    def to_dict(self) -> dict:
        """Every field as JSON-ready Python, plus ``"probe"``."""
        out = {"probe": self.probe}
        out.update({f.name: jsonable(getattr(self, f.name)) for f in fields(self)})  # type: ignore[arg-type]
        return out

    def to_frame(self) -> pd.DataFrame:
        """The result as a long-form table."""
        raise NotImplementedError


def per_head_grid(frame: pd.DataFrame, column: str, n_layers: int | None = None, n_heads: int | None = None,
                  rows: str = "layer") -> np.ndarray:
    """``[L, H]`` values of ``column`` from a table with one row per (``rows``, ``head``) (NaN where none)."""
    n_layers = int(frame[rows].max()) + 1 if n_layers is None else n_layers
    n_heads = int(frame["head"].max()) + 1 if n_heads is None else n_heads
    grid = np.full((n_layers, n_heads), np.nan)
    grid[frame[rows].to_numpy(int), frame["head"].to_numpy(int)] = frame[column].to_numpy(float)
    return grid


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
