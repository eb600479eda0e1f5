"""benchmarks/interventions.py times VAR acting: the sink dimensions it picks make VAR find visual sinks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from attnlab.core.capture import Capture
from attnlab.evals.answer import format_prompt, prompt_templates
from attnlab.hooks.inputs import capture_trace
from attnlab.zoo import load
from attnlab.zoo.registry import card

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from interventions import _largest_phi_dims, acting_layers  # noqa: E402


@pytest.mark.skipif(not card("toy-llava-deep"), reason="toy-llava-deep checkpoint not present")
def test_var_dims_are_where_phi_peaks_and_make_var_act():
    from attnlab.interventions.var import var_method

    loaded = load("toy-llava-deep")
    model, processor, spec = loaded
    from attnlab.zoo.world import generate_world

    image = generate_world(1, seed=0, start=9000).scenes[0].image  # a toy-world scene, as the benchmark uses
    prompt = format_prompt(processor, prompt_templates(spec)["pope"], "Is there a red square in the image?")
    dims = _largest_phi_dims(loaded, (image, prompt))
    # oracle: phi = |x_d| / rms(x) by hand, its peak over layers and tokens for each dimension
    trace = capture_trace(model, processor, spec, Capture(resid=True), [prompt], [image])
    hidden = np.stack([trace.resid_in(layer)[0].float().numpy() for layer in range(spec.n_layers)])  # (L, N, d)
    phi = np.abs(hidden) / np.sqrt((hidden**2).mean(-1, keepdims=True) + 1e-6)
    assert set(dims) == set(np.argsort(-phi.max(axis=(0, 1)))[:2].tolist())
    method = var_method(model, processor, spec, sink_dims=dims)
    acted, rule = acting_layers(loaded, method, image, prompt, 2)
    assert rule == len(method.plan.layers) == 6 and acted > 0
    # planted negative beside it: no sink dimensions, no sinks anywhere
    assert acting_layers(loaded, var_method(model, processor, spec, sink_dims=()), image, prompt, 2)[0] == 0


def test_a_steady_heap_stops_the_page_faults_of_freeing_and_reallocating():
    """The benchmark holds glibc's heap steady (:func:`interventions.steady_heap`): blocks freed and allocated again,
    as a prefill's temporaries are, reuse the process's pages. The control runs the same cycles under glibc's
    starting thresholds (128 KiB, before it adapts them), which hand the blocks back and fault them in again. Each
    in a child process, so the test process keeps its own settings."""
    import subprocess
    import sys

    probe = (
        "import ctypes, resource, sys, torch\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "import interventions as b\n"
        "if sys.argv[1] == 'steady':\n"
        "    assert b.steady_heap()\n"
        "else:\n"
        "    mallopt = ctypes.CDLL(None).mallopt\n"
        "    assert mallopt(b.M_TRIM_THRESHOLD, 128 << 10) and mallopt(b.M_MMAP_THRESHOLD, 128 << 10)\n"
        "def cycle():\n"  # 64 MiB in 4 MiB blocks, then all freed
        "    xs = [torch.ones(1 << 20) for _ in range(16)]\n"
        "    del xs\n"
        "for _ in range(3): cycle()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5): cycle()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    root = Path(__file__).resolve().parents[2]
    faults = {mode: int(subprocess.run([sys.executable, "-c", probe, mode], cwd=root, capture_output=True, text=True,
                                       check=True).stdout.split()[-1])
              for mode in ("steady", "control")}
    assert faults["steady"] < 100, faults
    assert faults["control"] > 5 * 16 * 1024 * 0.9, faults  # every 4 MiB block (1024 pages) faulted in each cycle
