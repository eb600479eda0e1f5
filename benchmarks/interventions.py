"""What each hallucination mitigation costs per answer, measured side by side against the plain model.

Targets (issue: interventions with something to act on): after calibration, VAR and ACT at most 1.1x the baseline's
time per answer, VHR at most 2x (it needs a text-only pass per question to score its heads); the calibration and head
search cost is reported apart, once per model.

How it is measured: one process, torch on one intra-op thread. Every method answers the same POPE questions of the
model's test split the way the eval CLI does (:func:`attnlab.jobs.answering.answer_batch`: ``steering_for``, then
:func:`attnlab.evals.answer.generate_answers` with ``--batch-size`` questions per padded generation, by default the
CLI's :data:`~attnlab.jobs.EVAL_BATCH_SIZE`), after one untimed warm-up batch each; batch by batch the methods run in
a rotating order, so load changes hit every method alike. Time per answer is the batch's thread CPU time
(``time.thread_time``; on a shared 2-core machine wall time mostly measures the scheduler) over its size, with the
wall-clock ratio printed beside it; each (method, batch) runs ``--repeats`` times and the fastest run counts (single
runs of one batch spread by +-20% here, their minimum by about 3%). Ratios are medians over the batches of (method
time / baseline time on the same batch). ``--batch-size 1`` measures answering one question at a time.

The heap is held steady (:func:`steady_heap`): by default glibc hands freed memory back to the system and a
prefill faults it in again, 0 to 600 page faults per answer at random from run to run, which moved a batch's time by
up to 20% and a ratio by up to 15% whichever method ran (2026-12-05, toy-llava-deep: per-batch ratios 0.92-1.16 with
the default heap, 1.00-1.08 steady). Faults per answer are printed beside each method; ``--default-heap`` measures
with glibc's defaults.

A method that finds nothing to act on (VAR without sink dimensions, ACT without a calibrated head) runs the plain
model; ``var:dims`` times VAR made to act: with the sink dimensions ``--var-dims``, by default the two where VAR's
``phi`` peaks on the warm-up input, and the benchmark checks that it then finds visual sinks (it stops otherwise).

Usage: ``python benchmarks/interventions.py [--model toy-llava-deep] [--task pope|caption] [--batches 8] [--batch-size
32] [--repeats 5] [--max-new-tokens N] [--default-heap]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

TARGETS = {"var": 1.1, "var:dims": 1.1, "act": 1.1, "vhr": 2.0}


#: glibc's ``mallopt`` parameters (``malloc.h``) and the values :func:`steady_heap` sets: never trim the heap's top,
#: and serve blocks up to 32 MiB (glibc's largest) from the heap rather than from fresh mappings.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
STEADY_TRIM, STEADY_MMAP = 1 << 30, 32 << 20


def steady_heap() -> bool:
    """Ask glibc to keep the memory this process frees, for the rest of the process: no trimming of the heap's top, and
    blocks up to 32 MiB from the heap. Then a generation reuses the pages of the one before it instead of faulting them
    in afresh, which is noise common to every method. Returns ``False`` where there is no glibc ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, STEADY_TRIM)) and bool(mallopt(M_MMAP_THRESHOLD, STEADY_MMAP))


def _answer(loaded, method, batch: list, max_new_tokens: int) -> tuple[list[str], float, float, float]:
    """One padded generation of ``batch`` (``[(image, prompt), ...]``) under ``method``, through the eval's own
    :func:`attnlab.jobs.answering.answer_batch`: ``(answers, thread CPU seconds per answer, wall seconds per
    answer, page faults per answer)``. Thread CPU time counts the kernel's time on the thread's page faults: the
    fault count tells a run slowed by the allocator handing memory back and taking it again."""
    from attnlab.jobs.answering import answer_batch

    images, prompts = [image for image, _ in batch], [prompt for _, prompt in batch]
    f0, c0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, time.thread_time()
    answers, wall = answer_batch(loaded, method, images, prompts, max_new_tokens)
    cpu, faults = time.thread_time() - c0, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
    return answers, cpu / len(batch), wall, faults / len(batch)


