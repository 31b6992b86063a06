"""VQA accuracy, the official VQAv2 metric, as an `evaluate` module and as plain functions.

Self-contained on purpose: `evaluate.load("path/to/vqa_accuracy.py")` copies this one file and imports it alone, so it
imports only the standard library, `datasets` and `evaluate`.

The answer normalisation and the scoring follow the official evaluation code of the VQA team, GT-Vision-Lab/VQA,
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` at master, commit a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021,
"Fixed processing answers bug"), quirks included, with the results Python 2.7 gives on the unicode answers `json.load`
returns. Earlier versions of this module followed c4e6a0e4, an unmerged Python 3 pull request (2017) that, like master
before a013f00, always normalised the prediction and only punctuation-processed the references when they differ;
master cleans the whitespace of every answer, then normalises both sides fully when the references differ and neither
when they are all the same. The 2015 versions also differ (their `punct` list holds ':' and "'" but not '{', '}', '-'
or '!', several contractions use typographic apostrophes, and per-type means took the last leave-one-out score).
Not reproduced: the case mappings Unicode gained after 5.2 (Python 2.7's database), e.g. of Cherokee or Georgian
capitals, which Python 3 lower-cases and Python 2 leaves as they are.
"""

import re
from collections import Counter

import datasets
import evaluate


# The official tables, copied as they are (the capitalised keys can never match, since answers are lower-cased first,
# and "somebody'd" maps to "somebodyd"; both are kept for fidelity).
# fmt: off
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
# fmt: on
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# Official pattern, typo included: `(?!<=\d)` is a lookahead that never fires (the intended lookbehind is `(?<!\d)`),
# so every period not followed by a digit goes: "3.5" stays, "end." and "3." lose theirs. Compiled without flags in
# Python 2, where `\d` is then [0-9] even in unicode text: hence `re.ASCII` ("3.٥" loses its period).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)", re.ASCII)
# The official code calls `periodStrip.sub("", text, re.UNICODE)`: the flag lands in `count`, and re.UNICODE == 32.
PERIOD_STRIP_COUNT = 32
# A question scores full marks when this many of the other annotators gave the answer.
HUMANS_FOR_FULL_MARKS = 3
# Python 2.7's `unicode.strip()` and `split()` whitespace (Unicode 5.2): Python 3 no longer counts U+180E.
_PY2_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_PY2_WHITESPACE_RUN = re.compile(f"[{_PY2_WHITESPACE}]+")

_DESCRIPTION = """\
VQA accuracy, the metric of the VQA v1/v2 challenges (also used by VizWiz). A predicted answer scores
min(#annotators who gave it / 3, 1), averaged over the leave-one-out subsets of the annotators: each question's score
is the mean, over its n reference answers, of min(#matches among the other n - 1 / 3, 1). With 10 references an answer
given by 1, 2 or 3 annotators scores 0.3, 0.6 or 0.9, and 4 or more score 1.0.

Answers are normalised as in the official evaluation code (GT-Vision-Lab/VQA, vqaEval.py at master): every answer
first has its tabs and newlines made spaces and its ends stripped. If the references of a question then differ, the
prediction and every reference are normalised (punctuation, lower case, number words to digits, articles dropped,
contractions restored): "Two." matches "2". If they are all the same, nothing more is done to either side, and the
prediction must equal them as it is: "Yes" or "yes." scores 0 against ten "yes".

Also reported: exact match, whether the normalised prediction equals the most common normalised reference (ties go to
the reference seen first).

With a single reference per question (GQA, synthetic data) the leave-one-out subsets would be empty and the official
formula would score every answer 0; there the accuracy of a question is its exact match instead (prediction and
reference both normalised), the usual GQA accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one predicted answer per question.
    references (`list[list[str]]`): the human answers to each question (10 in VQAv2 and VizWiz; at least one).
    question_types (`list[str]`, *optional*): a type per question (the VQA question type, or its answer type:
        "yes/no", "number", "other"); adds a per-type breakdown.

Returns:
    `dict`: fractions in [0, 1], unrounded; the official code reports round(100 * sum / count, 2), rounding halves
    away from zero (Python 2), of the same left-to-right sums:
        accuracy: mean VQA accuracy over the questions.
        exact_match: mean exact match over the questions.
        per_type (only with `question_types`): `{type: {"accuracy": float, "exact_match": float, "count": int}}`,
            the means over each type's questions, as the official per-question-type and per-answer-type accuracies.

Example:
    >>> vqa_accuracy = evaluate.load("path/to/modeling_bcqlm/evaluation/vqa_accuracy.py")
    >>> references = [["2"] * 2 + ["3"] * 8, ["yes"] * 10]
    >>> vqa_accuracy.compute(predictions=["Two.", "yes"], references=references)
    {'accuracy': 0.8, 'exact_match': 0.5}
"""

_CITATION = """\
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={International Conference on Computer Vision (ICCV)},
  year={2015}
}
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2017}
}
"""


