"""``attnlab zoo list|world|train``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import check_writable, emit_json, friendly

zoo_app = typer.Typer(help="The embedded models and the toy world.", no_args_is_help=True)


@zoo_app.command("list")
@friendly
def list_models(as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Every zoo model with its metrics and path."""
    from rich.console import Console
    from rich.table import Table

    from attnlab.zoo.registry import ZOO, card

    rows = [{"name": e.name, "description": e.description, **card(e.name)} for e in ZOO.values()]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="attnlab zoo")
    for col in ("name", "description", "metrics", "path"):
        table.add_column(col)
    for row in rows:
        metrics = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.get("metrics", {}).items())
        table.add_row(row["name"], row["description"], metrics or ("not trained yet" if "path" not in row else ""),
                      row.get("path", ""))
    Console().print(table)


@zoo_app.command("world")
@friendly
def world(out: Path = typer.Option(..., "--out", help="directory to create"),
          n_images: int = typer.Option(200, "--n-images", help="number of scenes"),
          seed: int = typer.Option(0, "--seed", help="random seed"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing toy world (never another folder)")):
    """Write a toy-world dataset: images, COCO instances, captions, POPE splits, CHAIR synonyms."""
    from attnlab.core.atomic import check_replaceable
    from attnlab.zoo.world_files import world_kind, write_world

    check_writable(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--out {out} is not empty; choose an empty directory, or pass --overwrite to replace a toy world")
    check_replaceable(out, "world", world_kind)
    path = write_world(out, n_images, seed, overwrite=overwrite)
    typer.echo(f"wrote {n_images} scenes to {path}")


@zoo_app.command("train")
@friendly
def train(name: str = typer.Argument(..., help="zoo model to retrain"),
          out: Path = typer.Option(None, "--out", help="checkpoint directory (default: the packaged one)"),
          seed: int = typer.Option(0, "--seed", help="random seed")):
    """Reproduce a zoo checkpoint (slow: minutes on a CPU)."""
    from attnlab.zoo.registry import CHECKPOINTS, trainer

    fn = trainer(name)
    metrics = fn(out or CHECKPOINTS / name, seed=seed, progress=True)
    emit_json(metrics)
