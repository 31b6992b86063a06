"""Wall time of N questions about one image: asked one by one, against running the image tower once and sharing its
features (`image_features`), through the model API and through the visual-question-answering pipeline.

    python -m benchmarks.multi_question              # a tiny random BcQLM
    python -m benchmarks.multi_question --full_size  # the paper's shape, `BcQLMConfig()`, with random weights
    python -m benchmarks.multi_question --model path/to/bcqlm --questions 8 --repeats 5 --output results.json

Every method answers the same questions greedily with exactly `--max_new_tokens` new tokens each (`min_new_tokens` is
set to the same), so that all do the same decoding work; few new tokens leave the image tower's share of the time
visible. A run goes from the PIL image and the question strings to the decoded answers. After a warm-up run of each
method, the methods run in turn for `--repeats` rounds, so that a slower spell of a shared machine affects them alike;
the table gives the median and the fastest run of each, and the speed-up of the medians over the interface's
one-by-one method. The random models use the tiny test tokenizers; with `--full_size` the processor works at 224 px
with 49 image tokens, as the paper's model does.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image

from modeling_bcqlm import (
    BcQLMConfig,
    BcQLMForConditionalGeneration,
    BcQLMProcessor,
    BcQLMVisualQuestionAnsweringPipeline,
)
from modeling_bcqlm.testing.tiny_models import CORPUS, make_processor, make_tiny_bcqlm


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


EXAMPLE_IMAGE = os.path.join(ROOT, "examples", "images", "shapes.png")
QUESTIONS = [line.split("\n")[0].removeprefix("Question: ") for line in CORPUS]


def load_model(args) -> tuple[BcQLMForConditionalGeneration, BcQLMProcessor, str]:
    """The model to time, its processor and a description."""
    if args.model is not None:
        model = BcQLMForConditionalGeneration.from_pretrained(args.model)
        return model.eval(), BcQLMProcessor.from_pretrained(args.model), args.model
    torch.manual_seed(0)
    if not args.full_size:
        model, processor = make_tiny_bcqlm()
        return model, processor, "tiny random BcQLM (modeling_bcqlm/testing/tiny_models.py)"
    processor = make_processor(image_size=224, image_seq_length=49)
    model = BcQLMForConditionalGeneration(BcQLMConfig(image_token_id=processor.image_token_id)).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor, "BcQLMConfig() with random weights"


def make_methods(model, processor, image, questions, max_new_tokens) -> list[tuple[str, str, Callable[[], list[str]]]]:
    """`(interface, method, run)` triples; `run()` answers every question and returns the answers."""
    num_questions = len(questions)
    generate_kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "do_sample": False}
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)

    def one_by_one():
        answers = []
        for question in questions:
            inputs = processor(images=image, text=question, return_tensors="pt")
            answers += processor.post_process_image_text_to_text(model.generate(**inputs, **generate_kwargs))
        return answers

    def batched():
        inputs = processor(images=[image] * num_questions, text=questions, return_tensors="pt")
        return processor.post_process_image_text_to_text(model.generate(**inputs, **generate_kwargs))

    def batched_shared_features():
        inputs = processor(images=[image] * num_questions, text=questions, return_tensors="pt")
        image_features = model.get_image_features(inputs.pop("pixel_values")[:1]).pooler_output
        image_features = image_features.expand(num_questions, -1, -1)
        generated = model.generate(**inputs, image_features=image_features, **generate_kwargs)
        return processor.post_process_image_text_to_text(generated)

    def ask(question, **kwargs):
        return vqa(image=image, question=question, **generate_kwargs, **kwargs)

    return [
        ("model", "one generate() per question", one_by_one),
        ("model", "one batched generate(), image tower on N copies", batched),
        ("model", "one batched generate(), shared image features", batched_shared_features),
        ("pipeline", "one call per question", lambda: [ask(question)[0]["answer"] for question in questions]),
        ("pipeline", "one call, N questions (batch_size=1)", lambda: [r[0]["answer"] for r in ask(questions)]),
        (
            "pipeline",
            "one call, N questions (batch_size=N)",
            lambda: [r[0]["answer"] for r in ask(questions, batch_size=num_questions)],
        ),
    ]


def time_methods(methods, repeats: int, image_tower_inputs: list[int]) -> list[dict]:
    """Warm up each method, recording its answers and what it sends to the image tower; then time `repeats` rounds."""
    results = []
    with torch.inference_mode():
        for interface, method, run in methods:
            image_tower_inputs.clear()
            answers = run()
            results.append(
                {
                    "interface": interface,
                    "method": method,
                    "answers": answers,
                    "image_tower_calls": len(image_tower_inputs),
                    "images_through_image_tower": sum(image_tower_inputs),
                    "seconds": [],
                }
            )
        for _ in range(repeats):
            for result, (_, _, run) in zip(results, methods):
                start = time.perf_counter()
                run()
                result["seconds"].append(time.perf_counter() - start)
    for result in results:
        result["median_seconds"] = statistics.median(result["seconds"])
        result["min_seconds"] = min(result["seconds"])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="A saved BcQLM folder or Hub id (default: a tiny random model).")
    source.add_argument("--full_size", action="store_true", help="Build BcQLMConfig() with random weights (5.2 GB).")
    parser.add_argument("--image", default=EXAMPLE_IMAGE, help="Path of the image.")
    parser.add_argument("--questions", type=int, default=8, help="Number of questions about the image.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each method.")
    parser.add_argument("--max_new_tokens", type=int, default=2, help="New tokens per answer.")
    parser.add_argument("--output", help="Write the results to this JSON file.")
    args = parser.parse_args()

    start = time.perf_counter()
    model, processor, description = load_model(args)
    build_seconds = time.perf_counter() - start
    image = Image.open(args.image).convert("RGB")
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
    image_tower_inputs = []
    model.model.breezeclip.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: image_tower_inputs.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )

    methods = make_methods(model, processor, image, questions, args.max_new_tokens)
    results = time_methods(methods, args.repeats, image_tower_inputs)
    for result in results:
        baseline = next(r for r in results if r["interface"] == result["interface"])
        result["speedup"] = baseline["median_seconds"] / result["median_seconds"]
        result["same_answers"] = result["answers"] == results[0]["answers"]

    num_parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{description}: {num_parameters / 1e6:,.1f}M parameters, {model.dtype}, ready in {build_seconds:.1f} s; "
        f"{args.questions} questions about one image, {args.max_new_tokens} new tokens each, rounds: "
        f"{args.repeats}, threads: {torch.get_num_threads()}"
    )
    print("| interface | method | tower calls | images in tower | median s | min s | speed-up | same answers |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['interface']} | {r['method']} | {r['image_tower_calls']} | {r['images_through_image_tower']} | "
            f"{r['median_seconds']:.3f} | {r['min_seconds']:.3f} | {r['speedup']:.2f}x | "
            f"{'yes' if r['same_answers'] else 'no'} |"
        )
    if args.output:
        report = {
            "model": description,
            "parameters": num_parameters,
            "dtype": str(model.dtype),
            "questions": args.questions,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "results": results,
        }
        with open(args.output, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