def _clean_whitespace(text: str) -> str:
    """Master's first step for every answer, prediction and references alike: tabs and newlines to spaces, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip(_PY2_WHITESPACE)


def _lower(text: str) -> str:
    """Python 2's `unicode.lower`, a character at a time (Python 3 lowers "İ" to 2 characters, final "Σ" to "ς")."""
    return text.lower() if text.isascii() else "".join(char.lower()[0] for char in text)


def _process_punctuation(text: str) -> str:
    """The official `processPunctuation`: its tests look at the input text, its replacements build up the output."""
    out = text
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower-case words, number words to digits, no articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in _PY2_WHITESPACE_RUN.split(_lower(text)) if word]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _sum(values: list[float]) -> float:
    """Left to right, as Python 2's `sum` (Python 3.12's compensated `sum` can differ in the last bits)."""
    total = 0.0
    for value in values:
        total += value
    return total


def _mean(values: list[float]) -> float:
    return _sum(values) / len(values)


def _check_answers(prediction, references) -> None:
    if not isinstance(prediction, str):
        raise ValueError(f"The prediction must be a string, got {type(prediction).__name__}: {prediction!r}.")
    if isinstance(references, str):
        raise ValueError(
            f"The references must be a list of answer strings, got the string {references!r}: wrap it in a list."
        )
    if len(references) == 0:
        raise ValueError("The references are empty: give at least one human answer per question.")
    if not all(isinstance(answer, str) for answer in references):
        raise ValueError(f"The references must all be strings, got {references!r}.")


def normalize_answer(text: str) -> str:
    """
    Normalise an answer fully, as the official code normalises the prediction and the references of a question whose
    references differ, e.g. "Two dogs." -> "2 dogs".
    """
    if not isinstance(text, str):
        raise ValueError(f"An answer must be a string, got {type(text).__name__}: {text!r}.")
    return _process_digit_article(_process_punctuation(_clean_whitespace(text)))


def vqa_score(prediction: str, references: list[str]) -> float:
    """
    VQA accuracy of one answer against the human answers, in [0, 1], exactly as the official code scores it: both
    sides normalised if the references differ, both only whitespace-cleaned if they are all the same. With a single
    reference, the exact match of the normalised answers.
    """
    _check_answers(prediction, references)
    if len(references) == 1:  # no leave-one-out subsets: exact match, as GQA scores it
        return float(normalize_answer(prediction) == normalize_answer(references[0]))
    prediction, references = _clean_whitespace(prediction), [_clean_whitespace(answer) for answer in references]
    if len(set(references)) > 1:  # judged after the whitespace cleaning: "yes" and " yes" are the same
        prediction, references = normalize_answer(prediction), [normalize_answer(answer) for answer in references]
    matches = [answer == prediction for answer in references]
    # Leave out each annotator in turn (the official code tells annotators apart by answer id, not by answer text).
    scores = [min(1.0, (sum(matches) - left_out_match) / HUMANS_FOR_FULL_MARKS) for left_out_match in matches]
    return _mean(scores)


def exact_match_score(prediction: str, references: list[str]) -> float:
    """1.0 if the normalised prediction equals the most common normalised reference (first seen on ties), else 0.0."""
    _check_answers(prediction, references)
    most_common, _ = Counter(normalize_answer(answer) for answer in references).most_common(1)[0]
    return float(normalize_answer(prediction) == most_common)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VQAAccuracy(evaluate.Metric):
    """VQA accuracy (official VQAv2 evaluation) and exact match, with an optional per-question-type breakdown."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://visualqa.org/evaluation.html"],
            codebase_urls=["https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(self, predictions, references, question_types=None):
        if len(predictions) == 0:
            raise ValueError("No predictions to score: pass at least one prediction and its references.")
        if question_types is not None and (
            isinstance(question_types, str)
            or len(question_types) != len(predictions)
            or not all(isinstance(question_type, str) for question_type in question_types)
        ):
            raise ValueError(
                f"`question_types` must be a list of strings, one per prediction ({len(predictions)}), "
                f"got {question_types!r}."
            )
        accuracies, exact_matches = [], []
        for index, (prediction, answers) in enumerate(zip(predictions, references)):
            try:
                accuracies.append(vqa_score(prediction, answers))
                exact_matches.append(exact_match_score(prediction, answers))
            except ValueError as error:
                raise ValueError(f"Question {index}: {error}") from None
        result = {"accuracy": _mean(accuracies), "exact_match": _mean(exact_matches)}
        if question_types is not None:
            indices_by_type = {}
            for index, question_type in enumerate(question_types):
                indices_by_type.setdefault(question_type, []).append(index)
            result["per_type"] = {
                question_type: {
                    "accuracy": _mean([accuracies[index] for index in indices]),
                    "exact_match": _mean([exact_matches[index] for index in indices]),
                    "count": len(indices),
                }
                for question_type, indices in sorted(indices_by_type.items())
            }
        return result
