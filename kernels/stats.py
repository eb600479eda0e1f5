"""The statistics an attention call emits, and the masks it takes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Names accepted in ``attention(..., stats=...)``. ``mass`` emits ``mass[name]`` for every key set passed.
STAT_NAMES = ("lse", "entropy", "max", "mass", "received")


@dataclass
class Stats:
    """What one attention call reveals besides its output. All float32; unset fields stay ``None``.

    Attributes:
        lse: natural-log normaliser of each row ``[B, H, Q]`` (of the unmodified scores; ``-inf`` for fully masked rows).
        entropy: entropy in nats of each applied attention row ``[B, H, Q]`` (0 for fully masked rows).
        max: the largest applied attention weight of each row ``[B, H, Q]``.
        mass: ``{key_set: [B, H, Q]}`` applied attention mass on each key set.
        received: ``[B, H, K]`` applied attention summed over queries.
        pattern: ``[B, H, Q, K]`` applied attention, only from the eager path when asked for.
    """

    lse: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    max: torch.Tensor | None = None
    mass: dict[str, torch.Tensor] = field(default_factory=dict)
    received: torch.Tensor | None = None
    pattern: torch.Tensor | None = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` with ``mass.<set>`` keys (the Trace/Run naming); excludes the pattern."""
        out = {n: getattr(self, n) for n in ("lse", "entropy", "max", "received") if getattr(self, n) is not None}
        out.update({f"mass.{k}": v for k, v in self.mass.items()})
        return out


def check_stat_names(stats: tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a ``stats`` argument; returns it as a tuple."""
    stats = tuple(stats or ())
    unknown = [s for s in stats if s not in STAT_NAMES]
    if unknown:
        raise ValueError(f"Unknown attention statistics {unknown}; choose from {STAT_NAMES}")
    return stats

