"""Accuracy of a default-model checkpoint per question form: for each question type, the generator's template family
(which attribute an attribute or spatial question asks, which relation a comparison tests), split by the true answer
where it is yes or no; on its synthetic test split and on the first of the questions it was trained on. Then each
comparison of the test split read apart: the model asked the compared attribute of each of its two objects (with the
same image), and the comparison made from its two answers.

    python -m benchmarks.question_forms --output benchmarks/results/question_forms.json

A form answered well on the test split but not on the training questions is learned and does not generalise; one
answered badly on both is not learned, and a yes/no form right only for one answer is answered from its prior. A
comparison answered wrong though the model reads both of its objects right is lost in relating them, not in reading.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.lib.system import machine_info
from benchmarks.quantized_accuracy import QUESTION_TYPES, default_test_split
from examples.evaluate_vqa import answer_questions
from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import (
    ATTRIBUTE_TEMPLATES,
    COMPARED_ATTRIBUTES,
    COMPARISON_TEMPLATES,
    NOUNS,
    SPATIAL_TEMPLATES,
    comparison_holds,
    make_synthetic_vqa,
)


TEMPLATE_FAMILIES = {"attribute": ATTRIBUTE_TEMPLATES, "spatial": SPATIAL_TEMPLATES, "comparison": COMPARISON_TEMPLATES}


def _pattern(template: str) -> re.Pattern:
    """The template's questions, each of its placeholders a group."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)))


FORM_PATTERNS = {
    question_type: {form: [_pattern(template) for template in templates] for form, templates in families.items()}
    for question_type, families in TEMPLATE_FAMILIES.items()
}


def question_form(question_type: str, question: str) -> str:
    """The template family of a generated question ("colour", "same shape", ...), or "all" for types without any."""
    for form, patterns in FORM_PATTERNS.get(question_type, {}).items():
        if any(pattern.fullmatch(question) for pattern in patterns):
            return form
    if question_type in FORM_PATTERNS:
        raise ValueError(f"{question!r} follows none of the generator's {question_type} templates.")
    return "all"


def accuracy_by_form(rows: list[dict], answers: list[str]) -> dict[str, dict]:
    """Per "type: form", the questions, their accuracy and, for yes/no forms, the accuracy for each true answer."""
    outcomes = defaultdict(lambda: defaultdict(list))
    for row, answer in zip(rows, answers):
        key = f"{row['question_type']}: {question_form(row['question_type'], row['question'])}"
        right = answer == row["answer"]
        outcomes[key]["all"].append(right)
        if row["answer"] in ("yes", "no"):
            outcomes[key][row["answer"]].append(right)
    return {
        key: {"count": len(by_answer["all"])} | {name: sum(values) / len(values) for name, values in by_answer.items()}
        for key, by_answer in sorted(outcomes.items(), key=lambda item: QUESTION_TYPES.index(item[0].split(":")[0]))
    }


def comparison_parts(question: str) -> tuple[str, str, str]:
    """The form of a generated comparison question and its two objects: ("same colour", "circle", "large square")."""
    form = question_form("comparison", question)
    match = next(filter(None, (pattern.fullmatch(question) for pattern in FORM_PATTERNS["comparison"][form])))
    return form, *match.groups()


def read_apart_questions(rows: list[dict]) -> list[dict]:
    """
    Each comparison row's two attribute questions, the first asking the compared attribute of its first object, the
    second of its second one, with the row's image.
    """
    questions = []
    for row in rows:
        form, *objects = comparison_parts(row["question"])
        template = ATTRIBUTE_TEMPLATES[COMPARED_ATTRIBUTES[form]][0]
        questions += [{"image": row["image"], "question": template.format(object=name)} for name in objects]
    return questions


def _refers_to(name: str, obj: dict) -> bool:
    """Whether an object description ("large square", "red object") fits a scene object."""
    return set(name.split()) - set(NOUNS) <= {obj["size"], obj["colour"], obj["shape"]}


