"""The study notebooks: each one runs top to bottom in a fresh kernel, and the committed copies carry no outputs.

Every notebook ends with an assert cell that checks its finding, so executing it is the test. The kernel is this
interpreter: a kernelspec written to a temporary directory points at ``sys.executable``, so a notebook can never
run in some other environment's ``python3`` kernel. Torch gets one thread (the zoo's models are too small to gain
from more, and CI shares two cores). Executed copies go to ``tests/artifacts/studies/`` (gitignored) for
inspection, never back into ``studies/``; ``python scripts/strip_notebooks.py`` cleans the committed ones.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.full  # whole-program tier: scripts/test.sh and CI run it (pytest --full)

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"
ARTIFACTS = ROOT / "tests" / "artifacts" / "studies"
NOTEBOOKS = sorted(STUDIES.glob("[0-9][0-9]_*.ipynb"))
KERNEL = "attnlab-studies"
#: Seconds one cell may take before the run fails (the slowest cell takes ~30 s on a busy two-core machine).
CELL_TIMEOUT = 300
#: The CDN URL plotly's "notebook_connected" renderer loads plotly.js from; offline figures must not use it.
PLOTLY_CDN = re.compile(r"cdn\.plot\.ly/plotly")


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """A kernelspec manager that knows one kernel: this interpreter running ipykernel."""
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL).mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "attnlab studies (test)", "language": "python"}
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.fixture
def kernel_env(monkeypatch):
    """Environment the kernel inherits: offline Hugging Face, one thread for torch and BLAS, no progress bars."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("OMP_NUM_THREADS", "1"),
                        ("MKL_NUM_THREADS", "1"), ("PYDEVD_DISABLE_FILE_VALIDATION", "1"), ("TQDM_DISABLE", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error")):
        monkeypatch.setenv(name, value)


def execute(nb, kernel_specs: KernelSpecManager, cwd: Path):
    """Run every cell of ``nb`` in place in a fresh kernel; raises ``CellExecutionError`` on the first failure."""
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    assert km.kernel_spec.argv[0] == sys.executable
    try:
        NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(cwd)}}).execute()
    finally:  # nbclient leaves a kernel it did not create running
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return nb


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def html_outputs(nb) -> list[str]:
    return [out["data"]["text/html"] for out in outputs(nb) if "text/html" in out.get("data", {})]


def test_there_are_eight_numbered_studies():
    """00 is the getting-started tour; 01-07 each reproduce one finding."""
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(0, 8)], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    """No outputs and no execution counts in the repository (run ``python scripts/strip_notebooks.py``)."""
    raw = json.loads(path.read_text())
    assert all("id" in cell for cell in raw["cells"]), f"{path.name}: a cell has no id (nbformat 4.5 requires one)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None or "execution" in cell.metadata)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run `python scripts/strip_notebooks.py`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_study_opens_with_its_question_and_closes_with_a_check(path):
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "**Question.**" in cells[0].source
    assert any(c.cell_type == "markdown" and c.source.startswith("## Finding") for c in cells)
    assert cells[-1].cell_type == "code" and re.search(r"^\s*assert ", cells[-1].source, re.M), "no closing assert cell"
    assert cells[-2].cell_type == "markdown", "the finding is stated in words right before the assert cell"


def test_kernel_runs_this_interpreter(kernel_specs, kernel_env, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys, attnlab.zoo\nprint(sys.executable)")]
    execute(nb, kernel_specs, tmp_path)
    assert outputs(nb)[0]["text"].strip() == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_study_runs_and_its_finding_holds(path, kernel_specs, kernel_env, tmp_path):
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        execute(nb, kernel_specs, tmp_path)
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / path.name)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    errors = [out for out in outputs(nb) if out.get("output_type") == "error"]
    assert not errors, errors
    html = html_outputs(nb)
    assert any("plotly" in h and "Plotly.newPlot" in h for h in html), f"{path.name} shows no plotly figure"
    # plotly.js is embedded once (the "notebook" renderer), so the figures render with no network access.
    assert sum(len(h) > 1_000_000 and "window.PlotlyConfig" in h for h in html) == 1, "plotly.js is not embedded"
    assert not any(PLOTLY_CDN.search(h) for h in html), "a figure loads plotly.js from the CDN"
    assert not any(re.search(r"<script[^>]+src=[\"']https?://[^\"']*plot\.ly", h) for h in html)
