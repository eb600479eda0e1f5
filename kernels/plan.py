"""Plans: interventions on attention as data.

A Plan says, per layer, which heads keep, lose or rescale their output and how post-softmax
attention is moved between named key sets. VAR, VHR, ACT and head masking build Plans; the
attention kernels execute them. Plans are frozen and JSON-serialisable so a Run can record them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Gate:
    """A per-row condition, tested on the *unmodified* attention, for a reweighting to apply.

    VAR's image-centric head test: ``mass(within) >= min_mass`` and
    ``mass(part) / mass(within) >= min_share``.

    Attributes:
        within: key set whose mass is tested (e.g. ``"image"``).
        min_mass: lower bound on that mass.
        part: key set inside ``within`` whose share is tested (e.g. ``"image_nonsink"``); ``None`` skips the share test.
        min_share: lower bound on ``mass(part) / mass(within)``.
    """

    within: str
    min_mass: float = 0.0
    part: str | None = None
    min_share: float = 0.0


@dataclass(frozen=True)
class Reweight:
    """Multiply post-softmax attention on ``source`` by ``factor`` and give the freed mass to ``target``.

    For a row with attention ``p`` (summing to 1), ``m_S = sum_{j in S} p_j`` and
    ``m_T = sum_{j in T \\ S} p_j``, the new row is::

        p'_j = a * p_j                              j in S
        p'_j = p_j * (1 + (1 - a) * m_S / m_T)      j in T \\ S
        p'_j = p_j                                  otherwise

    so rows still sum to 1 (ACT's and VAR's formula). ``target=None`` means every key outside
    ``S``. Where ``m_T == 0``, the gate fails, or the row is not in ``queries``, the row is unchanged.

    Attributes:
        source: key-set name (S).
        factor: ``a`` per head (tuple of length H) or one value for every head; 1 leaves a head unchanged.
        target: key-set name (T) or ``None`` for all other keys.
        queries: query-set name restricting the rows; ``None`` for every row.
        gate: optional per-row condition (:class:`Gate`).
    """

    source: str
    factor: float | tuple[float, ...]
    target: str | None = None
    queries: str | None = None
    gate: Gate | None = None

    def factors(self, n_heads: int) -> tuple[float, ...]:
        """``a`` for each head; raises ValueError if a per-head tuple has the wrong length."""
        if isinstance(self.factor, (int, float)):
            return (float(self.factor),) * n_heads
        if len(self.factor) != n_heads:
            raise ValueError(f"Reweight factor has {len(self.factor)} values for {n_heads} heads")
        return tuple(float(f) for f in self.factor)

    def key_set_names(self) -> tuple[str, ...]:
        """The key sets the reweighting reads: its source, target and gate sets (the names it needs passed)."""
        gate = () if self.gate is None else (self.gate.within, self.gate.part)
        names = (self.source, self.target, *gate)
        return tuple(dict.fromkeys(name for name in names if name is not None))

    def changed_heads(self, n_heads: int) -> tuple[int, ...]:
        """The heads whose factor is not 1, the only ones the reweighting can change (ACT: its calibrated heads);
        empty when it changes nothing."""
        return tuple(h for h, f in enumerate(self.factors(n_heads)) if f != 1.0)


@dataclass(frozen=True)
class LayerPlan:
    """What to do in one layer.

    Attributes:
        head_scale: multiplier of each head's output (0 masks the head); ``None`` keeps all heads.
        reweight: at most one key-set reweighting (per-head factors).
    """

    head_scale: tuple[float, ...] | None = None
    reweight: Reweight | None = None

    @property
    def is_identity(self) -> bool:
        """True when the layer plan changes nothing."""
        scale_id = self.head_scale is None or all(s == 1.0 for s in self.head_scale)
        rw = self.reweight
        rw_id = rw is None or (isinstance(rw.factor, (int, float)) and rw.factor == 1.0) or (
            not isinstance(rw.factor, (int, float)) and all(f == 1.0 for f in rw.factor)
        )
        return scale_id and rw_id


@dataclass(frozen=True)
class Plan:
    """Per-layer interventions. Layers not listed are untouched.

    Attributes:
        layers: ``{layer_index: LayerPlan}``.
        name: a label for tables and Runs (e.g. ``"vhr"``).
    """

    layers: Mapping[int, LayerPlan] = field(default_factory=dict)
    name: str = "identity"

    def for_layer(self, index: int) -> LayerPlan | None:
        """The plan of a layer, or ``None`` when it changes nothing."""
        lp = self.layers.get(index)
        return None if lp is None or lp.is_identity else lp

    @property
    def is_identity(self) -> bool:
        """True when no layer is changed."""
        return all(lp.is_identity for lp in self.layers.values())

    def key_set_names(self) -> set[str]:
        """Names of every key set the plan refers to (the caller must supply these masks)."""
        names: set[str] = set()
        for lp in self.layers.values():
            rw = lp.reweight
            if rw is None:
                continue
            names.add(rw.source)
            if rw.target:
                names.add(rw.target)
            if rw.gate:
                names.add(rw.gate.within)
                if rw.gate.part:
                    names.add(rw.gate.part)
        return names

    def to_dict(self) -> dict:
        """JSON-ready form (layer keys become strings)."""
        return {"name": self.name, "layers": {str(k): asdict(v) for k, v in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """Inverse of :meth:`to_dict`."""
        layers = {}
        for key, lp in data.get("layers", {}).items():
            rw = lp.get("reweight")
            if rw is not None:
                gate = Gate(**rw["gate"]) if rw.get("gate") else None
                factor = rw["factor"] if isinstance(rw["factor"], (int, float)) else tuple(rw["factor"])
                rw = Reweight(rw["source"], factor, rw.get("target"), rw.get("queries"), gate)
            scale = tuple(lp["head_scale"]) if lp.get("head_scale") is not None else None
            layers[int(key)] = LayerPlan(head_scale=scale, reweight=rw)
        return cls(layers=layers, name=data.get("name", "plan"))
