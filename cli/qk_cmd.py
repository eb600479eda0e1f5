"""``attnlab probe qk-embed RUN --layer L --head H|all --method umap [--json] [--out FILE.html]``.

Joint query-key embedding (AttentionViz) of one head, or of every head of the chosen layers, of a Run
captured with ``--capture qk`` (add ``pattern`` for other probes). ``register(probe_app)`` adds the command
to the ``probe`` sub-app; :func:`qk_embed_command` is the plain function behind it.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .common import emit_json, friendly, parse_layers, save_name

#: Above this many points, ``--json`` prints a summary instead of every point.
JSON_POINT_LIMIT = 20_000


def _heads(spec: str) -> list[int] | None:
    if spec.strip() == "all":
        return None
    try:
        return [int(h) for h in spec.split(",")]
    except ValueError:
        raise ValueError(f"Bad --head value {spec!r}; give a head index, a comma list or 'all'") from None


def _summary(points, extra: dict) -> dict:
    counts = points.groupby("kind").size().to_dict()
    return {**extra, "n_points": int(len(points)), "n_queries": int(counts.get("query", 0)),
            "n_inputs": int(points["input"].nunique()), "points_omitted": True,
            "note": f"more than {JSON_POINT_LIMIT} points; pass --out FILE.html for the figure"}


def qk_embed_command(run: Path, layer: str, head: str, method: str, as_json: bool = False, out: Path | None = None,
                     n_components: int = 2, seed: int = 0, save: Path | None = None) -> dict:
    """Embed one head (or all heads) of a Run's ``main`` Trace; print a summary or JSON, optionally write HTML,
    and with ``save`` store the heads' :class:`~attnlab.probes.qk_heads.QKHeadsEmbedding` in the Run (for one head
    that embedding is fitted a second time, in the all-heads layout that tables store).

    Returns:
        What was printed with ``--json`` (the points with coordinates and metadata, or a summary when huge).
    """
    from attnlab.core.runs import Run
    from attnlab.probes.qk_embedding import QKEmbedding
    from attnlab.probes.qk_heads import embed_all_heads

    name = save_name(save)
    if name is not None and n_components != 2:
        raise ValueError("--save stores the 2-D all-heads embedding; drop --components 3 or --save")
    opened = Run.open(run)
    layers, heads = parse_layers(str(layer)), _heads(str(head))
    estimator = QKEmbedding(method=method, n_components=n_components, random_state=seed)
    estimator._check_params()
    started = time.perf_counter()
    single = layers is not None and len(layers) == 1 and heads is not None and len(heads) == 1
    if single:
        fitted = estimator.fit(opened, layer=layers[0], head=heads[0])
        data, points = fitted.to_dict(points=False), fitted.points_
        if name is not None:
            embed_all_heads(opened, QKEmbedding(method=method, random_state=seed), layers=layers,
                            heads=heads).save(opened, name)
    else:
        if n_components != 2:
            raise ValueError("The all-heads matrix is 2-D; drop --components or choose one --head")
        result = embed_all_heads(opened, estimator, layers=layers, heads=heads)
        data = {"probe": result.probe, "method": result.method, "backend": result.backend,
                "layers": list(result.layers), "heads": list(result.heads), "scales": result.scales.tolist(),
                "correlations": result.correlations.tolist(),
                "layout_correlations": result.layout_correlations.tolist(),
                "nearest_key": result.nearest_key.tolist(), "nearest_key_joint": result.nearest_key_joint.tolist(),
                "nearest_key_chance": result.nearest_key_chance}
        points = result.to_frame()
        if name is not None:
            result.save(opened, name)
    data["seconds"] = round(time.perf_counter() - started, 3)
    if out is not None:
        _write_figure(fitted if single else result, out, single, n_components)
        data["figure"] = str(out)
    if len(points) > JSON_POINT_LIMIT:
        data = _summary(points, data)
    else:
        from attnlab.probes.qk_embedding import frame_records

        data["points"] = frame_records(points)
    if as_json:
        emit_json(data)
    else:
        _print_text(data, points)
    return data


def _write_figure(source, out: Path, single: bool, n_components: int) -> None:
    from attnlab.viz.qk import qk_heads_matrix, qk_scatter, qk_scatter_3d

    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must name an .html file (got {out})")
    if single:
        fig = qk_scatter_3d(source) if n_components == 3 else qk_scatter(source)
    else:
        fig = qk_heads_matrix(source, max_points=5000)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out), include_plotlyjs=True)


def _print_text(data: dict, points) -> None:
    where = (f"layer {data['layer']} head {data['head']}" if "layer" in data
             else f"layers {data['layers']} x heads {data['heads']}")
    typer.echo(f"qk-embed {where}: {len(points)} points ({data['method']}, {data['backend']}) in {data['seconds']} s")
    if "scale" in data:
        typer.echo(f"  c = {data['scale']:.4g}, logit scale = {data['logit_scale']:.4g}, "
                   f"Spearman(distance, logit) = {data['correlation']:.3f} in the joint space, "
                   f"{data['layout_correlation']:.3f} in the picture; nearest key = most attended key for "
                   f"{data['nearest_key']:.0%} of queries (chance {data['nearest_key_chance']:.0%})")
    elif "layout_correlations" in data:
        typer.echo("  Spearman(distance in the picture, logit) per head (negative = the picture can be read):")
        for layer, row in zip(data["layers"], data["layout_correlations"]):
            typer.echo(f"    layer {layer}: " + " ".join(f"{rho:+.2f}" for rho in row))
    if "figure" in data:
        typer.echo(f"  wrote {data['figure']}")


def register(probe_app: typer.Typer) -> None:
    """Add ``qk-embed`` to the ``probe`` sub-app."""

    @probe_app.command("qk-embed")
    @friendly
    def qk_embed(
        run: Path = typer.Argument(..., help="Run directory captured with --capture qk"),
        layer: str = typer.Option(..., "--layer", help="layer index, a list such as '0,2', or 'all'"),
        head: str = typer.Option(..., "--head", help="head index, a list such as '0,3', or 'all'"),
        method: str = typer.Option("umap", "--method", help="tsne | umap | pca"),
        as_json: bool = typer.Option(False, "--json", help="print JSON: points with coordinates (a summary when huge)"),
        out: Path = typer.Option(None, "--out", help="write the figure to this .html file"),
        components: int = typer.Option(2, "--components", help="2 or 3 (one head only)"),
        seed: int = typer.Option(0, "--seed", help="random_state of the embedding"),
        save: Path = typer.Option(None, "--save", help="also store the heads' embedding in the Run under this name"),
    ):
        """Joint query-key embedding of attention heads (AttentionViz)."""
        qk_embed_command(run, layer, head, method, as_json, out, components, seed, save)
