"""The toy world: determinism, COCO consistency, POPE split definitions, co-occurrence, errors."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from attnlab.evals.chair import Synonyms, chair_metrics, ground_truth_from_coco
from attnlab.evals.pope import load_pope_questions
from attnlab.zoo import world as W
from attnlab.zoo import world_files as WF

QUESTION = re.compile(r"^Is there an? (.+) in the image\?$")


@pytest.fixture(scope="module")
def small_world():
    return W.generate_world(300, seed=11)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return WF.write_world(tmp_path_factory.mktemp("w") / "world", 40, seed=5)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_world_is_deterministic(written, tmp_path):
    again = WF.write_world(tmp_path / "again", 40, seed=5)
    first, second = _tree_bytes(written), _tree_bytes(again)
    assert first == second
    assert {"instances.json", "captions.json", "world.json", "synonyms.txt", "pope_random.jsonl",
            "pope_popular.jsonl", "pope_adversarial.jsonl"} <= set(first)  # fmt: skip
    assert sum(name.startswith("images/") for name in first) == 40


def test_different_seeds_differ():
    a, b = W.generate_world(10, seed=1), W.generate_world(10, seed=2)
    assert [s.image.tobytes() for s in a.scenes] != [s.image.tobytes() for s in b.scenes]
    assert [s.names for s in a.scenes] != [s.names for s in b.scenes]


def test_image_depends_only_on_seed_and_index():
    whole = W.generate_world(8, seed=4)
    tail = W.generate_world(5, seed=4, start=3)
    assert [s.image.tobytes() for s in tail.scenes] == [s.image.tobytes() for s in whole.scenes[3:]]
    assert [s.image_id for s in tail.scenes] == [4, 5, 6, 7, 8]


def test_coco_instances_are_consistent(written):
    coco = json.loads((written / "instances.json").read_text())
    image_ids = [im["id"] for im in coco["images"]]
    cat_ids = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(cat_ids.values()) == list(W.TOY_CLASS_NAMES)
    assert len(set(image_ids)) == len(image_ids)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for im in coco["images"]:
        assert Image.open(written / "images" / im["file_name"]).size == (im["width"], im["height"]) == (64, 64)
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in cat_ids
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
        assert x // 16 == (x + w - 1) // 16 and y // 16 == (y + h - 1) // 16  # inside one grid cell


def test_boxes_and_areas_match_the_pixels(small_world):
    """Oracle: every class has its own colour, so its pixels give its box and area."""
    rgb = {c.name: c.rgb for c in W.TOY_CLASSES}
    for scene in small_world.scenes[:60]:
        pixels = np.asarray(scene.image)  # (H, W, 3)
        drawn = set()
        for obj in scene.objects:
            ys, xs = np.nonzero((pixels == rgb[obj.name]).all(axis=-1))
            assert obj.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert obj.area == len(xs)
            drawn.add(obj.name)
        for name in set(rgb) - drawn:
            assert not (pixels == rgb[name]).all(axis=-1).any()


def test_scene_objects_respect_config(small_world):
    counts = Counter(len(s.objects) for s in small_world.scenes)
    assert set(counts) == {1, 2, 3, 4}
    for s in small_world.scenes:
        assert len(set(s.names)) == len(s.names)
        cells = [o.cell for o in s.objects]
        assert cells == sorted(cells) and len(set(cells)) == len(cells)


def test_captions_name_exactly_the_objects(written):
    """Cross-check with CHAIR: captions hallucinate nothing and recall everything."""
    synonyms = Synonyms.from_file(written / "synonyms.txt")
    captions = {a["image_id"]: a["caption"] for a in json.loads((written / "captions.json").read_text())["annotations"]}
    truth = ground_truth_from_coco(written / "instances.json", synonyms)
    m = chair_metrics(captions, truth, synonyms)
    assert (m.chair_s, m.chair_i, m.recall) == (0.0, 0.0, 1.0)
    assert m.n_mentions == sum(len(v) for v in truth.values())


def test_synonyms_file_format():
    text = WF.synonyms_text()
    lines = text.splitlines()
    assert [line.split(", ")[0] for line in lines] == list(W.TOY_CLASS_NAMES)
    syn = Synonyms.from_text(text)
    for c in W.TOY_CLASSES:
        assert {syn.canonical_of(s) for s in c.synonyms} == {c.name}


def _pope(world, split):
    """(image_id, object, label) per question."""
    return [(q["image_id"], QUESTION.match(q["text"]).group(1), q["label"]) for q in world.pope[split]]


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_pope_common_structure(small_world, split):
    truth = small_world.ground_truth
    questions = _pope(small_world, split)
    assert [lab for _, _, lab in questions] == ["yes", "no"] * (len(questions) // 2)
    per_image = {}
    for image_id, name, label in questions:
        assert (name in truth[image_id]) == (label == "yes")
        per_image.setdefault(image_id, []).append(name)
    for scene in small_world.scenes:
        asked = per_image[scene.image_id]
        assert asked[::2] == list(scene.names[:3])  # the first three objects, in annotation order
        assert len(set(asked)) == len(asked)


def test_pope_popular_negatives_are_most_frequent_absent(small_world):
    freq = Counter(n for s in small_world.scenes for n in s.names)
    ranking = sorted(freq, key=lambda n: (-freq[n], n))
    questions = _pope(small_world, "popular")
    asked_so_far = {}
    for (image_id, positive, _), (_, negative, _) in zip(questions[::2], questions[1::2]):
        asked = asked_so_far.setdefault(image_id, set())
        asked.add(positive)
        excluded = small_world.ground_truth[image_id] | asked
        assert negative == next(n for n in ranking if n not in excluded)
        asked.add(negative)


def test_pope_adversarial_negatives_are_top_co_occurring_absent(small_world):
    co = Counter()
    for s in small_world.scenes:
        co.update((a, b) for a in s.names for b in s.names if a != b)
    questions = _pope(small_world, "adversarial")
    asked_so_far = {}
    n_partner_negatives = 0
    for (image_id, positive, _), (_, negative, _) in zip(questions[::2], questions[1::2]):
        asked = asked_so_far.setdefault(image_id, set())
        asked.add(positive)
        excluded = small_world.ground_truth[image_id] | asked
        candidates = [n for n in W.TOY_CLASS_NAMES if n not in excluded and co[(positive, n)] > 0]
        if candidates:
            best = max(co[(positive, n)] for n in candidates)
            assert co[(positive, negative)] == best
            assert negative == min(n for n in candidates if co[(positive, n)] == best)
        n_partner_negatives += (positive, negative) in {(a, b) for a, b, _ in W.DEFAULT_PAIRS}
        asked.add(negative)
    assert n_partner_negatives > 0  # anchors without their partner yield the partner as negative


def test_pope_random_negatives_spread_over_classes(small_world):
    negatives = Counter(name for _, name, label in _pope(small_world, "random") if label == "no")
    assert len(negatives) == len(W.TOY_CLASS_NAMES)


def test_pope_files_load(written):
    for split in ("random", "popular", "adversarial"):
        questions = load_pope_questions(written / f"pope_{split}.jsonl")
        assert [q.question_id for q in questions] == list(range(len(questions)))
        assert all(q.image.endswith(".png") for q in questions)


def test_co_occurrence_rates_near_configured():
    world = W.generate_world(3000, seed=21)
    for (anchor, partner), rate in WF.pair_rates(world).items():
        assert rate == pytest.approx(0.8, abs=0.05), (anchor, partner)
        n_partner = sum(partner in s.names for s in world.scenes)
        assert rate > 1.5 * n_partner / len(world.scenes)  # the anchor raises the partner's rate
    meta = WF.world_metadata(world)
    assert [(p["anchor"], p["partner"], p["p"]) for p in meta["pairs"]] == [tuple(p) for p in W.DEFAULT_PAIRS]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_pair_probability_extremes(p):
    config = W.WorldConfig(pairs=(("red circle", "blue square", p),))
    rate = WF.pair_rates(W.generate_world(200, seed=2, config=config))[("red circle", "blue square")]
    assert rate == p


def test_world_json(written):
    meta = json.loads((written / "world.json").read_text())
    assert meta["seed"] == 5 and meta["n_images"] == 40
    assert [c["name"] for c in meta["classes"]] == list(W.TOY_CLASS_NAMES)
    assert W.WorldConfig.from_dict(meta["config"]) == W.WorldConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ("red circle", "purple circle", "blue square", "star")}, r"classes: unknown class 'purple"),
        ({"grid": 1}, r"grid: 1x1 has 1 cells, fewer than max_objects=4; raise grid"),
        ({"grid": 5}, r"grid: 5 does not divide image_size=64"),
        ({"grid": 16}, r"grid: cells of 4 px are too small"),
        ({"min_objects": 0}, r"min_objects: need 1 <= min_objects"),
        ({"pairs": (("red circle", "gold coin", 0.8),)}, r"pairs: 'gold coin' is not in classes"),
        ({"pairs": (("red circle", "blue square", 1.5),)}, r"outside \[0, 1\]"),
        ({"pairs": (("red circle", "blue square", 0.5), ("blue square", "black bar", 0.5))}, r"two pairs"),
        ({"max_objects": 1}, r"max_objects: pairs need two objects.*pairs=\(\)"),
        ({"classes": ("red circle", "blue square"), "pairs": ()}, r"max_objects: 4 exceeds the 2 classes"),
    ],
)
def test_bad_config_names_parameter_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        W.WorldConfig(**kwargs)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_images: got 0; pass a positive integer"):
        W.generate_world(0, seed=1)
    with pytest.raises(ValueError, match="seed: got -1"):
        W.generate_world(2, seed=-1)
    with pytest.raises(ValueError, match=r"config: unknown keys \['colour'\]"):
        W.WorldConfig.from_dict({"colour": "red"})


def test_write_world_refuses_non_empty_dir_and_overwrites_when_told(tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    with pytest.raises(ValueError, match="out_dir: .* is not empty; .*overwrite=True"):
        WF.write_world(out, 3, seed=0)
    with pytest.raises(ValueError, match="out_dir .* is not an attnlab world"):  # a user's folder is never replaced
        WF.write_world(out, 3, seed=0, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]
    (out / "stale.txt").unlink()
    WF.write_world(out, 3, seed=0)
    (out / "stale.txt").write_text("x")  # now inside a toy world: replaced with it
    WF.write_world(out, 3, seed=1, overwrite=True)
    assert not (out / "stale.txt").exists() and json.loads((out / "world.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary directories left


def test_write_world_leaves_nothing_on_failure(tmp_path, monkeypatch):
    def boom(world, root):
        (root / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(WF, "_write_files", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        WF.write_world(tmp_path / "w", 3, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_split_ranges_partition_and_match_one_world():
    ranges = W.split_ranges(20)
    assert [(r.start, r.stop) for r in ranges.values()] == [(0, 16), (16, 18), (18, 20)]
    whole = W.generate_world(20, seed=9)
    calib = W.generate_world(len(ranges["calibration"]), seed=9, start=ranges["calibration"].start)
    assert [s.names for s in calib.scenes] == [s.names for s in whole.scenes[16:18]]
    with pytest.raises(ValueError, match="fractions"):
        W.split_ranges(20, (0.5, 0.5))
    with pytest.raises(ValueError, match="n_images: 3 images leave the test split empty"):
        W.split_ranges(3)


def test_split_seeds_are_distinct_and_stable():
    seeds = W.split_seeds(0)
    assert list(seeds) == ["train", "calibration", "test"]
    assert len(set(seeds.values())) == 3 and seeds == W.split_seeds(0) != W.split_seeds(1)