def main() -> None:
    from attnlab.jobs import EVAL_BATCH_SIZE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy-llava-deep")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per method (after one warm-up each)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each (method, batch); the least disturbed (fastest) one counts")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="questions per padded generation (the eval CLI's --batch-size; 1: one at a time)")
    parser.add_argument("--task", choices=("pope", "caption"), default="pope",
                        help="POPE questions (short answers) or CHAIR's captions of the test images (long answers)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer length cap (default: 3 for POPE, 28 for captions, as docs/evals.md runs them)")
    parser.add_argument("--methods", nargs="+", default=["baseline", "var", "act", "vhr"])
    parser.add_argument("--var-dims", type=int, nargs="*", default=None,
                        help="also time VAR run with these sink dimensions (a model without massive activations gives "
                             "VAR none, and VAR then runs the plain model: this row is the cost of VAR acting); by "
                             "default the two where phi peaks on the warm-up input; give the flag alone to skip it")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's heap settings as they are (freed memory handed back and faulted in again)")
    args = parser.parse_args()
    if args.max_new_tokens is None:
        args.max_new_tokens = 28 if args.task == "caption" else 3
    torch.set_num_threads(1)
    args.heap = "default" if args.default_heap or not steady_heap() else "steady"  # what the run got, for its JSON
    print("heap:", "held steady" if args.heap == "steady" else
          "glibc's defaults" + ("" if args.default_heap else " (no glibc mallopt here)"), flush=True)

    from attnlab.zoo import load
    from attnlab.zoo.toy_llava import toy_dataset

    loaded = load(args.model)
    folder = Path(tempfile.mkdtemp(prefix="attnlab-bench-interventions-"))
    calibration = toy_dataset(loaded[2], folder, split="calibration")
    inputs = _inputs(loaded, toy_dataset(loaded[2], folder, split="test"), (args.batches + 1) * args.batch_size,
                     args.task)
    batches = [inputs[b:b + args.batch_size] for b in range(0, len(inputs), args.batch_size)]
    methods, setup = _build_methods(loaded, args, calibration, inputs[0])
    gc.collect()  # ACT's head search leaves garbage whose collection would land in the timed batches
    if "var:dims" in methods:
        acted, rule = acting_layers(loaded, methods["var:dims"], *inputs[0], args.max_new_tokens)
        print(f"var:dims: visual sinks at {acted} of VAR's {rule} layers on the warm-up input", flush=True)
        if not acted:
            raise SystemExit("var:dims found no visual sink, so it would time VAR doing nothing; give --var-dims")
    cpu, wall, faults = _time_answers(loaded, methods, batches, args.max_new_tokens, args.repeats)
    _report(args, cpu, wall, faults, setup)


def _inputs(loaded, test, n: int, task: str = "pope") -> list:
    """``(image, prompt)`` of the first ``n`` POPE random questions of the toy world's test split (``task="pope"``),
    or of its first ``n`` images with the caption prompt CHAIR scores (``task="caption"``)."""
    from PIL import Image

    from attnlab.evals.answer import format_prompt, prompt_templates
    from attnlab.evals.pope import load_pope_questions

    _, processor, spec = loaded
    if task == "caption":
        prompt = format_prompt(processor, prompt_templates(spec)["caption"])
        files = sorted(Path(test.images).iterdir())[:n]
        return [(Image.open(f).convert("RGB"), prompt) for f in files]
    template = prompt_templates(spec)["pope"]
    questions = load_pope_questions(test.pope["random"])[:n]
    return [(Image.open(Path(test.images) / q.image).convert("RGB"), format_prompt(processor, template, q.text))
            for q in questions]


def _build_methods(loaded, args, calibration, warm_up: tuple) -> tuple[dict, dict]:
    """``({name: method}, {name: set-up seconds})``, VAR with forced sink dimensions added as ``var:dims``."""
    from attnlab.interventions.methods import build_method

    methods, setup = {}, {}
    for name in args.methods:
        c0, w0 = time.thread_time(), time.perf_counter()
        methods[name] = build_method(name, loaded, calibration=calibration)
        setup[name] = {"cpu_s": time.thread_time() - c0, "wall_s": time.perf_counter() - w0}
        print(f"{name}: set-up (calibration, head search) {setup[name]['cpu_s']:.1f} s CPU", flush=True)
    if args.var_dims != []:
        from attnlab.interventions.var import var_method

        model, processor, spec = loaded
        dims = tuple(args.var_dims) if args.var_dims else _largest_phi_dims(loaded, warm_up)
        methods["var:dims"] = var_method(model, processor, spec, sink_dims=dims)
        setup["var:dims"] = {"cpu_s": 0.0, "wall_s": 0.0}
        print(f"var:dims: sink dimensions {list(dims)}", flush=True)
    return methods, setup


