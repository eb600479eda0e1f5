"""A probe kernel that reports the tile ranges the attention kernels loop over (imported by triton_worker.py).

Its own module because the interpreter resolves a kernel's callees through module globals, and because
``attnlab.kernels.triton_kernels`` must be imported before triton (it picks the interpreter).
"""

from __future__ import annotations

from attnlab.kernels import triton_kernels as tk

triton, tl = tk.triton, tk.tl


@triton.jit
def tile_probe(KSPAN, KEYS, QUERIES, NQ, NK, WINDOW, N_PROG, CAUSAL: tl.constexpr, HAS_KEYMASK: tl.constexpr,
               HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (i, b) stores the key range of query tile i and the query range of key tile i, batch row b."""
    i, b = tl.program_id(0), tl.program_id(1)
    lo, hi = tk._key_tiles(i * BLOCK_M, b, KSPAN, NQ, NK, WINDOW, CAUSAL, HAS_KEYMASK, HAS_WINDOW, BLOCK_M, BLOCK_N)
    tl.store(KEYS + (b * N_PROG + i) * 2, lo)
    tl.store(KEYS + (b * N_PROG + i) * 2 + 1, hi)
    lo, hi = tk._query_tiles(i * BLOCK_N, b, KSPAN, NQ, NK, WINDOW, CAUSAL, HAS_KEYMASK, HAS_WINDOW, BLOCK_M,
                             BLOCK_N)
    tl.store(QUERIES + (b * N_PROG + i) * 2, lo)
    tl.store(QUERIES + (b * N_PROG + i) * 2 + 1, hi)
