"""The four dataset forms of ``attnlab capture --dataset``, and bad input named with its fix."""

import json

import numpy as np
import pytest
from PIL import Image

from attnlab.core.datasets import load_dataset


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_text_file_one_prompt_a_line(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("The cat sat.\n\n  A dog ran.  \n")
    data = load_dataset(f)
    assert data.kind == "text" and [(i.index, i.id, i.text, i.image) for i in data.items] == [
        (0, "0", "The cat sat.", None), (1, "1", "A dog ran.", None)]


def test_jsonl_prompts_with_relative_images(tmp_path, images):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"text": "hi", "id": "x"}) + "\n" + json.dumps({"text": "look", "image": "a.png"}) + "\n")
    data = load_dataset(f, images=images)
    assert data.kind == "jsonl" and data.items[0].id == "x" and data.items[0].image is None
    assert data.items[1].image == str((images / "a.png").resolve()) and data.modalities() == (True, True)


def test_pope_file_and_image_folder(tmp_path, images):
    f = tmp_path / "pope.jsonl"
    f.write_text("".join(json.dumps({"question_id": q, "image": "b.png", "text": "Is there a cat?", "label": "no"}) + "\n"
                         for q in (7, 3)))
    data = load_dataset(f, images=images)
    assert data.kind == "pope" and [i.id for i in data.items] == ["7", "3"]
    folder = load_dataset(images, prompt="Describe.")
    assert folder.kind == "images" and [(i.id, i.text) for i in folder.items] == [("a.png", "Describe."), ("b.png", "Describe.")]


def test_bad_datasets_name_the_fix(tmp_path, images):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no inputs"):
        load_dataset(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_dataset(bad)
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(ValueError, match='line 1 has no non-empty "text"'):
        load_dataset(bad)
    bad.write_text('{"text": "x", "image": "missing.png"}\n')
    with pytest.raises(ValueError, match="do not exist, e.g. .*missing.png; give --image-dir"):
        load_dataset(bad, images=images)
