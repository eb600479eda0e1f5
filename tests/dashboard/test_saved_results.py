"""A user's own Runs fill the dashboard's VHD, circuit and patching views once the CLI saves the results (--save).

The Runs are captured with ``attnlab capture`` into the served demo folder, as a user would, and the tables the
views draw are compared with what the commands stored.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app as cli
from attnlab.core.runs import Run

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPT = "When Mary and John went to the store , Anna gave a drink to"


def page(name: str):
    return sys.modules[f"attnlab.dashboard.pages.{name}"]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def gpt_run(demo_root):
    """toy-gpt captured by the CLI, then its circuit graph and IOI patching saved into it under the user's names."""
    out = demo_root / "mine-gpt"
    invoke("capture", "--model", "toy-gpt", "--text", CLEAN, "--capture", "pattern,qk,head_out,resid", "--out", str(out))
    assert not Run.open(out).manifest.get("results")  # nothing until the user saves
    invoke("probe", "circuits", str(out), "--save", "my-edges")
    invoke("patch", "--model", "toy-gpt", "--clean", CLEAN, "--corrupt", CORRUPT, "--target", "Mary",
           "--run", str(out), "--save", "my-ioi")
    return out


def test_saved_tables_carry_their_kind(gpt_run):
    run = Run.open(gpt_run)
    assert run.manifest["result_kinds"] == {"my-edges": "circuits", "my-ioi": "patching"}
    assert run.results_of("circuits") == ["my-edges"] and run.results_of("patching") == ["my-ioi"]


def test_user_run_shows_its_saved_circuits_and_patching(ctx, gpt_run):
    run_id = f"0:{gpt_run.name}"
    run = Run.open(gpt_run)
    circuits = page("circuits")
    assert circuits.availability(run_id) == ({}, {})  # shown: the Run holds a circuits table
    edges = run.result("my-edges")
    assert len(edges)  # toy-gpt's induction and IOI heads read earlier heads
    *_, weakest = circuits.strength_range(run_id, None)
    figure, readout, note = circuits.show_graph(run_id, weakest)
    assert str(len(edges)) in str(readout)
    patching, style = circuits.show_patching(run_id, 0)
    assert style == {}
    saved = run.result("my-ioi").pivot(index="layer", columns="head", values="effect").to_numpy()
    np.testing.assert_allclose(np.asarray(patching.data[0].z, dtype=float), saved)
    stats = {o["value"] for o in page("heads").stat_options(run_id, "main", None)[0]}
    assert "patching" in stats


def test_patch_refuses_to_save_into_a_run_of_another_model(demo_root, gpt_run):
    result = CliRunner().invoke(cli, ["patch", "--model", "toy-gpt", "--clean", CLEAN, "--corrupt", CORRUPT,
                                      "--target", "Mary", "--run", str(demo_root / "minilm"), "--save", "x"])
    assert result.exit_code == 2 and "--run" in result.output and "layers" in result.output
    assert "x" not in Run.open(demo_root / "minilm").manifest.get("results", [])
    lone = CliRunner().invoke(cli, ["patch", "--model", "toy-gpt", "--clean", CLEAN, "--corrupt", CORRUPT,
                                    "--target", "Mary", "--save", "x"])
    assert lone.exit_code == 2 and "--run RUN" in lone.output


def test_user_run_shows_its_saved_vhd(ctx, demo_root):
    """VHD needs the LVLM captured with and without the image; the table is saved into the Run with the image."""
    model = Run.open(demo_root / "toy-llava").manifest["model"]["path"]
    image = next((demo_root / "images").glob("*.png"))
    with_image, text_only = demo_root / "mine-llava", demo_root / "mine-llava-text"
    invoke("capture", "--model", model, "--text", "<image> Is there a red circle in the image?", "--image", str(image),
           "--capture", "pattern,head_out", "--out", str(with_image))
    invoke("capture", "--model", model, "--text", "Is there a red circle in the image?", "--capture", "pattern,head_out",
           "--out", str(text_only))
    printed = json.loads(invoke("probe", "vhd", str(with_image), str(text_only), "--json", "--save", "mine").output)
    run = Run.open(with_image)
    assert run.results_of("vhd") == ["mine"]
    saved = run.result("mine")
    assert np.allclose(saved.sort_values(["layer", "head"])["vhd"], np.asarray(printed["vhd"])[:, 0].reshape(-1))
    run_id = f"0:{with_image.name}"
    stats = {o["value"] for o in page("heads").stat_options(run_id, "main", None)[0]}
    assert "vhd" in stats
    from attnlab.dashboard.app import current_data
    from attnlab.dashboard.summaries import head_statistic

    values, layers = head_statistic(current_data(), current_data().run(run_id), "main", "vhd", 0)
    grid = saved.pivot_table(index="layer", columns="head", values="vhd").loc[layers].to_numpy()
    np.testing.assert_allclose(values, grid)
    assert isinstance(saved, pd.DataFrame)
