"""Imports point down the layers of docs/architecture.md, never up or sideways.

``cli → dashboard → recipes → jobs → viz, interventions → probes → zoo → evals → hooks → core, kernels``.
Every ``import attnlab.X`` / ``from attnlab.X import`` and relative import anywhere in a module (function-level
imports included) is checked. There are no exceptions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: subpackage -> rank; a module may import only subpackages of strictly lower rank, or its own. zoo sits above
#: evals: the toy world is a benchmark generator built on POPE's construction rules, and no metric needs the zoo.
#: recipes sit above jobs: the dashboard demo runs the eval comparison job; no job needs a recipe.
RANK = {"cli": 9, "dashboard": 8, "recipes": 7, "jobs": 6, "viz": 5, "interventions": 5, "probes": 4,
        "zoo": 3, "evals": 2, "hooks": 1, "core": 0, "kernels": 0}


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
    assert not crossings, f"imports that point up or sideways (see docs/architecture.md): {sorted(crossings)}"


def test_the_architecture_page_draws_these_layers():
    """docs/architecture.md's picture names every layer, top to bottom in the order of ``RANK``."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    picture = page.split("## Data flow and layers", 1)[1].split("```")[1]
    first_words = [m.group(1) for m in re.finditer(r"^[\s│▼]*([a-z]+)\b", picture, re.M) if m.group(1) in RANK]
    ranks = [RANK[w] for w in first_words]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks), first_words
    assert set(RANK) <= set(re.findall(r"[a-z]+", picture)), sorted(set(RANK) - set(re.findall(r"[a-z]+", picture)))
