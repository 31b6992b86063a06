"""VQA accuracy: expected numbers worked out by hand from the official rules (GT-Vision-Lab/VQA vqaEval.py, master)."""

import ast
import socket
import sys
from pathlib import Path

import evaluate
import pytest

from modeling_bcqlm import vqa_accuracy
from modeling_bcqlm.vqa_accuracy import exact_match_score, normalize_answer, vqa_score


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
        ("  yes\tsir\n", "yes sir"),  # '\t' and '\n' become spaces, then strip
        ("Two", "2"),  # lower case, then the number-word map
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # the map stops at ten
        ("a dog", "dog"),  # articles dropped
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions restored
        ("don't", "don't"),  # "'" is not in the master punct list
        ("yes!", "yes"),  # no "! " or " !": '!' becomes a space, dropped by the split/join
        ("yes.", "yes"),  # '.' is not in punct; periodStrip removes a period not followed by a digit
        ("t-shirt", "t shirt"),  # '-' becomes a space
        ("red, white", "red white"),  # ", " in the text: ',' is removed
        ("red,white", "red white"),  # ',' touches no space and no digit,digit: it becomes a space
        ("1,000", "1000"),  # commaStrip matches (digit,digit): ',' is removed
        ("t-shirt 1,000", "tshirt 1000"),  # commaStrip matching removes every punct mark, '-' included
        ("3.5", "3.5"),  # period followed by a digit: kept
        ("end.", "end"),
        ("3.", "3"),  # the `(?!<=\d)` typo never fires: a period after a digit goes too
        ("3.5.", "3.5"),
        ("." * 33, "."),  # `re.UNICODE` (32) lands in `count`: at most 32 periods go
        ("Two dogs.", "2 dogs"),
    ],
)
def test_normalize_answer_follows_the_official_rules(answer, normalized):
    assert normalize_answer(answer) == normalized


@pytest.mark.parametrize(
    "matching, expected",
    [
        # 10 annotators, `matching` of them said "2"; each leave-one-out subset scores min(#matches among 9 / 3, 1).
        (4, 1.0),  # leaving out a match leaves 3 -> 1; a non-match leaves 4 -> 1
        (3, 0.9),  # 3 subsets leave 2 -> 2/3, 7 leave 3 -> 1: (3 * 2/3 + 7) / 10 = 0.9
        (2, 0.6),  # 2 subsets leave 1 -> 1/3, 8 leave 2 -> 2/3: (2/3 + 16/3) / 10 = 0.6
        (1, 0.3),  # 1 subset leaves 0 -> 0, 9 leave 1 -> 1/3: 3 / 10 = 0.3
        (0, 0.0),
    ],
)
def test_vqa_score_leave_one_out(matching, expected):
    references = ["2"] * matching + ["3"] * (10 - matching)
    assert vqa_score("two", references) == pytest.approx(expected)  # "two" -> "2"


def test_vqa_score_with_fewer_references():
    # ["dog", "dog", "cat"]: leaving out a "dog" leaves 1 match -> 1/3 (twice), leaving out "cat" leaves 2 -> 2/3.
    assert vqa_score("dog", ["dog", "dog", "cat"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    # A single reference has no leave-one-out subsets: the score is the exact match of the normalised answers.
    assert vqa_score("dog", ["dog"]) == 1.0
    assert vqa_score("A dog.", ["Dog"]) == 1.0  # both sides normalised: "dog" == "dog"
    assert vqa_score("cat", ["dog"]) == 0.0


def test_identical_references_are_not_normalized():
    # All 10 identical: the references stay "1,000" while the prediction becomes "1000": no match.
    assert vqa_score("1,000", ["1,000"] * 10) == 0.0
    # One differs: processPunctuation turns every "1,000" into "1000", so all 10 match; 9 in every subset -> 1.
    assert vqa_score("1,000", ["1,000"] * 9 + ["1000"]) == 1.0


def test_references_get_only_punctuation_processing():
    # References are never lower-cased: "Yes" x 9 stays, only the one "yes" matches the prediction "yes" -> 0.3.
    assert vqa_score("Yes", ["Yes"] * 9 + ["yes"]) == pytest.approx(0.3)
    # Number words in references are not mapped: "two" != "2" -> 0.
    assert vqa_score("two", ["two"] * 4 + ["3"] * 6) == 0.0
    # "yes." -> periodStrip -> "yes": 3 matches -> 0.9.
    assert vqa_score("yes", ["yes."] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # "yes!" -> '!' becomes a space -> "yes " (references are never split/stripped), while the prediction is "yes": 0.
    assert vqa_score("yes!", ["yes!"] * 3 + ["no"] * 7) == 0.0


def test_exact_match_against_the_most_common_normalized_reference():
    references = ["2"] * 3 + ["3"] * 4 + ["4"] * 3  # most common: "3"
    assert exact_match_score("three", references) == 1.0
    assert exact_match_score("two", references) == 0.0
    assert exact_match_score("red", ["red", "blue"]) == 1.0  # a tie goes to the first seen
    assert exact_match_score("blue", ["red", "blue"]) == 0.0
    assert exact_match_score("dog", ["A Dog"]) == 1.0  # references are normalised too (single-answer datasets, GQA)


def test_metric_loaded_with_evaluate(metric):
    assert type(metric).__name__ == "VQAAccuracy"
    assert type(metric).__module__.startswith("evaluate_modules.")  # evaluate's copy, not the package module
    result = metric.compute(
        predictions=["Two.", "Yes", "three"],
        references=[["2"] * 2 + ["3"] * 8, ["yes"] * 10, ["3"] * 4 + ["4"] * 6],
        question_types=["how many", "is the", "how many"],
    )
    # Question 1: "Two." -> "2", 2 matches -> 0.6; most common "3" -> exact match 0.
    # Question 2: "Yes" -> "yes", the 10 identical references "yes" all match -> 1.0; exact match 1.
    # Question 3: "three" -> "3", 4 matches -> 1.0; most common "4" -> exact match 0.
    assert result["accuracy"] == pytest.approx((0.6 + 1.0 + 1.0) / 3)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["per_type"] == {
        "how many": {"accuracy": pytest.approx(0.8), "exact_match": 0.0, "count": 2},
        "is the": {"accuracy": 1.0, "exact_match": 1.0, "count": 1},
    }
    assert metric.compute(predictions=["Two."], references=[["2"] * 2 + ["3"] * 8]).keys() == {
        "accuracy",
        "exact_match",
    }


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
