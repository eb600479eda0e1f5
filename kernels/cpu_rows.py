"""The rows a reweighting changes, in one compiled pass per row on the CPU (``cpu_rows.c``).

A plan's :class:`~attnlab.kernels.plan.Reweight` needs each row's weights before it can change them, so on the
torch route (:mod:`attnlab.kernels.fused`) those rows are computed explicitly: scores, mask, softmax, the key-set
masses, the factors and the weighted values, about two dozen small torch ops per call. On a decoding row each op
costs 5-15 us, and together they cost about twice torch's fused kernel for the whole call. ``cpu_rows.c`` does the
same work in one loop nest per row.

The C source ships with the package and is compiled once per process, at first use, with the system's C compiler
(``$CC``, else ``cc``; about 0.3 s) into a temporary folder: nothing is cached on disk between processes, so a
library built for one machine's CPU never runs on another's. Where no compiler works, or ``ATTNLAB_CPU_KERNEL=0``
is set, :func:`reweighted_rows` returns ``None`` and the caller keeps its torch ops (one warning names the reason).

It takes decoding rows (one per head) and prefill rows alike: one row goes through q . k by a transpose-and-add
tree, several rows share each head's keys transposed once. Calls of more than :data:`MAX_WORK` multiply-adds, where
torch's threads help (the kernel has one), keep the torch ops.
Its oracles are the float64 textbook and the torch ops it replaces (``tests/kernels/test_kernel_cpu_rows.py``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch

from .plan import Reweight

#: Multiply-adds (``B H r K (d + dv)``) above which a call stays on torch's threaded ops: about 1.6 ms of the kernel.
#: One thread is the kernel's; torch's ops on two threads catch up near there (32 items x 8 heads x 90 keys, d = 16,
#: 2026-12-05: 9 rows 0.68 against 0.89 ms, 32 rows 2.4 against 2.5 ms; on one thread 0.71 against 1.2-1.6 ms and
#: 2.3 against 6.4 ms).
MAX_WORK = 1 << 24
#: Compiler flags, best first. ``-ffast-math`` is given to the compile step only (vectorised ``expf`` from glibc's
#: libmvec); the link step omits it, so loading the library does not switch the process to flush-to-zero.
_BUILDS = (
    (["-O3", "-march=native", "-fopenmp-simd", "-ffast-math"], ["-lm", "-lmvec"]),
    (["-O3", "-fno-math-errno"], ["-lm"]),
)
_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
_ARGTYPES = [_P, _L, _L, _L, _P, _L, _L, _L, _P, _L, _L, _L,  # q, k, v with their batch, head and row strides
             _P, _L, _L, _L, _L, _L, _L, _L, _L, _L, _F,  # out with its strides, B, H, R, K, D, DV, scale
             _P, _L, _L, _L, _P, _L, _L, _L,  # allowed and its strides, terms and theirs
             _P, _L, _L, _P, _L, _L, _P, _L, _L, _P, _L, _L,  # source, target, within, part sets with strides
             _P, _L, ctypes.POINTER(_F), _F, _F]  # query rows, factors, gate thresholds


def enabled() -> bool:
    """Whether the compiled kernel may be used: ``ATTNLAB_CPU_KERNEL`` unset or not ``0``, and the library builds."""
    return _entry() is not None


def _entry():
    """The compiled entry point, or ``None`` when ``ATTNLAB_CPU_KERNEL=0`` or the library does not build."""
    return None if os.environ.get("ATTNLAB_CPU_KERNEL", "1") == "0" else _library()


@functools.lru_cache(maxsize=1)
def _library():
    """The compiled kernel's entry point, built on first use (memoised for the process), or ``None`` with a
    warning when no flag set compiles."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        warnings.warn(f"attnlab: no C compiler ({compiler!r}) found; reweighted attention rows use torch ops "
                      "(slower on the CPU). Install gcc or clang, or set CC", RuntimeWarning, stacklevel=3)
        return None
    source = resources.files("attnlab.kernels").joinpath("cpu_rows.c").read_bytes()
    folder = Path(tempfile.mkdtemp(prefix="attnlab-cpu-rows-"))
    try:
        (folder / "cpu_rows.c").write_bytes(source)
        errors = []
        for compile_flags, link_flags in _BUILDS:
            obj, lib = folder / "cpu_rows.o", folder / "cpu_rows.so"
            steps = ([compiler, *compile_flags, "-fPIC", "-c", str(folder / "cpu_rows.c"), "-o", str(obj)],
                     [compiler, "-shared", str(obj), "-o", str(lib), *link_flags])
            try:
                for step in steps:
                    subprocess.run(step, check=True, capture_output=True, text=True, timeout=120)
                entry = ctypes.CDLL(str(lib)).attnlab_reweighted_rows  # the mapping outlives the file
            except (subprocess.SubprocessError, OSError) as exc:
                errors.append(getattr(exc, "stderr", None) or str(exc))
                continue
            entry.argtypes, entry.restype = _ARGTYPES, ctypes.c_int
            return entry
        warnings.warn("attnlab: the CPU kernel for reweighted rows did not compile; using torch ops. "
                      f"{compiler} said: {errors[-1].strip()[:500]}", RuntimeWarning, stacklevel=3)
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _strided(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``mask`` broadcast to ``shape`` (a view: broadcast axes get stride 0), its last axis made contiguous."""
    out = mask.expand(shape)
    return out if out.stride(-1) == 1 else out.contiguous()


def _rows_in_place(t: torch.Tensor) -> bool:
    """Whether the kernel reads or writes ``t`` ``[B, H, N, d]`` where it lies: each row's ``d`` elements contiguous,
    the batch, head and row axes through any strides (a head slice of a wider tensor, a ``[B, N, H, d]`` projection
    seen as ``[B, H, N, d]``)."""
    return t.stride(-1) == 1 or t.shape[-1] <= 1


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, H, N, d]`` as the kernel reads it: kept as it is where :func:`_rows_in_place`, else a contiguous
    copy."""
    return t if _rows_in_place(t) else t.contiguous()


def reweighted_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                    rw: Reweight, key_sets: dict[str, torch.Tensor], q_rows: torch.Tensor | None,
                    out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Rows ``q`` ``[B, H, r, d]`` attending to ``k`` ``[B, H, K, d]``, values ``v`` ``[B, H, K, dv]``, their weights
    reweighted by ``rw`` -> ``[B, H, r, dv]`` float32, written into ``out`` when given (a view of the caller's output,
    each row contiguous: no copy of the rows afterwards) and returned; ``None`` where the kernel does not apply (a tensor
    not a float32 CPU tensor, a gradient wanted, more than :data:`MAX_WORK` multiply-adds, an ``out`` whose rows are
    not contiguous, or no compiled kernel), ``out`` then untouched.

    Args:
        mask: ``[B|1, 1|H, 1|r, K]`` bool (may attend) or float terms added to the scores (``-inf`` clamped to
            -1e30 by the caller), or ``None``.
        scale: the scores' scale. rw: the reweighting, one factor per head of ``q``.
        key_sets: ``{name: [B, K] or [B, H, K] bool}`` holding the sets ``rw`` names.
        q_rows: ``[B, r]`` bool rows the reweighting may touch, or ``None`` for all.

    Rows with nothing to attend to give 0.
    """
    bsz, n_heads, n_rows, dim = q.shape
    n_keys, dv = k.shape[2], v.shape[3]
    terms_given = mask is not None and mask.is_floating_point()
    for t in (q, k, v, mask) if terms_given else (q, k, v):
        if t.dtype is not torch.float32 or t.requires_grad or not t.is_cpu:
            return None
    if out is not None and (out.dtype is not torch.float32 or out.requires_grad or not out.is_cpu
                            or not _rows_in_place(out) or out.shape != (bsz, n_heads, n_rows, dv)):
        return None
    entry = None if bsz * n_heads * n_rows * n_keys * (dim + dv) > MAX_WORK else _entry()
    if entry is None:
        return None
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    out = torch.empty(bsz, n_heads, n_rows, dv) if out is None else out
    allowed = terms = None
    if terms_given:
        terms = _strided(mask, (bsz, n_heads, n_rows, n_keys))
    elif mask is not None:
        allowed = _strided(mask.to(torch.bool), (bsz, n_heads, n_rows, n_keys))
    gate = rw.gate
    fitted: dict[str | None, tuple] = {None: (None, 0, 0)}  # a set named twice (VAR's target and gate part) once
    for name in (rw.source, rw.target) + ((None, None) if gate is None else (gate.within, gate.part)):
        if name not in fitted:
            fitted[name] = _key_set(key_sets[name])  # held until the call returns
    src, tgt = fitted[rw.source], fitted[rw.target]
    within, part = (fitted[None], fitted[None]) if gate is None else (fitted[gate.within], fitted[gate.part])
    rows = None if q_rows is None else q_rows.to(torch.bool).contiguous()
    status = entry(q.data_ptr(), *q.stride()[:3], k.data_ptr(), *k.stride()[:3], v.data_ptr(), *v.stride()[:3],
                   out.data_ptr(), *out.stride()[:3], bsz, n_heads, n_rows, n_keys, dim, dv, float(scale),
                   *_mask_argument(allowed), *_mask_argument(terms), *_set_argument(src), *_set_argument(tgt),
                   *_set_argument(within), *_set_argument(part),
                   None if rows is None else rows.data_ptr(), 0 if rows is None else rows.stride(0),
                   _factor_array(rw, n_heads),
                   0.0 if gate is None else float(gate.min_mass), 0.0 if gate is None else float(gate.min_share))
    if status:
        raise MemoryError(f"attnlab's CPU kernel could not allocate {n_keys} keys of scratch")
    return out


def _mask_argument(t: torch.Tensor | None) -> tuple:
    """A mask or terms tensor ``[B, H, r, K]`` as the kernel takes it: its address and batch, head and row strides."""
    return (None, 0, 0, 0) if t is None else (t.data_ptr(), *t.stride()[:3])


def _key_set(mask: torch.Tensor) -> tuple:
    """A key set ``[B, K]`` or ``[B, H, K]`` as the kernel reads it: ``(bool tensor with its last axis contiguous,
    batch stride, head stride)``, the head stride 0 for a per-item set."""
    m = mask if mask.dtype is torch.bool else mask.to(torch.bool)
    m = m if m.stride(-1) == 1 else m.contiguous()
    return m, m.stride(0), 0 if m.dim() == 2 else m.stride(1)


def _set_argument(held: tuple) -> tuple:
    """A :func:`_key_set` (or ``(None, 0, 0)``: no set) as the kernel's three arguments."""
    return (None if held[0] is None else held[0].data_ptr(), *held[1:])


@functools.lru_cache(maxsize=64)
def _factor_array(rw: Reweight, n_heads: int):
    """``rw``'s per-head factors as the kernel's ``float[H]`` (made once per (frozen) reweighting and head count,
    read-only in the kernel)."""
    return (ctypes.c_float * n_heads)(*rw.factors(n_heads))
