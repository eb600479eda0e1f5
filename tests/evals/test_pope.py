"""POPE answer parser, loaders and metrics against hand-computed values."""

import json

import pytest

from attnlab.evals.pope import (
    PopeQuestion,
    evaluate_pope,
    load_pope_answers,
    load_pope_questions,
    parse_pope_answer,
    pope_metrics,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No, there is not.", "no"),
        ("Yes.", "yes"),
        ("There is no dog", "no"),
        ("no", "no"),
        ("No", "no"),
        ("I am not sure.", "no"),
        # POPE's match is case-sensitive on the words No / not / no, so these count as yes:
        ("NO", "yes"),
        ("Not sure", "yes"),
        ("Nope, nothing there.", "yes"),
        # only the first sentence counts; commas are removed before splitting
        ("Yes. No dog is missing.", "yes"),
        ("Yes, there is a cat,not a dog", "yes"),
        ("Yes, there is a cat, not a dog", "no"),
        ("", "yes"),
    ],
)
def test_parse_pope_answer_follows_pope_rule(text, expected):
    assert parse_pope_answer(text) == expected


def test_parse_pope_answer_rejects_non_string():
    with pytest.raises(TypeError, match="decoded answer"):
        parse_pope_answer(None)


def test_pope_metrics_hand_computed():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]
    preds = ["yes", "no", "yes", "yes", "no", "no", "yes", "yes"]
    m = pope_metrics(labels, preds)
    assert (m.tp, m.fn, m.fp, m.tn, m.n) == (3, 1, 2, 2, 8)
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m.yes_ratio == pytest.approx(5 / 8)


def test_pope_metrics_zero_division_is_zero():
    m = pope_metrics(["no", "no"], ["no", "no"])
    assert (m.accuracy, m.precision, m.recall, m.f1, m.yes_ratio) == (1.0, 0.0, 0.0, 0.0, 0.0)
    empty = pope_metrics([], [])
    assert (empty.n, empty.accuracy, empty.f1) == (0, 0.0, 0.0)


def test_pope_metrics_bad_input():
    with pytest.raises(ValueError, match="one prediction per question"):
        pope_metrics(["yes"], [])
    with pytest.raises(ValueError, match=r"predictions\[1\].*parse_pope_answer"):
        pope_metrics(["yes", "no"], ["yes", "Yes"])


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_pope_questions_reads_released_format(tmp_path):
    rows = [
        {"question_id": 0, "image": "a.jpg", "image_id": 5, "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "no"},
    ]
    path = _write_lines(tmp_path / "q.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1])])
    questions = load_pope_questions(path)
    assert questions == [
        PopeQuestion(0, "a.jpg", "Is there a dog in the image?", "yes", 5),
        PopeQuestion(1, "a.jpg", "Is there a cat in the image?", "no", None),
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question_id": 2, "image": "b.jpg", "text": "x"', r"line 2 is not valid JSON"),
        ('{"question_id": 2, "image": "b.jpg", "text": "x"}', r"line 2 lacks \['label'\]"),
        ('{"question_id": 2, "image": "b.jpg", "text": "x", "label": "maybe"}', r"line 2 has label 'maybe'"),
        ("[1, 2]", r"line 2 holds a list"),
    ],
)
def test_load_pope_questions_names_bad_line(tmp_path, bad_line, message):
    good = json.dumps({"question_id": 1, "image": "a.jpg", "text": "x", "label": "yes"})
    path = _write_lines(tmp_path / "q.jsonl", [good, bad_line])
    with pytest.raises(ValueError, match=message):
        load_pope_questions(path)


def test_evaluate_pope_parses_and_scores(tmp_path):
    questions = [PopeQuestion(0, "a", "q", "yes"), PopeQuestion(1, "a", "q", "no")]
    answers_path = _write_lines(
        tmp_path / "a.jsonl",
        [json.dumps({"question": "q", "answer": "Yes, there is."}), json.dumps({"question": "q", "answer": "Yes"})],
    )
    m = evaluate_pope(questions, load_pope_answers(answers_path))
    assert (m.tp, m.fp, m.tn, m.fn) == (1, 1, 0, 0)
    with pytest.raises(ValueError, match="answer every question"):
        evaluate_pope(questions, ["Yes"])
    with pytest.raises(ValueError, match=r"line 1 lacks 'text'"):
        load_pope_answers(answers_path, key="text")
