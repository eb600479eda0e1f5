"""Strip outputs, execution counts and run metadata from the study notebooks before committing them.

Usage::

    python scripts/strip_notebooks.py            # clean studies/*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1, listing them, if any notebook is not clean
    python scripts/strip_notebooks.py PATH ...   # other notebooks

The test suite (``tests/studies``) fails on a committed notebook with outputs, so stale results never land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

STUDIES = Path(__file__).resolve().parents[1] / "studies"
#: Cell metadata that records a run (nbclient's timings, Jupyter's collapsed/scrolled state of outputs).
RUN_METADATA = ("execution", "collapsed", "scrolled")


def strip(nb) -> bool:
    """Remove outputs, execution counts and run metadata from ``nb`` in place; return whether anything changed."""
    changed = False
    for cell in nb.cells:
        for key in RUN_METADATA:
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            cell.outputs = []
            changed = True
        if cell.get("execution_count") is not None:
            cell.execution_count = None
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: studies/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not clean")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(STUDIES.glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path in dirty:
        print(f"{'not clean' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
