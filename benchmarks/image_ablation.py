"""Which answers of the embedded default BcQLM depend on the image, and do they hold on other drawings of the same
scene: its synthetic test split answered with each question's own scene, with another scene's image, with an empty
scene (background only), with its own scene in a random style of the generator (`random_style`: background, shades,
anti-aliasing) and drawn by another renderer (`benchmarks/lib/numpy_renderer.py`).

    python -m benchmarks.image_ablation --output benchmarks/results/image_ablation.json

A question type whose accuracy does not fall when the image is replaced is answered from the question alone (the
answer priors of the training data); one whose accuracy falls when the same scene is drawn otherwise depends on the
generator's pixels. Reports, per condition, the accuracy overall and per question type and the share of answers that
stay the same as with the question's own image. Beside them, two answers from the question's text alone, estimated on
fresh scenes drawn as the test split's (after its own): the answer prior, the answer the same question most often has;
and the expected accuracy of answering as another such scene would (the answer drawn from the question's answer
distribution), which is what a model that reads another scene's image perfectly gets. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.lib import numpy_renderer
from benchmarks.lib.system import machine_info
from benchmarks.quantized_accuracy import QUESTION_TYPES, default_test_split
from examples.evaluate_vqa import answer_questions, score
from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import (
    BACKGROUND_COLOUR,
    SceneObject,
    make_synthetic_vqa,
    random_style,
    render_scene,
)


CONDITIONS = ("own scene", "another scene", "empty scene", "own scene restyled", "own scene, other renderer")
PRIOR = "answer prior (question alone)"
CHANCE = "another scene's own answer (expected)"


def images_for(condition: str, rows: list[dict], seed: int = 0) -> list[Image.Image]:
    """
    Each row's image under `condition`: its own, the next scene's, the background alone, or its own scene redrawn
    (each scene in one random style, drawn by the generator or by the numpy renderer).
    """
    if condition == "own scene":
        return [row["image"] for row in rows]
    image_by_scene = {row["scene"]: row["image"] for row in rows}
    scenes = list(image_by_scene)
    if condition == "another scene":
        next_scene = {scene: scenes[(index + 1) % len(scenes)] for index, scene in enumerate(scenes)}
        return [image_by_scene[next_scene[row["scene"]]] for row in rows]
    image_size = rows[0]["image"].size[0]
    if condition == "empty scene":
        return [Image.new("RGB", (image_size, image_size), BACKGROUND_COLOUR)] * len(rows)
    redrawn = {}
    for index, scene_json in enumerate(scenes):
        scene, rng = [SceneObject(**obj) for obj in json.loads(scene_json)], np.random.default_rng([seed, index])
        if condition == "own scene restyled":
            redrawn[scene_json] = render_scene(scene, image_size, random_style(scene, rng))
        else:
            redrawn[scene_json] = numpy_renderer.draw_scene(scene, image_size, rng)
    return [redrawn[row["scene"]] for row in rows]


def reference_questions(model_folder: Path, num_images: int | None = None):
    """
    The questions of `num_images` scenes (default: as many as the checkpoint's training images) drawn as its test
    split, after the split's own scenes (so none of them is a test scene): what the answers from the question alone are
    estimated on.
    """
    arguments = json.loads((model_folder / "training_results.json").read_text())["arguments"]
    num_images = arguments["train_images"] if num_images is None else num_images
    drawn = make_synthetic_vqa(
        arguments["test_images"] + num_images, arguments["seed"], arguments["questions_per_image"], 128, split="test"
    )
    return drawn.select(range(len(default_test_split(model_folder)), len(drawn)))


def answer_counts(reference, rows: list[dict]) -> list[collections.Counter]:
    """
    Each row's answers in `reference` to the same question text; for a question never asked there the answers of its
    type, and for a type never asked there (a small `--prior_images`) all the answers.
    """
    by_question, by_type = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for question, answer, question_type in zip(reference["question"], reference["answer"], reference["question_type"]):
        by_question[question][answer] += 1
        by_type[question_type][answer] += 1
    overall = sum(by_type.values(), collections.Counter())
    return [by_question.get(row["question"]) or by_type.get(row["question_type"]) or overall for row in rows]


def prior_answers(reference, rows: list[dict]) -> list[str]:
    """Each row's answer from its question alone: the answer most often given to it in `reference`."""
    return [counts.most_common(1)[0][0] for counts in answer_counts(reference, rows)]


def expected_chance_agreement(reference, rows: list[dict], own_answers: list[str]) -> dict:
    """
    `summarise` of each row answered with an answer drawn from its answers in `reference`, in expectation: the share
    of them equal to its true answer and to `own_answers`.
    """
    outcomes = collections.defaultdict(list)
    same = []
    for row, counts, own in zip(rows, answer_counts(reference, rows), own_answers):
        total = sum(counts.values())
        outcomes[row["question_type"]].append(counts[row["answer"]] / total)
        same.append(counts[own] / total)
    return {
        "count": len(rows),
        "accuracy": sum(map(sum, outcomes.values())) / len(rows),
        "per_type": {name: sum(values) / len(values) for name, values in outcomes.items()},
        "same_answer_as_own_scene": sum(same) / len(rows),
    }


def summarise(rows: list[dict], answers: list[str], own_answers: list[str]) -> dict:
    """Accuracy overall and per question type of `answers`, and the share equal to `own_answers`."""
    results = score(
        [
            {"answer": answer, "answers": row["answers"], "question_type": row["question_type"]}
            for row, answer in zip(rows, answers)
        ]
    )
    return {
        "count": results["count"],
        "accuracy": results["accuracy"],
        "per_type": {name: metrics["accuracy"] for name, metrics in results["per_type"].items()},
        "same_answer_as_own_scene": sum(a == b for a, b in zip(answers, own_answers)) / len(rows),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder with training_results.json")
    parser.add_argument("--test_images", type=int, default=None, help="fewer test images than the model's (smoke run)")
    parser.add_argument(
        "--prior_images",
        type=int,
        default=None,
        help="scenes drawn as the test split's to estimate the answers from the question alone on (default: as many as "
        "the model's training images)",
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.prior_images is not None and args.prior_images < 1:
        parser.error(f"--prior_images must be at least 1, got {args.prior_images}.")
    torch.set_num_threads(args.threads)

    model_folder = Path(args.model)
    rows = list(default_test_split(model_folder, args.test_images))
    model = BcQLMForConditionalGeneration.from_pretrained(model_folder).eval()
    processor = BcQLMProcessor.from_pretrained(model_folder)

    answers = {}
    summary = {}
    for condition in CONDITIONS:
        images = images_for(condition, rows)
        answers[condition] = []
        for start in range(0, len(rows), args.batch_size):
            batch = [
                {"image": image, "question": row["question"]}
                for row, image in zip(rows[start : start + args.batch_size], images[start : start + args.batch_size])
            ]
            answers[condition] += answer_questions(model, processor, batch, max_new_tokens=4)
        summary[condition] = summarise(rows, answers[condition], answers["own scene"])
    reference = reference_questions(model_folder, args.prior_images)
    summary[PRIOR] = summarise(rows, prior_answers(reference, rows), answers["own scene"])
    summary[CHANCE] = expected_chance_agreement(reference, rows, answers["own scene"])

    header = ["image", "accuracy", *QUESTION_TYPES, "same answer as with its own image"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for condition, values in summary.items():
        cells = [condition, f"{100 * values['accuracy']:.1f}"]
        cells += [f"{100 * values['per_type'].get(name, float('nan')):.1f}" for name in QUESTION_TYPES]
        cells.append(f"{100 * values['same_answer_as_own_scene']:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    results = {"machine": machine_info(args.threads), "model": str(model_folder), "summary": summary}
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
