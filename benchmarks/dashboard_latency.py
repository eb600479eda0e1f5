"""Dashboard latency benchmark: the browser tests' measured timings against the quality bars.

Runs the two browser tests that time the dashboard in headless Chromium (the demo Runs, and a 400-token
MiniLM Run), each as a user would meet it: server started by ``attnlab dashboard``, clicks in the page.
They record ``artifacts/dashboard/timings.json`` and ``timings-400.json``; this script reads them and prints
each measured value beside its bar, with the ratio (measured / bar: below 1 meets it). The bars:

- a layer/head switch (click to redrawn heatmap), p95 under 300 ms, at demo size and at 400 tokens;
- opening the Runs page and the Attention page, and the first visit, under 3 s; the first figure after
  navigating (plotly.js fetched and parsed) under 6 s.

The CPU load during the run is printed beside them: on a shared machine the wall-clock numbers stretch
with it. The last printed line is one JSON object. Needs Chromium, chromedriver and selenium
(``scripts/browser-deps.sh``).

Usage::

    python benchmarks/dashboard_latency.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "dashboard"
TESTS = ("tests/dashboard/test_browser.py::test_every_page_in_a_browser",
         "tests/dashboard/test_browser.py::test_long_input_heatmap_is_readable_and_fast")

#: (timings file, key, bar, unit)
BARS = (("timings.json", "switch_p95_ms", 300.0, "ms"),
        ("timings-400.json", "switch_400_p95_ms", 300.0, "ms"),
        ("timings.json", "open_cold_s", 3.0, "s"),
        ("timings.json", "open_runs_s", 3.0, "s"),
        ("timings.json", "open_attention_s", 3.0, "s"),
        ("timings.json", "first_figure_cold_s", 6.0, "s"))


def judge(timings: dict[str, dict]) -> list[dict]:
    """Each bar's row ``{name, measured, bar, unit, ratio, met}`` from the loaded timings files.

    Args:
        timings: ``{file name: its JSON}`` as the browser tests wrote them.
    """
    rows = []
    for file, key, bar, unit in BARS:
        value = timings.get(file, {}).get(key)
        if value is None:
            rows.append({"name": key, "measured": None, "bar": bar, "unit": unit, "ratio": None, "met": False})
            continue
        rows.append({"name": key, "measured": round(float(value), 3), "bar": bar, "unit": unit,
                     "ratio": round(float(value) / bar, 3), "met": float(value) < bar})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-run", action="store_true", help="judge the timings already recorded; run no browser")
    args = parser.parse_args()
    if not args.no_run:
        for name in ("timings.json", "timings-400.json"):
            (ARTIFACTS / name).unlink(missing_ok=True)  # never judge an older run's numbers
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-s", *TESTS], cwd=ROOT)
        if done.returncode != 0:
            print(f"the browser tests failed (exit {done.returncode}); timings below are partial", file=sys.stderr)
    timings = {name: json.loads((ARTIFACTS / name).read_text()) for name in ("timings.json", "timings-400.json")
               if (ARTIFACTS / name).exists()}
    rows = judge(timings)
    load = max((t.get("cpu_contention", 1.0) for t in timings.values()), default=None)
    print(f"{'measure':24} {'measured':>10} {'bar':>8} {'ratio':>7}  verdict")
    for r in rows:
        shown = "missing" if r["measured"] is None else f"{r['measured']:.3g} {r['unit']}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['name']:24} {shown:>10} {r['bar']:>6g} {r['unit']:<2} {ratio:>5}  {'met' if r['met'] else 'MISSED'}")
    print(f"CPU load during the run: x{load:.1f} of the cores" if load else "no timings recorded")
    print(json.dumps({"bench": "dashboard", "rows": rows, "cpu_contention": load}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
