"""Child process for the Triton tests: ``python triton_worker.py OUT_DIR CASE...``.

An out-of-bounds load segfaults Triton's CPU interpreter and would take the whole pytest run with it,
so ``test_kernel_triton.py`` runs the kernels here and compares the results in the parent. For each
case it writes ``OUT_DIR/<case>.pt`` (out + stats) or ``OUT_DIR/<case>.err`` (a Python error); a crash
leaves neither, and the parent names the case that was running. ``meta`` and ``errors`` are special
entries: how the interpreter was chosen, and the messages of bad calls.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
from kernel_cases import CASES_BY_NAME, hand_example, make_inputs

from attnlab.kernels.api import attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {n: _to(t, device) for n, t in x.items()}
    return x


def run_case(name: str) -> dict:
    """The Triton output and statistics of a named case, on the CPU."""
    if name == "hand":
        out, st = hand_example("triton")
        return {"out": out, "stats": st.as_dict()}
    case = CASES_BY_NAME[name]
    q, k, v, kw = (_to(x, DEVICE) for x in make_inputs(case))
    if case.block is None:
        out, st = attention(q, k, v, impl="triton", **kw)
    else:
        from attnlab.kernels.triton_attention import triton_attention

        out, st = triton_attention(q, k, v, layer_plan=kw.pop("plan"), block_m=case.block, block_n=case.block, **kw)
    return {"out": out.cpu(), "stats": _to(st.as_dict(), "cpu")}


def meta() -> dict:
    """How the mode was chosen; the module must not leave TRITON_INTERPRET set for child processes."""
    before = os.environ.get("TRITON_INTERPRET")
    from attnlab.kernels.triton_kernels import INTERPRET

    return {"env_before": before, "env_after": os.environ.get("TRITON_INTERPRET"), "interpret": INTERPRET,
            "cuda": torch.cuda.is_available()}


def errors() -> dict:
    """Messages of calls the Triton path must refuse."""
    from attnlab.kernels.triton_attention import triton_attention

    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    kw = dict(causal=False, key_mask=None, attn_mask=None, scale=None, layer_plan=None, key_sets={},
              query_sets={}, stats=())
    calls = {
        "mixed_dtypes": lambda: attention(q, q.half(), q.half(), impl="triton"),
        "float64": lambda: attention(q.double(), q.double(), q.double(), impl="triton"),
        "block": lambda: triton_attention(q, q, q, block_m=8, **kw),
    }
    found = {}
    for name, call in calls.items():
        try:
            call()
            found[name] = "no error"
        except ValueError as e:
            found[name] = str(e)
    return found


def main(out_dir: str, names: list[str]) -> None:
    out = Path(out_dir)
    if "meta" in names:  # first, before anything imports triton
        (out / "meta.json").write_text(json.dumps(meta()))
    for name in names:
        if name == "meta":
            continue
        print(f"running {name}", file=sys.stderr, flush=True)
        try:
            if name == "errors":
                (out / "errors.json").write_text(json.dumps(errors()))
            else:
                torch.save(run_case(name), out / f"{name}.pt")
        except Exception:  # reported by the parent test of this case
            (out / f"{name}.err").write_text(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
