"""CHAIR vocabulary, caption parsing and metrics against hand-computed examples."""

import json

import pytest

from attnlab.evals.chair import (
    Synonyms,
    caption_length,
    caption_objects,
    chair_metrics,
    ground_truth_from_coco,
    load_captions,
)
from attnlab.evals.chair_vocab import singularize


@pytest.fixture(scope="module")
def coco():
    return Synonyms.coco()


def _canon(caption, synonyms):
    return [m.canonical for m in caption_objects(caption, synonyms)]


def test_coco_vocabulary_loads_all_classes(coco):
    assert len(coco.classes) == 80
    assert coco.classes[0] == "person" and coco.classes[-1] == "toothbrush"
    assert coco.canonical_of("motor bike") == "motorcycle"  # written with a leading double space in the file
    assert coco.canonical_of("iPhone") == "cell phone"
    assert coco.canonical_of("Dining Table") == "dining table"
    with pytest.raises(ValueError, match="'spaceship' is not in the synonym list; add it"):
        coco.canonical_of("spaceship")


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Two dogs and a puppy.", ["dog", "dog"]),
        ("three knives, two buses and some wine glasses", ["knife", "bus", "wine glass"]),
        ("Men and women with their children.", ["person", "person", "person"]),
        ("people on skis", ["person", "skis"]),
        ("a hot dog on a dining table", ["hot dog", "dining table"]),
        ("a teddy bear", ["teddy bear"]),
        ("a baby elephant and a baby", ["elephant", "person"]),
        ("a toilet seat", ["toilet"]),
        ("a seat next to the toilet", ["toilet"]),
        ("a seat", ["chair"]),
        ("a passenger train on train tracks", ["train"]),
        ("a stove top oven", ["oven"]),
        ("a man wearing a bow tie and glasses", ["person", "tie"]),
        ("the dog's bowl", ["dog", "bowl"]),
        ("A cat. A CAT! cats", ["cat", "cat", "cat"]),
        ("an empty street", []),
    ],
)
def test_caption_objects(coco, caption, expected):
    assert _canon(caption, coco) == expected


def test_singularize_only_accepts_vocabulary_words():
    vocab = {"knife", "bus", "glass", "skis", "person", "tie", "mouse"}
    assert singularize("knives", vocab) == "knife"
    assert singularize("buses", vocab) == "bus"
    assert singularize("glasses", vocab) == "glass"
    assert singularize("skis", vocab) == "skis"
    assert singularize("ties", vocab) == "tie"
    assert singularize("mice", vocab) == "mouse"
    assert singularize("was", vocab) == "was"


def test_chair_metrics_hand_computed(coco):
    captions = {
        1: "A man riding a horse next to a dog.",
        2: "Two cats sitting on a couch with a cat toy.",
        3: "A clock.",
    }
    truth = {1: {"person", "horse"}, 2: {"cat", "couch", "remote"}, 3: {"clock"}}
    m = chair_metrics(captions, truth, coco)
    # mentions: [person, horse, dog], [cat, couch, cat], [clock] -> 7, one hallucinated (dog)
    assert (m.n_mentions, m.n_hallucinated, m.n_captions) == (7, 1, 3)
    assert m.chair_i == pytest.approx(1 / 7)
    assert m.chair_s == pytest.approx(1 / 3)
    assert m.recall == pytest.approx(5 / 6)  # 2/2 + 2/3 + 1/1 ground-truth classes recalled
    assert m.mean_length == pytest.approx((9 + 10 + 2) / 3)
    first = m.details[0]
    assert first.mentioned == ("person", "horse", "dog") and first.hallucinated == ("dog",)
    assert first.words == ("man", "horse", "dog")
    assert first.chair_i == pytest.approx(1 / 3)
    assert m.details[1].recalled == ("cat", "couch") and not m.details[1].has_hallucination


def test_chair_counts_duplicate_hallucinations(coco):
    m = chair_metrics({7: "A dog and another dog and a cat."}, {7: {"cat"}}, coco)
    assert m.details[0].hallucinated == ("dog", "dog")
    assert m.chair_i == pytest.approx(2 / 3)
    assert m.chair_s == 1.0


def test_chair_maps_ground_truth_synonyms(coco):
    m = chair_metrics({1: "A sofa."}, {1: {"couch"}}, coco)
    assert m.chair_i == 0.0 and m.recall == 1.0


def test_chair_metrics_missing_ground_truth(coco):
    with pytest.raises(ValueError, match="convert with int"):
        chair_metrics({"1": "a dog"}, {1: {"dog"}}, coco)
    with pytest.raises(ValueError, match="no ground truth"):
        chair_metrics({2: "a dog"}, {1: {"dog"}}, coco)


def test_caption_length_counts_words():
    assert caption_length("A dog , on a sofa .") == 5
    assert caption_length("") == 0


def test_ground_truth_from_coco(coco, tmp_path):
    instances = {
        "categories": [{"id": 1, "name": "dog"}, {"id": 67, "name": "dining table"}],
        "images": [{"id": 10}, {"id": 11}, {"id": 12}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1},
            {"id": 2, "image_id": 10, "category_id": 1},
            {"id": 3, "image_id": 11, "category_id": 67},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    assert ground_truth_from_coco(path, coco) == {10: {"dog"}, 11: {"dining table"}, 12: set()}
    captions = {"annotations": [{"image_id": 12, "caption": "A kitten on a desk."}]}
    assert ground_truth_from_coco(instances, coco, captions)[12] == {"cat", "dining table"}
    bad = dict(instances, categories=[{"id": 1, "name": "unicorn"}])
    with pytest.raises(ValueError, match="'unicorn' is not in the synonym list"):
        ground_truth_from_coco(bad, coco)
    with pytest.raises(ValueError, match="lack 'images'"):
        ground_truth_from_coco({"categories": [], "annotations": []}, coco)


def test_load_captions_formats(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 3, "caption": "a dog"}, {"image_id": "4", "caption": "a cat"}]))
    assert load_captions(results) == {3: "a dog", 4: "a cat"}
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"image_id": 3, "caption": "a dog"}\n\n{"image_id": 5, "caption": "a bus"}\n')
    assert load_captions(jsonl) == {3: "a dog", 5: "a bus"}
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"8": "a kite"}))
    assert load_captions(mapping) == {8: "a kite"}
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"image_id": 3, "caption": "a"}, {"image_id": 3, "caption": "b"}]))
    with pytest.raises(ValueError, match="two captions"):
        load_captions(dup)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image_id": 3, "caption": "a"}\n{"image_id": 4,\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_captions(broken)


def test_synonyms_from_text_rules_and_conflicts():
    syn = Synonyms.from_text("# toy\nred circle, circle,  red disc\n\nblue square, square, box\n")
    assert syn.classes == ("red circle", "blue square")
    assert _canon("Two red discs, a circle and three boxes.", syn) == ["red circle", "red circle", "blue square"]
    with pytest.raises(ValueError, match="line 2 gives 'circle' to 'ring'"):
        Synonyms.from_text("red circle, circle\nring, circle")
    with pytest.raises(ValueError, match="no classes"):
        Synonyms.from_text("\n# nothing\n")
