"""benchmarks/capture.py measures what it says: allocator bytes inside attention calls, and power-law exponents."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from capture import allocator_peaks, fit_exponent  # noqa: E402


class Scratch(torch.nn.Module):
    """Allocates ``n`` float32 values it keeps until the call ends, and a second block of ``n`` it frees early."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        kept = torch.ones(self.n)
        freed = torch.ones(self.n)
        del freed
        return x + kept[:1]


def test_allocator_peaks_counts_the_bytes_live_inside_the_watched_calls():
    n = 1 << 20  # 4 MiB per tensor
    inner, outer = Scratch(n), Scratch(4 * n)

    def call():
        big = torch.ones(3 * n)  # 12 MiB outside any watched call, live throughout
        inner(torch.zeros(1))
        outer(torch.zeros(1))  # not watched
        return big

    found = allocator_peaks(call, [inner])
    # inside `inner`: 4 MiB kept + 4 MiB freed later, both live at once -> 8 MiB above the 12 MiB before it
    assert abs(found["attn_mb"] - 8.0) < 0.01
    # the whole call peaks inside `outer`: 12 MiB + 2 x 16 MiB
    assert abs(found["peak_mb"] - 44.0) < 0.01
    assert allocator_peaks(call, [])["attn_mb"] == 0


def test_fit_exponent_recovers_power_laws():
    ns = [1024, 2048, 4096, 8192]
    assert abs(fit_exponent(ns, [3.0 * n for n in ns]) - 1.0) < 1e-9
    assert abs(fit_exponent(ns, [0.5 * n * n for n in ns]) - 2.0) < 1e-9
    assert fit_exponent(ns[:1], [1.0]) is None
