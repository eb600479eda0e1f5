"""Compile the Triton kernels for NVIDIA targets without a GPU: ``python triton_compile_check.py``.

The CPU interpreter runs kernel bodies as Python, so it accepts code that compiled Triton rejects
(non-constexpr globals, loop-carried variables that change type, tiles under 16). Triton's NVIDIA
backend compiles to PTX and cubin without a driver, so this catches those errors on a CPU-only machine.
Prints one line per configuration and exits non-zero on the first failure (or shared memory over
sm_86's limit). ``python triton_compile_check.py fp32`` compiles only the configurations naming fp32.
"""

from __future__ import annotations

import sys

import torch

torch.cuda.is_available = lambda: True  # make triton_kernels decorate for compiled mode, not the interpreter

from triton import compile as triton_compile  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnlab.kernels import triton_kernels  # noqa: E402
from attnlab.kernels.triton_attention import _block_sizes  # noqa: E402

FLOATS = ("qk_scale", "cap2", "gate_min_mass", "gate_min_share")
SHARED_LIMIT = 99 * 1024  # bytes of shared memory per block on sm_86 / sm_89, the smallest current limit


def _signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    return {n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n in FLOATS else "i32")
            for n in fn.arg_names}


def _forward(dtype: str, reweight: bool, sets: bool, d: int) -> ASTSource:
    block = _block_sizes(d, 4 if dtype == "fp32" else 2, reweight, None, None)  # what the host would launch
    pointers = dict(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", OUT=f"*{dtype}", KEYMASK="*u8", KSPAN="*i32",
                    PART="*u8", SETS="*fp32", ATTN="*u8", BIAS=f"*{dtype}", QROW="*u8", FACTOR="*fp32",
                    HSCALE="*fp32", ROWS="*fp32", MASS="*fp32")
    consts = dict(CAUSAL=True, HAS_KEYMASK=True, HAS_ATTN=True, SOFTCAP=True, HAS_BIAS=True, HAS_WINDOW=True,
                  HAS_RW=reweight, HAS_QROW=reweight, HAS_SETS=sets,
                  GATE_W=0 if reweight else -1, GATE_P=1 if reweight else -1, NSP=16, BLOCK_M=block[0],
                  BLOCK_N=block[1], BLOCK_DK=d, BLOCK_DV=d, UPCAST=False)
    fn = triton_kernels.attention_fwd_kernel
    return ASTSource(fn, _signature(fn, pointers, consts), consts)


def _received(dtype: str) -> ASTSource:
    pointers = dict(Q=f"*{dtype}", K=f"*{dtype}", KEYMASK="*u8", KSPAN="*i32", PART="*u8", ATTN="*u8",
                    BIAS=f"*{dtype}", ROWS="*fp32", ROWMASK="*u8", RECV="*fp32")
    consts = dict(CAUSAL=True, HAS_KEYMASK=True, HAS_ATTN=True, SOFTCAP=True, HAS_BIAS=True, HAS_WINDOW=True,
                  HAS_RW=True, HAS_ROWMASK=True, BLOCK_M=64, BLOCK_N=64, BLOCK_DK=64, UPCAST=False)
    fn = triton_kernels.attention_received_kernel
    return ASTSource(fn, _signature(fn, pointers, consts), consts)


def main() -> int:
    assert not triton_kernels.INTERPRET
    jobs = [(f"fwd {dt} d={d} rw={rw}", _forward(dt, rw, rw, d))
            for dt in ("fp32", "fp16", "bf16") for d in (64, 128) for rw in (False, True)]
    jobs += [("received fp16", _received("fp16"))]
    for name, src in [(n, s) for n, s in jobs if all(word in n for word in sys.argv[1:])]:
        try:
            kernel = triton_compile(src, target=GPUTarget("cuda", 80, 32))
        except Exception as err:  # report which configuration broke, then fail
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
            return 1
        if kernel.metadata.shared > SHARED_LIMIT:
            print(f"FAIL {name}: {kernel.metadata.shared} bytes of shared memory > {SHARED_LIMIT}", flush=True)
            return 1
        print(f"ok {name}: shared memory {kernel.metadata.shared} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
