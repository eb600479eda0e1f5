"""Readable summaries of Runs for the terminal and ``--json``."""

from __future__ import annotations

from attnlab.core.runs import Run


def run_summary(run: Run) -> dict:
    """JSON-ready facts about a Run: model, layers, heads, tokens per item, what was captured and which probes that
    allows (:func:`attnlab.probes.registry.runnable`)."""
    from attnlab.probes.registry import runnable

    m = run.manifest
    traces = {}
    for name, header in m["traces"].items():
        meta = header["meta"]
        traces[name] = {
            "family": meta["family"], "n_layers": meta["n_layers"], "n_heads": meta["n_heads"],
            "d_head": meta["d_head"], "causal": meta["causal"], "captured": meta["captured"],
            "probes": runnable(meta["captured"], cross=header.get("key_tokens") is not None),
            "layers_captured": header["layers"],
            "tokens_per_item": [len([t for t, s in zip(toks, _kinds(segs, len(toks))) if s != "pad"])
                                for toks, segs in zip(header["tokens"], header["segments"])],
            "tokens": header["tokens"],
            "segments": [[f"{s['kind']}[{s['start']}:{s['end']}]" + (f" grid {s['grid'][0]}x{s['grid'][1]}" if s.get("grid") else "")
                          for s in segs] for segs in header["segments"]],
        }
    return {"run": str(run.path), "model": m["model"], "inputs": m.get("inputs", {}), "timings": m.get("timings", {}),
            "plan": (m.get("plan") or {}).get("name"), "traces": traces, "results": m.get("results", [])}


def _kinds(segs: list[dict], n: int) -> list[str]:
    kinds = ["text"] * n
    for s in segs:
        for i in range(s["start"], s["end"]):
            kinds[i] = s["kind"]
    return kinds


def print_summary(summary: dict, sink_rows: list[dict] | None = None) -> None:
    """Pretty-print a :func:`run_summary` with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    model = summary["model"]
    console.print(f"[bold]Run[/bold] {summary['run']}  model [cyan]{model.get('name')}[/cyan] ({model.get('family')})")
    if summary["timings"]:
        console.print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["timings"].items()))
    for name, tr in summary["traces"].items():
        table = Table(title=f"trace '{name}': {tr['n_layers']} layers x {tr['n_heads']} heads, "
                            f"{'causal' if tr['causal'] else 'bidirectional'}, captured {', '.join(tr['captured']) or 'nothing'}")
        table.add_column("item")
        table.add_column("tokens")
        table.add_column("segments")
        table.add_column("text")
        for i, (n, segs, toks) in enumerate(zip(tr["tokens_per_item"], tr["segments"], tr["tokens"])):
            shown = " ".join(toks[:24]) + (" ..." if len(toks) > 24 else "")
            table.add_row(str(i), str(n), "; ".join(segs), shown)
        console.print(table)
        console.print(f"probes this trace can run: {', '.join(tr['probes']) or 'none'} (`attnlab probe NAME RUN`)")
    if sink_rows:
        table = Table(title="where attention goes (mean over heads and real query tokens)")
        for col in sink_rows[0]:
            table.add_column(col)
        for row in sink_rows:
            table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()])
        console.print(table)
