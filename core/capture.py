"""What to record during a forward pass, and what that will cost in memory."""

from __future__ import annotations

from dataclasses import dataclass

from .trace import STAT_NAMES

DEFAULT_BUDGET_BYTES = 4 * 2**30
#: Statistics recorded when ``Capture(stats=True)``: all of them.
DEFAULT_STATS = STAT_NAMES
#: Key sets whose attention mass is recorded with the statistics (``mass.<set>``), when present in the input.
DEFAULT_KEY_SETS = ("first", "special", "image", "text")
CAPTURE_OPTIONS = ("pattern", "stats", "qk", "head_out", "resid")


@dataclass(frozen=True)
class ModelShape:
    """The sizes a memory estimate needs.

    Attributes:
        n_layers: attention layers.
        n_heads: query heads per layer.
        d_head: head width.
        d_model: residual width.
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int


@dataclass(frozen=True)
class Capture:
    """Choices of what a hook records.

    Attributes:
        pattern: full post-softmax maps ``[B, H, Q, K]`` per layer (quadratic in tokens: the costly one).
        stats: per-row ``lse``/``entropy``/``max``/``mass.<set>`` and per-key ``received``
            (linear in tokens). ``True`` records :data:`DEFAULT_STATS`; a tuple chooses.
        qk: queries and keys ``[B, H, N, d_head]`` (for joint query-key embeddings).
        head_out: per-head outputs before the output projection ``[B, H, N, d_head]`` (for VHD).
        resid: block output hidden states ``[B, N, d_model]`` (for massive activations, sinks, registers).
        layers: layer indices to record; ``None`` records every layer. Negative indices count from the end.
        key_sets: segment kinds whose attention mass is recorded with the stats.
        budget_bytes: the estimate above which a capture is refused before the forward pass.
        keep_on_device: keep captured tensors where the model runs instead of moving them to the CPU.
    """

    pattern: bool = False
    stats: bool | tuple[str, ...] = False
    qk: bool = False
    head_out: bool = False
    resid: bool = False
    layers: tuple[int, ...] | None = None
    key_sets: tuple[str, ...] = DEFAULT_KEY_SETS
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    keep_on_device: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.stat_names) - set(DEFAULT_STATS)
        if unknown:
            raise ValueError(f"Unknown statistics {sorted(unknown)}; choose from {DEFAULT_STATS}")
        if self.budget_bytes <= 0:
            raise ValueError("Capture budget_bytes must be positive")

    @classmethod
    def parse(cls, spec: str, layers: tuple[int, ...] | None = None, **kwargs) -> "Capture":
        """Build a Capture from a comma list such as ``"pattern,stats,qk,resid"``.

        Raises:
            ValueError: an unknown option, naming the valid ones.
        """
        names = [s.strip() for s in spec.split(",") if s.strip()]
        unknown = [n for n in names if n not in CAPTURE_OPTIONS]
        if unknown or not names:
            raise ValueError(f"Unknown capture option(s) {unknown or [spec]}; choose from {', '.join(CAPTURE_OPTIONS)}")
        return cls(**{n: True for n in names}, layers=layers, **kwargs)

    @property
    def stat_names(self) -> tuple[str, ...]:
        """The statistics to record (empty when ``stats`` is off)."""
        if self.stats is True:
            return DEFAULT_STATS
        if not self.stats:
            return ()
        return tuple(self.stats)

    @property
    def captured(self) -> tuple[str, ...]:
        """Names of the enabled options, in :data:`CAPTURE_OPTIONS` order."""
        return tuple(n for n in CAPTURE_OPTIONS if (self.stat_names if n == "stats" else getattr(self, n)))

    def layer_indices(self, n_layers: int) -> tuple[int, ...]:
        """Resolve ``layers`` against a model depth; raises ValueError for an index outside the model."""
        if self.layers is None:
            return tuple(range(n_layers))
        out = []
        for i in self.layers:
            j = i + n_layers if i < 0 else i
            if not 0 <= j < n_layers:
                raise ValueError(f"Capture layer {i} is outside the model, which has layers 0..{n_layers - 1}")
            out.append(j)
        return tuple(sorted(set(out)))

    def estimate_bytes(self, shape: ModelShape, batch: int, n_tokens: int, bytes_per_value: int = 4) -> int:
        """Bytes the captured tensors will hold for one forward pass.

        Args:
            shape: model sizes.
            batch: B.
            n_tokens: N (queries = keys = N for a full pass).
            bytes_per_value: 4 for float32 storage.
        """
        per_layer = 0
        b, h, n = batch, shape.n_heads, n_tokens
        if self.pattern:
            per_layer += b * h * n * n
        rows = sum(1 for s in self.stat_names if s != "received") + (len(self.key_sets) if self.stat_names else 0)
        per_layer += b * h * n * rows + (b * h * n if "received" in self.stat_names else 0)
        if self.qk:
            per_layer += 2 * b * h * n * shape.d_head
        if self.head_out:
            per_layer += b * h * n * shape.d_head
        if self.resid:
            per_layer += b * n * shape.d_model
        n_layers = len(self.layer_indices(shape.n_layers))
        extra = b * n * shape.d_model if self.resid else 0
        return (per_layer * n_layers + extra) * bytes_per_value

    def check_budget(self, shape: ModelShape, batch: int, n_tokens: int) -> int:
        """Return the estimate, or raise ValueError (with the cheaper option) when it exceeds the budget."""
        need = self.estimate_bytes(shape, batch, n_tokens)
        if need <= self.budget_bytes:
            return need
        hint = ""
        if self.pattern:
            cheaper = Capture(
                stats=self.stats or True, qk=self.qk, head_out=self.head_out, resid=self.resid,
                layers=self.layers, key_sets=self.key_sets,
            )
            hint = (
                f" Capturing statistics instead of full patterns (Capture(pattern=False, stats=True)) needs "
                f"{format_bytes(cheaper.estimate_bytes(shape, batch, n_tokens))}."
            )
        raise ValueError(
            f"This capture needs about {format_bytes(need)} for batch {batch} x {n_tokens} tokens x "
            f"{len(self.layer_indices(shape.n_layers))} layers, over the budget of {format_bytes(self.budget_bytes)}."
            f"{hint} Or capture fewer layers (layers=...), a smaller batch, or raise budget_bytes."
        )


def format_bytes(n: int) -> str:
    """Human-readable size, e.g. ``'1.5 GiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
