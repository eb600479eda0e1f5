"""POPE split construction on a hand-worked image set.

Image frequencies: cat 3, dog 2, tv 2, apple 1, bed 1, sofa 1.
Co-occurrence with cat: dog 2, sofa 1, tv 1; with tv: apple 1, bed 1, cat 1.
"""

import pytest

from attnlab.evals.pope_build import PopeImage, build_pope_questions, pope_question_text

IMAGES = [
    PopeImage("a.png", 1, ("cat", "dog", "sofa")),
    PopeImage("b.png", 2, ("cat", "dog", "cat")),
    PopeImage("c.png", 3, ("cat", "tv")),
    PopeImage("d.png", 4, ("apple", "tv", "bed")),
]


def _pairs(questions):
    """(image_id, object, label) triples, reading the object back from the question text."""
    out = []
    for q in questions:
        text = q["text"]
        name = text.removeprefix("Is there an ").removeprefix("Is there a ").removesuffix(" in the image?")
        out.append((q["image_id"], name, q["label"]))
    return out


def test_popular_negatives_are_most_frequent_absent_unasked():
    got = _pairs(build_pope_questions(IMAGES, "popular", seed=0))
    expected = [
        (1, "cat", "yes"), (1, "tv", "no"), (1, "dog", "yes"), (1, "apple", "no"), (1, "sofa", "yes"), (1, "bed", "no"),
        (2, "cat", "yes"), (2, "tv", "no"), (2, "dog", "yes"), (2, "apple", "no"),
        (3, "cat", "yes"), (3, "dog", "no"), (3, "tv", "yes"), (3, "apple", "no"),
        (4, "apple", "yes"), (4, "cat", "no"), (4, "tv", "yes"), (4, "dog", "no"), (4, "bed", "yes"), (4, "sofa", "no"),
    ]  # fmt: skip
    assert got == expected


def test_adversarial_negatives_follow_co_occurrence_then_fallback():
    got = _pairs(build_pope_questions(IMAGES, "adversarial", seed=0))
    by_image = {}
    for image_id, name, label in got:
        by_image.setdefault(image_id, []).append((name, label))
    a = by_image[1]
    assert a[:2] == [("cat", "yes"), ("tv", "no")]  # dog, sofa present; tv next by co-occurrence
    # dog co-occurs only with present classes, sofa too: random fallback over the unasked absent ones
    assert {a[3][0], a[5][0]} == {"apple", "bed"}
    b = by_image[2]
    assert b[:2] == [("cat", "yes"), ("sofa", "no")]  # dog present; sofa before tv (tie, by name)
    assert b[3][0] in {"apple", "bed", "tv"}  # dog's partners are present or asked: fallback
    assert by_image[3] == [("cat", "yes"), ("dog", "no"), ("tv", "yes"), ("apple", "no")]
    d = by_image[4]
    assert d[1][0] in {"cat", "dog", "sofa"}  # apple co-occurs only with present classes
    # tv's co-occurring classes by count then name: apple, bed (present), cat (unless already asked)
    if d[1][0] == "cat":
        assert d[3][0] in {"dog", "sofa"}
    else:
        assert d[3] == ("cat", "no")


def test_random_split_is_seeded_absent_and_balanced():
    first = build_pope_questions(IMAGES, "random", seed=3)
    assert first == build_pope_questions(IMAGES, "random", seed=3)
    present = {im.image_id: set(im.objects) for im in IMAGES}
    labels = [q["label"] for q in first]
    assert labels.count("yes") == labels.count("no")
    for image_id, name, label in _pairs(first):
        assert (name in present[image_id]) == (label == "yes")
    assert [q["question_id"] for q in first] == list(range(len(first)))


def test_n_positives_and_exhausted_categories():
    images = [PopeImage("x.png", 1, ("cat", "dog")), PopeImage("y.png", 2, ("cat",))]
    got = _pairs(build_pope_questions(images, "popular", seed=0, n_positives=1))
    # image 1 holds every category: its positive has no negative and is dropped to keep balance
    assert got == [(2, "cat", "yes"), (2, "dog", "no")]


def test_question_text_uses_an_before_vowel():
    assert pope_question_text("apple") == "Is there an apple in the image?"
    assert pope_question_text("orange diamond") == "Is there an orange diamond in the image?"
    assert pope_question_text("dog") == "Is there a dog in the image?"


def test_bad_split_and_count():
    with pytest.raises(ValueError, match="split must be one of"):
        build_pope_questions(IMAGES, "hard", seed=0)
    with pytest.raises(ValueError, match="n_positives"):
        build_pope_questions(IMAGES, "random", seed=0, n_positives=0)
