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


TILE_GEOMETRIES = [  # (NQ, NK, causal, window, key spans per batch row or None, BLOCK_M, BLOCK_N)
    (70, 90, True, None, None, 16, 16),
    (70, 90, True, 20, None, 16, 32),
    (50, 20, True, 3, None, 16, 16),
    (40, 70, False, None, [(20, 70), (37, 60), (70, 0)], 16, 16),
    (64, 64, True, 17, [(5, 64), (33, 50)], 16, 16),
]


def tile_bounds() -> list[dict]:
    """The tile ranges ``_key_tiles`` / ``_query_tiles`` give each program, from a probe kernel."""
    from triton_probe import tile_probe  # imports the kernels module first, which picks the interpreter

    found = []
    for n_q, n_k, causal, window, spans, bm, bn in TILE_GEOMETRIES:
        n_b = len(spans) if spans else 1
        n_prog = max(-(-n_q // bm), -(-n_k // bn))
        # on the kernels' device: compiled Triton on CUDA cannot read CPU tensors (the GPU check found this)
        kspan = torch.tensor(spans or [(0, n_k)], dtype=torch.int32, device=DEVICE)
        keys = torch.full((n_b, n_prog, 2), -1, dtype=torch.int32, device=DEVICE)
        queries = torch.full((n_b, n_prog, 2), -1, dtype=torch.int32, device=DEVICE)
        tile_probe[(n_prog, n_b)](kspan, keys, queries, n_q, n_k, window or 0, n_prog, CAUSAL=causal,
                             HAS_KEYMASK=spans is not None, HAS_WINDOW=window is not None, BLOCK_M=bm, BLOCK_N=bn)
        found.append({"keys": keys.tolist(), "queries": queries.tolist()})
    return found


def padding_never_read() -> dict:
    """Triton on left-padded keys whose whole padded tiles hold NaN keys and values (reading them gives NaN)."""
    case = CASES_BY_NAME["left_pad_multi_tile"]
    q, k, v, kw = make_inputs(case)
    k, v = k.clone(), v.clone()
    for b, pad in enumerate((20, 37)):  # batch row b's padding; tiles of 16 that hold only padding
        k[b, :, :pad // 16 * 16], v[b, :, :pad // 16 * 16] = float("nan"), float("nan")
    from attnlab.kernels.triton_attention import triton_attention

    out, st = triton_attention(_to(q, DEVICE), _to(k, DEVICE), _to(v, DEVICE), layer_plan=kw.pop("plan"),
                               block_m=16, block_n=16, **_to(kw, DEVICE))
    return {"out": out.cpu(), "stats": _to(st.as_dict(), "cpu")}


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
            elif name == "tile_bounds":
                (out / "tile_bounds.json").write_text(json.dumps(tile_bounds()))
            elif name == "padding":
                torch.save(padding_never_read(), out / "padding.pt")
            else:
                torch.save(run_case(name), out / f"{name}.pt")
        except Exception:  # reported by the parent test of this case
            (out / f"{name}.err").write_text(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
