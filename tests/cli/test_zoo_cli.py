"""``attnlab zoo list|world``: listing and writing a toy world, bad input exits 2."""

import json

from typer.testing import CliRunner

from attnlab.cli.main import app

runner = CliRunner()


def test_zoo_list_json_names_every_model():
    res = runner.invoke(app, ["zoo", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"minilm", "toy-gpt", "toy-vit", "toy-vit-reg", "toy-llava"} <= set(rows)
    assert rows["minilm"]["path"].endswith("model")


def test_zoo_world_writes_dataset_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "world"
    res = runner.invoke(app, ["zoo", "world", "--out", str(out), "--n-images", "6", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "images").glob("*.png"))) == 6
    instances = json.loads((out / "instances.json").read_text())
    assert len(instances["images"]) == 6 and len(instances["categories"]) == 12
    res = runner.invoke(app, ["zoo", "world", "--out", str(out), "--n-images", "6"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ")


def test_zoo_world_rejects_zero_images(tmp_path):
    res = runner.invoke(app, ["zoo", "world", "--out", str(tmp_path / "w"), "--n-images", "0"])
    assert res.exit_code == 2 and "n_images" in res.stderr


def test_zoo_train_unknown_model():
    res = runner.invoke(app, ["zoo", "train", "nope"])
    assert res.exit_code == 2 and "Unknown zoo model" in res.stderr
    res = runner.invoke(app, ["zoo", "train", "minilm"])
    assert res.exit_code == 2 and "cannot be retrained" in res.stderr
