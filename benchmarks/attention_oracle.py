"""A float64 textbook oracle for attention statistics, and the error gates of the GPU check.

Used by ``benchmarks/gpu_check.py``; kept apart so the oracle can be tested on its own against hand-computed
values (``tests/benchmarks/test_gpu_check.py``).
"""

from __future__ import annotations

import math

#: Largest errors vs float64 accepted (inputs rounded to bf16/fp16 first, so only the kernel's arithmetic
#: counts): statistics are accumulated in float32; the output goes through P rounded to the input dtype.
GATES = {"lse": 1e-3, "entropy": 1e-3, "max": 1e-3, "mass": 1e-3, "received_rel": 1e-3, "out": 3e-2}


def oracle64(q, k, v, sets: dict, causal: bool, rows=None, block: int = 512) -> dict:
    """Textbook causal softmax attention in float64, block of query rows by block.

    Args:
        q: ``[H, Q, d]``; k, v: ``[H, K, d]`` (any float dtype; upcast here).
        sets: ``{name: [K] bool}`` key sets for ``mass``.
        causal: query ``i`` sees keys ``<= i + K - Q``.
        rows: ``[R]`` query indices to compute (all when None; ``received`` only then).

    Returns:
        ``{"out" [H, R, d], "lse", "entropy", "max" [H, R], "mass.<set>" [H, R], "received" [H, K] (all rows)}``.
    """
    import torch

    q, k, v = q.double(), k.double(), v.double()
    n_q, n_k = q.shape[1], k.shape[1]
    idx = torch.arange(n_q, device=q.device) if rows is None else rows
    cols = torch.arange(n_k, device=q.device)
    parts: dict[str, list] = {}
    received = torch.zeros(q.shape[0], n_k, dtype=torch.float64, device=q.device) if rows is None else None
    for r0 in range(0, len(idx), block):
        r = idx[r0:r0 + block]
        s = q[:, r] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (H, R, K)
        if causal:
            s = s.masked_fill(cols[None, :] > (r + n_k - n_q)[:, None], float("-inf"))
        lse = torch.logsumexp(s, -1)  # (H, R)
        p = torch.exp(s - lse[..., None])  # (H, R, K)
        found = {"out": p @ v, "lse": lse, "entropy": -torch.special.xlogy(p, p).sum(-1), "max": p.amax(-1)}
        found.update({f"mass.{n}": p @ m.double() for n, m in sets.items()})
        for name, t in found.items():
            parts.setdefault(name, []).append(t)
        if received is not None:
            received += p.sum(1)
    out = {name: torch.cat(ts, dim=1) for name, ts in parts.items()}
    if received is not None:
        out["received"] = received
    return out


def stat_errors(out, stats, ref: dict, rows=None) -> dict[str, float]:
    """Largest absolute error of each statistic of batch item 0 (``received`` relative to its largest value)."""
    got = {"out": out[0], **{n: t[0] for n, t in stats.as_dict().items()}}
    errs: dict[str, float] = {}
    for name, want in ref.items():
        have = got[name].double()
        if rows is not None and name != "received":
            have = have[:, rows]
        diff = float((have - want).abs().max())
        if name == "received":
            errs["received_rel"] = diff / max(float(want.abs().max()), 1e-30)
        else:
            key = "mass" if name.startswith("mass.") else name
            errs[key] = max(errs.get(key, 0.0), diff)
    return errs


def over_gate(errs: dict[str, float]) -> list[str]:
    return [f"{n}={e:.2e}>{GATES[n]:.0e}" for n, e in errs.items() if not e <= GATES[n]]
