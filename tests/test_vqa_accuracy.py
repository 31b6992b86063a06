"""VQA accuracy: expected numbers worked out by hand from the official code (GT-Vision-Lab/VQA vqaEval.py, a013f00)."""

import ast
import socket
import sys
from pathlib import Path

import evaluate
import pytest

from modeling_bcqlm.evaluation import vqa_accuracy
from modeling_bcqlm.evaluation.vqa_accuracy import exact_match_score, normalize_answer, vqa_score


def _no_network(*args, **kwargs):
    raise OSError("network access in an offline test")


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    """The metric as `evaluate.load` gives it from the file: no network, every cache in a temporary folder."""
    modules_cache = tmp_path_factory.mktemp("hf_modules")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", modules_cache)
        # evaluate imports its copy of the file as `evaluate_modules....`: make that package resolve to this cache.
        patch.syspath_prepend(str(modules_cache))
        patch.delitem(sys.modules, "evaluate_modules", raising=False)
        yield evaluate.load(str(Path(vqa_accuracy.__file__)), cache_dir=str(tmp_path_factory.mktemp("hf_metrics")))


def test_module_imports_only_stdlib_datasets_and_evaluate():
    tree = ast.parse(Path(vqa_accuracy.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"datasets", "evaluate"}


@pytest.mark.parametrize(
    "answer, normalized",
    [
        # normalize_answer is master's full pipeline, applied when a question's references differ.
        ("  yes\tsir\n", "yes sir"),  # '\t' and '\n' become spaces, then strip
        ("Two", "2"),  # lower case, then the number-word map
        ("One.", "1"),  # periodStrip first ("One"), then lower case and the map
        ("none of them", "0 of them"),  # "none" is in manualMap
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("a dog", "dog"),  # articles dropped
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("the a an", ""),  # nothing but articles: the empty answer
        ("a-b", "b"),  # '-' touches no space: a space, then "a" is an article
        ("dont", "don't"),  # contractions restored
        ("don't", "don't"),  # "'" is not in the master punct list
        ("youre", "you're"),
        ("Im", "im"),  # the key "Im" is capitalised: after lower() it never matches
        ("somebody'd", "somebodyd"),  # the table's own mapping, kept
        ("yes!", "yes"),  # no "! " or " !": '!' becomes a space, dropped by the split/join
        ("(yes)", "yes"),  # '(' and ')' become spaces
        ("yes ,no", "yes no"),  # " ," in the text: ',' is removed
        ("x:y 50%", "x:y 50%"),  # ':' and '%' are not in punct
        ("yes.", "yes"),  # '.' is not in punct; periodStrip removes a period not followed by a digit
        ("e.g.", "eg"),
        ("mr. smith", "mr smith"),
        (".5", ".5"),  # followed by a digit: kept
        ("t-shirt", "t shirt"),  # '-' becomes a space
        ("red, white", "red white"),  # ", " in the text: ',' is removed
        ("red,white", "red white"),  # ',' touches no space and no digit,digit: it becomes a space
        ("1,000", "1000"),  # commaStrip matches (digit,digit): ',' is removed
        ("12,5", "125"),
        ("t-shirt 1,000", "tshirt 1000"),  # commaStrip matching removes every punct mark, '-' included
        ("3.5", "3.5"),  # period followed by a digit: kept
        ("end.", "end"),
        ("3.", "3"),  # the `(?!<=\d)` typo never fires: a period after a digit goes too
        ("3.5.", "3.5"),
        ("." * 33, "."),  # `re.UNICODE` (32) lands in `count`: at most 32 periods go
        ("Two dogs.", "2 dogs"),
        # Python 2 semantics on unicode answers:
        ("3.\u0665", "3\u0665"),  # patterns compiled without flags: `\d` is [0-9], so '٥' does not keep the period
        ("\u0661,\u0662", "\u0661 \u0662"),  # and "١,٢" is no digit,digit: ',' becomes a space
        ("\u0130stanbul", "istanbul"),  # unicode.lower() maps 'İ' to 'i' (Python 3: 'i' + U+0307)
        ("\u039f\u0394\u039f\u03a3", "\u03bf\u03b4\u03bf\u03c3"),  # no final-sigma rule: 'Σ' -> 'σ', not 'ς'
        ("\u180eno\u180ebird", "no bird"),  # U+180E is whitespace in Python 2.7 (Unicode 5.2): stripped and split on
    ],
)
def test_normalize_answer_follows_the_official_rules(answer, normalized):
    assert normalize_answer(answer) == normalized


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        # References all identical (after tabs/newlines -> spaces and strip): master normalises neither side further,
        # so the prediction must equal them as they are; if it does, every leave-one-out subset has 9 matches -> 1.
        ("yes", ["yes"] * 10, 1.0),
        ("Yes", ["yes"] * 10, 0.0),  # not lower-cased
        ("yes.", ["yes"] * 10, 0.0),  # no periodStrip
        ("two", ["2"] * 10, 0.0),  # no number-word map
        ("a dog", ["dog"] * 10, 0.0),  # articles kept
        ("1,000", ["1,000"] * 10, 1.0),  # raw equality: "1,000" == "1,000"
        ("Yes", ["Yes"] * 10, 1.0),
        (" yes\n", ["yes"] * 10, 1.0),  # the prediction's whitespace is cleaned in every case
        ("\u180eyes", ["yes"] * 10, 1.0),  # with Python 2's whitespace
        ("yes", [" yes"] * 5 + ["yes\t"] * 5, 1.0),  # the references are cleaned before `len(set(...)) > 1`: one answer
        ("Yes", [" yes"] * 5 + ["yes\t"] * 5, 0.0),  # ... so nothing is lower-cased
        # References differ: the prediction and every reference go through processPunctuation + processDigitArticle.
        ("YES", ["Yes"] * 9 + ["yes"], 1.0),  # all ten become "yes": 9 matches in every subset -> 1
        ("2", ["two"] * 4 + ["3"] * 6, 1.0),  # "two" -> "2" in the references too: 4 matches -> 1
        ("yes", ["yes!"] * 3 + ["no"] * 7, 0.9),  # "yes!" -> "yes " -> split/join -> "yes": 3 matches -> 0.9
        ("the Dog.", ["A dog"] * 2 + ["dog"] + ["cat"] * 7, 0.9),  # "dog" on both sides: 3 matches -> 0.9
        ("1,000", ["1,000"] * 9 + ["1000"], 1.0),  # every "1,000" -> "1000": 10 matches -> 1
        ("Don't", ["dont"] * 2 + ["don't"] * 2 + ["no"] * 6, 1.0),  # "dont" -> "don't": 4 matches -> 1
        ("3.\u0665", ["3\u0665"] * 3 + ["x"] * 7, 0.9),  # `\d` is ASCII: "3.٥" -> "3٥", 3 matches -> 0.9
        ("\u0130", ["i"] * 2 + ["x"] * 8, 0.6),  # "İ" -> "i": 2 matches -> 0.6
    ],
)
def test_vqa_score_normalizes_both_sides_only_when_the_references_differ(prediction, references, expected):
    assert vqa_score(prediction, references) == pytest.approx(expected)