def read_apart_accuracy(rows: list[dict], answers: list[str], reads: list[str]) -> dict[str, dict]:
    """
    Per comparison form, the share of comparisons answered right (`answers`), of those whose two objects are both
    read right (`reads`, two per row, from `read_apart_questions`), of those made right from the two reads, and of those
    answered right among the ones both read right.
    """
    outcomes = defaultdict(lambda: defaultdict(list))
    for row, answer, *read in zip(rows, answers, reads[::2], reads[1::2]):
        form, *objects = comparison_parts(row["question"])
        attribute = COMPARED_ATTRIBUTES[form]
        scene = json.loads(row["scene"])
        both_read = all(
            value in {obj[attribute] for obj in scene if _refers_to(name, obj)} for name, value in zip(objects, read)
        )
        made = comparison_holds(form, *(SimpleNamespace(**{attribute: value}) for value in read))
        outcomes[form]["answered"].append(answer == row["answer"])
        outcomes[form]["both read"].append(both_read)
        outcomes[form]["made from reads"].append(("yes" if made else "no") == row["answer"])
        if both_read:
            outcomes[form]["answered, both read"].append(answer == row["answer"])
    return {
        form: {"count": len(values["answered"])} | {name: sum(v) / len(v) for name, v in values.items()}
        for form, values in outcomes.items()
    }


def training_questions(model_folder: Path, num_images: int):
    """The first questions of the checkpoint's stage-2 training data (fewer images give a prefix of the rows)."""
    arguments = json.loads((model_folder / "training_results.json").read_text())["arguments"]
    return make_synthetic_vqa(
        num_images,
        arguments["seed"],
        arguments["questions_per_image"],
        128,
        split="train",
        vary_style=arguments.get("vary_style", False),
    )


def markdown(results: dict[str, dict[str, dict]]) -> str:
    splits = list(results)
    header = ["type: form"] + [f"{split}: {column}" for split in splits for column in ("n", "accuracy", "yes", "no")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for key in results[splits[0]]:
        cells = [key]
        for split in splits:
            values = results[split].get(key, {})
            cells.append(str(values.get("count", 0)))
            cells += [f"{100 * values[name]:.1f}" if name in values else "" for name in ("all", "yes", "no")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_apart_markdown(read_apart: dict[str, dict]) -> str:
    columns = ("answered", "both read", "made from reads", "answered, both read")
    lines = ["| comparison | n | " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) + 1)]
    for form, values in read_apart.items():
        cells = [f"{100 * values[column]:.1f}" if column in values else "" for column in columns]
        lines.append(f"| {form} | {values['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder with training_results.json")
    parser.add_argument("--test_images", type=int, default=None, help="fewer test images than the model's")
    parser.add_argument("--training_images", type=int, default=400, help="images of the training questions scored")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model_folder = Path(args.model)
    model = BcQLMForConditionalGeneration.from_pretrained(model_folder).eval()
    processor = BcQLMProcessor.from_pretrained(model_folder)
    splits = {
        "test": default_test_split(model_folder, args.test_images),
        "training questions": training_questions(model_folder, args.training_images),
    }

    def answer(rows):
        answers = []
        for start in range(0, len(rows), args.batch_size):
            answers += answer_questions(model, processor, rows[start : start + args.batch_size], max_new_tokens=4)
        return answers

    results = {}
    for name, dataset in splits.items():
        rows = list(dataset)
        answers = answer(rows)
        results[name] = accuracy_by_form(rows, answers)
        if name == "test":
            comparisons = [(row, a) for row, a in zip(rows, answers) if row["question_type"] == "comparison"]
    print(markdown(results))
    rows, answers = [row for row, _ in comparisons], [a for _, a in comparisons]
    read_apart = read_apart_accuracy(rows, answers, answer(read_apart_questions(rows)))
    print("\n" + read_apart_markdown(read_apart))
    output = {
        "machine": machine_info(args.threads),
        "model": str(model_folder),
        "results": results,
        "comparisons read apart": read_apart,
    }
    if args.output:
        Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    return output


if __name__ == "__main__":
    main()
