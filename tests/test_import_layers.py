"""Imports point down the layers of docs/architecture.md, never up or sideways.

``cli → dashboard → jobs, recipes → viz, interventions → probes → evals, zoo → hooks → core, kernels``.
Every ``import attnlab.X`` / ``from attnlab.X import`` and relative import anywhere in a module (function-level
imports included) is checked. ``KNOWN_CROSSINGS`` lists the crossings that existed when this test was written
(issue 18 removes them); it may only shrink: a new crossing fails, and so does a listed one that is gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: subpackage -> rank; a module may import only subpackages of strictly lower rank, or its own
RANK = {"cli": 7, "dashboard": 6, "jobs": 5, "recipes": 5, "viz": 4, "interventions": 4, "probes": 3,
        "evals": 2, "zoo": 2, "hooks": 1, "core": 0, "kernels": 0}

#: (importing module, imported subpackage) crossings present when the test was written; issue 18 removes them
KNOWN_CROSSINGS: set[tuple[str, str]] = {
    ("evals.suite", "zoo"),  # the eval suite reads the toy world's card
    ("hooks.dataset_capture", "evals"),  # the progress log belongs in jobs
    ("zoo.llava_data", "evals"),  # training questions use POPE's question wording (evals.pope_build)
    ("zoo.world", "evals"),  # writes POPE/CHAIR files with the evals' writers
}


def _imported_subpackages(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = path.relative_to(ROOT).with_suffix("").parts  # ("probes", "sinks") or ("dashboard", "pages", "heads")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                names = [".".join(["attnlab", *base, *(node.module.split(".") if node.module else [])])]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if len(bits) >= 2 and bits[0] == "attnlab" and bits[1] in RANK and bits[1] != package:
                found.add(bits[1])
    return found


def _crossings() -> set[tuple[str, str]]:
    out = set()
    for package, rank in RANK.items():
        folder = ROOT / package
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for target in _imported_subpackages(path, package):
                if RANK[target] >= rank:
                    out.add((module, target))
    return out


def test_the_check_sees_real_imports():
    found = _imported_subpackages(ROOT / "hooks" / "attach.py", "hooks")
    assert "kernels" in found and "core" in found


def test_imports_point_down():
    crossings = _crossings()
    new = sorted(crossings - KNOWN_CROSSINGS)
    gone = sorted(KNOWN_CROSSINGS - crossings)
    assert not new, f"imports that point up or sideways (see docs/architecture.md): {new}"
    assert not gone, f"these crossings are gone: remove them from KNOWN_CROSSINGS: {gone}"
