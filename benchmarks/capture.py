"""Capture overhead: time and peak memory of attnlab capture vs a plain forward, HF and TransformerLens.

For MiniLM (pretrained, shipped) and a GPT-2-shaped model (12 layers x 12 heads x 768, random weights saved
to a temporary directory) at 512 tokens, each mode runs in its own fresh subprocess so that the peak resident
memory it reports (``ru_maxrss`` after the timed forwards minus the resident size before them) belongs to that
mode alone. Time is the median of ``--repeats`` forwards after one warm-up.

Modes: ``plain`` (SDPA forward), ``stats`` (attnlab stats-only capture), ``pattern`` (attnlab full patterns),
``hf_attn`` (HF eager with ``output_attentions=True``), ``tl_cache`` (TransformerLens ``run_with_cache``).

Usage: ``python benchmarks/capture.py [--tokens 512] [--repeats 3]``. The last line is one JSON object with
every mode's time and memory as a ratio to ``plain``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

MODES = ("plain", "stats", "pattern", "hf_attn", "tl_cache")


def _child(model_name: str, path: str, mode: str, n_tokens: int, repeats: int) -> dict:
    import resource
    import statistics
    import time

    import torch

    from attnlab.core.capture import Capture
    from attnlab.hooks import attach

    torch.manual_seed(0)
    if mode == "tl_cache":
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(path, device="cpu")
    else:
        from transformers import AutoModel

        impl = "eager" if mode == "hf_attn" else "sdpa"
        model = AutoModel.from_pretrained(path, attn_implementation=impl).eval()
    vocab = 1000
    ids = torch.randint(5, vocab, (1, n_tokens))

    def forward():
        with torch.no_grad():
            if mode == "plain":
                return model(input_ids=ids)
            if mode == "hf_attn":
                return model(input_ids=ids, output_attentions=True)
            if mode == "tl_cache":
                return model.run_with_cache(ids)
            cap = Capture(stats=True) if mode == "stats" else Capture(pattern=True, budget_bytes=64 * 2**30)
            with attach(model, cap) as rec:
                model(input_ids=ids)
            return rec.trace()

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    before = rss_mb()
    forward()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = forward()
        times.append(time.perf_counter() - t0)
        del result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "mode": mode, "seconds": statistics.median(times), "peak_mb": peak - before}


def _gpt2_dir(root: str) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    path = os.path.join(root, "gpt2-shaped")
    GPT2LMHeadModel(GPT2Config(n_positions=1024)).save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PATH", "MODE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child, args.tokens, args.repeats)))
        return
    from attnlab.zoo.minilm import minilm_dir

    rows = []
    with tempfile.TemporaryDirectory() as root:
        models = {"minilm": str(minilm_dir()), "gpt2-shaped": _gpt2_dir(root)}
        for name, path in models.items():
            for mode in MODES:
                cmd = [sys.executable, __file__, "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                       "--child", name, path, mode]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    rows.append({"model": name, "mode": mode, "error": last[:200]})
                else:
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    ratios: dict = {"tokens": args.tokens}
    for name in ("minilm", "gpt2-shaped"):
        plain = next(r for r in rows if r["model"] == name and r["mode"] == "plain")
        for r in rows:
            if r["model"] != name or r["mode"] == "plain":
                continue
            key = f"{name}/{r['mode']}"
            if "error" in r:
                ratios[key] = {"error": r["error"]}
            else:
                ratios[key] = {"time_x": round(r["seconds"] / plain["seconds"], 2),
                               "mem_x": round(r["peak_mb"] / max(plain["peak_mb"], 1.0), 2)}
        ratios[f"{name}/plain"] = {"seconds": round(plain["seconds"], 4), "peak_mb": round(plain["peak_mb"], 1)}
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