def _largest_phi_dims(loaded, warm_up: tuple, n: int = 2) -> tuple[int, ...]:
    """The ``n`` residual dimensions where VAR's ``phi`` (:func:`attnlab.probes.visual_sinks.sink_score`) peaks on the
    warm-up input over every layer: the dimensions that make VAR find sinks on a model without massive activations."""
    from attnlab.core.capture import Capture
    from attnlab.hooks.inputs import capture_trace
    from attnlab.probes.visual_sinks import sink_score

    model, processor, spec = loaded
    image, prompt = warm_up
    trace = capture_trace(model, processor, spec, Capture(resid=True), [prompt], [image])
    hidden = torch.stack([trace.resid_in(layer)[0] for layer in range(spec.n_layers)]).float().numpy()  # (L, N, d)
    peak = [float(sink_score(hidden, (dim,)).max()) for dim in range(hidden.shape[-1])]
    return tuple(sorted(range(len(peak)), key=lambda dim: -peak[dim])[:n])


def acting_layers(loaded, method, image, prompt: str, max_new_tokens: int) -> tuple[int, int]:
    """``(layers where VAR found a visual sink, layers of its rule)`` on one answer: whether it acted."""
    model, processor, spec = loaded
    from attnlab.evals.answer import generate_answer

    steering = method.steering_for([image], [prompt])
    generate_answer(model, processor, spec, image, prompt, max_new_tokens=max_new_tokens, **steering)
    sets = steering.get("key_set_fn")
    caches = {} if sets is None else sets.cache
    return sum(bool(sinks.any()) for sinks, _ in caches.values()), len(method.plan.layers)


def _time_answers(loaded, methods: dict, batches: list, max_new_tokens: int, repeats: int
                  ) -> tuple[dict, dict, dict]:
    """Thread-CPU and wall seconds per answer of every method on each batch (the least of ``repeats`` runs) and the
    page faults per answer of its fastest run, the methods interleaved in a rotating order on the same batches after
    one warm-up batch each (the first)."""
    for method in methods.values():
        _answer(loaded, method, batches[0], max_new_tokens)
    cpu = {name: [] for name in methods}
    wall = {name: [] for name in methods}
    faults = {name: [] for name in methods}
    names = list(methods)
    for i, batch in enumerate(batches[1:]):
        runs = {name: [] for name in methods}
        for r in range(repeats):
            k = (i * repeats + r) % len(names)
            for name in names[k:] + names[:k]:
                runs[name].append(_answer(loaded, methods[name], batch, max_new_tokens)[1:])
        for name, times in runs.items():
            cpu[name].append(min(c for c, _, _ in times))
            wall[name].append(min(w for _, w, _ in times))
            faults[name].append(min(times)[2])  # the fastest run's
    return cpu, wall, faults


def _report(args, cpu: dict, wall: dict, faults: dict, setup: dict) -> None:
    """Print each method's median time per answer, its median ratio to the baseline on the same batch and its median
    page faults per answer, then JSON."""
    base_cpu, base_wall = cpu["baseline"], wall["baseline"]
    result = {"model": args.model, "task": args.task, "heap": args.heap,
              "batches": args.batches, "batch_size": args.batch_size,
              "repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
              "baseline_ms": 1000 * statistics.median(base_cpu), "methods": {}}
    print(f"\n{args.model}, {args.task}: {args.batches} batches of {args.batch_size}, {args.max_new_tokens} new tokens "
          "at most, median per answer (thread CPU), ratio to the baseline on the same batch")
    for name in cpu:
        ratio = statistics.median(c / b for c, b in zip(cpu[name], base_cpu))
        wall_ratio = statistics.median(c / b for c, b in zip(wall[name], base_wall))
        target = TARGETS.get(name)
        verdict = "" if target is None else ("meets" if ratio <= target else "MISSES") + f" <= {target}x"
        result["methods"][name] = {"ms": 1000 * statistics.median(cpu[name]), "ratio": ratio,
                                   "wall_ratio": wall_ratio, "target": target, "setup_cpu_s": setup[name]["cpu_s"],
                                   "setup_wall_s": setup[name]["wall_s"],
                                   "page_faults": statistics.median(faults[name])}
        print(f"  {name:9s} {1000 * statistics.median(cpu[name]):8.1f} ms  {ratio:5.2f}x (wall {wall_ratio:5.2f}x)  "
              f"{statistics.median(faults[name]):6.0f} faults  set-up {setup[name]['cpu_s']:6.1f} s  {verdict}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