@pytest.mark.parametrize(
    "matching, expected",
    [
        # 10 annotators, `matching` of them said "2", the others "3" (the references differ, so "two" -> "2"); each
        # leave-one-out subset scores min(#matches among the other 9 / 3, 1), the question their mean.
        (4, 1.0),  # leaving out a match leaves 3 -> 1; a non-match leaves 4 -> 1
        (3, 0.9),  # 3 subsets leave 2 -> 2/3, 7 leave 3 -> 1: (3 * 2/3 + 7) / 10 = 0.9
        (2, 0.6),  # 2 subsets leave 1 -> 1/3, 8 leave 2 -> 2/3: (2/3 + 16/3) / 10 = 0.6
        (1, 0.3),  # 1 subset leaves 0 -> 0, 9 leave 1 -> 1/3: 3 / 10 = 0.3
        (0, 0.0),  # ten "3": identical, compared raw: "two" != "3"
        (10, 0.0),  # ten "2": identical, compared raw: "two" != "2", however many annotators agree
    ],
)
def test_vqa_score_leave_one_out(matching, expected):
    references = ["2"] * matching + ["3"] * (10 - matching)
    assert vqa_score("two", references) == pytest.approx(expected)


def test_vqa_score_with_fewer_references():
    # ["dog", "dog", "cat"]: leaving out a "dog" leaves 1 match -> 1/3 (twice), leaving out "cat" leaves 2 -> 2/3.
    assert vqa_score("Dog", ["dog", "dog", "cat"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert vqa_score("dog", ["dog", "dog"]) == 1 / 3  # identical: each subset has 1 match -> 1/3
    # A single reference has no leave-one-out subsets (master would score 0): the exact match of the normalised answers.
    assert vqa_score("dog", ["dog"]) == 1.0
    assert vqa_score("A dog.", ["Dog"]) == 1.0  # both sides normalised: "dog" == "dog"
    assert vqa_score("cat", ["dog"]) == 0.0


def test_exact_match_against_the_most_common_normalized_reference():
    references = ["2"] * 3 + ["3"] * 4 + ["4"] * 3  # most common: "3"
    assert exact_match_score("three", references) == 1.0
    assert exact_match_score("two", references) == 0.0
    assert exact_match_score("red", ["red", "blue"]) == 1.0  # a tie goes to the first seen
    assert exact_match_score("blue", ["red", "blue"]) == 0.0
    assert exact_match_score("dog", ["A Dog"]) == 1.0  # references are normalised too (single-answer datasets, GQA)
    assert exact_match_score("Yes", ["yes"] * 10) == 1.0  # not master's metric: always normalised


def test_metric_loaded_with_evaluate(metric):
    assert type(metric).__name__ == "VQAAccuracy"
    assert type(metric).__module__.startswith("evaluate_modules.")  # evaluate's copy, not the package module
    result = metric.compute(
        predictions=["Two.", "Yes", "three"],
        references=[["2"] * 2 + ["3"] * 8, ["yes"] * 10, ["3"] * 4 + ["4"] * 6],
        question_types=["how many", "is the", "how many"],
    )
    # Question 1: references differ, "Two." -> "2", 2 matches -> 0.6; most common "3" -> exact match 0.
    # Question 2: the 10 references are identical, so "Yes" is compared as it is: no match -> 0; exact match 1.
    # Question 3: "three" -> "3", 4 matches -> 1.0; most common "4" -> exact match 0.
    # Master's per-question-type accuracy is the mean of its questions' accuracies.
    assert result["accuracy"] == pytest.approx((0.6 + 0.0 + 1.0) / 3)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["per_type"] == {
        "how many": {"accuracy": pytest.approx(0.8), "exact_match": 0.0, "count": 2},
        "is the": {"accuracy": 0.0, "exact_match": 1.0, "count": 1},
    }
    assert metric.compute(predictions=["Two."], references=[["2"] * 2 + ["3"] * 8]).keys() == {
        "accuracy",
        "exact_match",
    }


def test_metric_sums_left_to_right(metric):
    # Questions scoring 0.3, 0.3, 0.3 and 0.9 (1, 1, 1 and 3 matches among 10). Master takes float(sum(accQA)) in
    # Python 2, left to right: 1.7999999999999998; Python 3.12's compensated sum gives 1.8 and a mean of 0.45.
    references = [["yes"] + ["no"] * 9] * 3 + [["yes"] * 3 + ["no"] * 7]
    result = metric.compute(predictions=["yes"] * 4, references=references)
    assert result["accuracy"] == (((0.3 + 0.3) + 0.3) + 0.9) / 4


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"predictions": ["yes", "no"], "references": [["yes"]]}, "Mismatch in the number of predictions"),
        ({"predictions": ["yes"], "references": [[]]}, "Question 0: The references are empty"),
        ({"predictions": [1], "references": [["1"]]}, "don't match the expected format"),
        ({"predictions": [], "references": []}, "No predictions to score"),
        (
            {"predictions": ["yes"], "references": [["yes"]], "question_types": ["is", "what"]},
            "`question_types` must be a list of strings, one per prediction",
        ),
    ],
)
def test_metric_errors(metric, inputs, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(**inputs)


@pytest.mark.parametrize(
    "prediction, references, message",
    [
        (1, ["1"], "The prediction must be a string"),
        ("yes", [], "The references are empty"),
        ("yes", "yes", "wrap it in a list"),
        ("yes", ["yes", None], "The references must all be strings"),
    ],
)
def test_plain_function_errors(prediction, references, message):
    with pytest.raises(ValueError, match=message):
        vqa_score(prediction, references)
    with pytest.raises(ValueError, match=message):
        exact_match_score(prediction, references)


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(ValueError, match="An answer must be a string"):
        normalize_answer(None)
