"""The repository layout never shadows an installed distribution, whatever the working directory.

A folder with ``__init__.py`` (or a ``.py`` file) at the repository root, or in a folder whose scripts are run as
``python folder/script.py``, wins over an installed distribution of the same import name whenever that folder is on
``sys.path`` (``python -m pytest``, ``python -c``, a REPL, Jupyter or torchrun at the root). ``kernels/`` once
shadowed Hugging Face's ``kernels``, which transformers imports, and broke every model load.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folders whose scripts run as ``python folder/x.py`` (the folder itself lands on sys.path)
SCRIPT_FOLDERS = ("benchmarks", "scripts")


def _distribution_import_names() -> set[str]:
    return set(importlib.metadata.packages_distributions())


def _regular_modules(folder: Path) -> set[str]:
    """Names importable as regular modules or packages when ``folder`` is on sys.path."""
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in folder.glob("*/__init__.py")}
    return names


def _test_helper_modules() -> set[str]:
    """Helper modules in test folders, which pytest puts on sys.path (rootdir-relative import mode)."""
    return {p.stem for p in (ROOT / "tests").rglob("*.py") if not p.name.startswith(("test_", "conftest"))}


def test_no_repository_module_is_named_like_an_installed_distribution():
    installed = _distribution_import_names()
    assert {"transformers", "kernels", "torch"} <= installed  # the check sees real import names
    ours = {"<root>": _regular_modules(ROOT), "tests": _test_helper_modules()}
    ours |= {name: _regular_modules(ROOT / name) for name in SCRIPT_FOLDERS}
    clashes = {where: sorted(names & installed) for where, names in ours.items() if names & installed}
    assert not clashes, (f"these modules shadow installed distributions when their folder is on sys.path: {clashes}; "
                         "rename them, or drop the folder's __init__.py (a namespace portion never shadows)")


def _origins_from(cwd: Path, names: list[str]) -> dict[str, str]:
    code = ("import importlib.util, json, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    s = importlib.util.find_spec(n)\n"
            "    out[n] = str(s.origin if s.origin else list(s.submodule_search_locations))\n"
            "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_installed_distributions_win_over_the_repository_folders_at_the_root_and_in_script_folders():
    installed = _distribution_import_names()
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    same_names = sorted(folders & installed)
    assert "kernels" in same_names  # the folder the card fixes, beside Hugging Face's distribution
    for cwd in (ROOT, *(ROOT / f for f in SCRIPT_FOLDERS)):
        origins = _origins_from(cwd, same_names)
        inside = {n: o for n, o in origins.items() if str(ROOT) in o and ".venv" not in o}
        assert not inside, f"run from {cwd}, these resolve into the repository: {inside}"


def test_model_loading_works_with_the_repository_root_as_working_directory():
    code = "import transformers.modeling_utils, attnlab; print(attnlab.attention.__module__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "attnlab.kernels.api"


def test_a_jupyter_kernel_started_at_the_root_loads_models():
    nbformat = __import__("nbformat")
    from nbclient import NotebookClient

    cell = ("from attnlab.hooks import attach\nfrom attnlab.zoo import load\n"
            "model, tok, spec = load('minilm')\nprint(spec.n_layers, spec.n_heads)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = nb.cells[0].outputs
    assert [o.get("text", "").strip() for o in outputs if o.get("name") == "stdout"] == ["6 12"], outputs


def test_trainers_write_checkpoints_into_the_repository_not_the_link_tree():
    """Under the strict editable install ``__file__`` is a link in ``build/``; a checkpoint written beside the links
    would be lost on the next set-up and never committed."""
    from attnlab.zoo.registry import CHECKPOINTS

    assert CHECKPOINTS == ROOT / "zoo" / "checkpoints"
