"""Accuracy of the embedded default BcQLM loaded with bitsandbytes 8-bit and 4-bit, and exported for ONNX Runtime
(`bcqlm export`, its decoder in fp32, int8 or int4), against full precision, on its own synthetic test split
(regenerated from `training_results.json`, as `tests/test_default_model.py` does).

    python -m benchmarks.quantized_accuracy --output benchmarks/results/quantized_accuracy.json

For each storage (fp32, int8, nf4 with double quantization, fp4, onnx-fp32, onnx-int8, onnx-int4) it runs
`examples/evaluate_vqa.py` once on the test split and reports VQA accuracy overall and per question type, on the whole
split and on its held-out scenes (scored from the same answers), the share of questions answered exactly as in fp32,
the footprint (`get_memory_footprint()`; for the ONNX exports, their weight files) and the wall time of the
evaluation. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import torch

from benchmarks.lib.system import machine_info
from examples import evaluate_vqa
from modeling_bcqlm import DEFAULT_MODEL
from modeling_bcqlm.data.synthetic_shapes import make_synthetic_vqa
from modeling_bcqlm.engines.onnx_export import export_onnx
from modeling_bcqlm.engines.onnx_model import DECODER_FOLDER, FRONT_WEIGHTS


STORAGES = ("fp32", "int8", "nf4", "fp4", "onnx-fp32", "onnx-int8", "onnx-int4")
SPLITS = ("test", "test_held_out")
QUESTION_TYPES = ("attribute", "existence", "counting", "spatial", "comparison")


def default_test_split(model_folder: Path, test_images: int | None = None) -> datasets.Dataset:
    """The synthetic test split a model of `examples/train_default_model.py` reports on (its first `test_images`)."""
    arguments = json.loads((model_folder / "training_results.json").read_text())["arguments"]
    return make_synthetic_vqa(
        test_images or arguments["test_images"], arguments["seed"], arguments["questions_per_image"], 128, split="test"
    )


def evaluate(model_folder: Path, data: Path, held_out: set[str], workdir: Path, storage: str, batch_size: int) -> dict:
    """The loaded model's memory footprint, the evaluation's wall time, and per split (the test split and its questions
    in `held_out`) the results and the answers by question id."""
    if storage.startswith("onnx-"):
        model_folder, quantization = export_onnx(model_folder, workdir / storage / "model", storage[5:]), None
        weights = [model_folder / FRONT_WEIGHTS, *(model_folder / DECODER_FOLDER).glob("model.onnx*")]
        footprint = sum(path.stat().st_size for path in weights)
    else:
        quantization = None if storage == "fp32" else storage
        model = evaluate_vqa.load_model(str(model_folder), torch.float32, quantization, "cpu")
        footprint = model.get_memory_footprint()
        del model
    output_dir = workdir / storage
    argv = [
        "--model_name_or_path", str(model_folder), "--data", str(data), "--split", "test",
        "--output_dir", str(output_dir), "--batch_size", str(batch_size), "--max_new_tokens", "4",
    ]  # fmt: skip
    if quantization is not None:
        argv += ["--quantization", quantization]
    start = time.perf_counter()
    results = evaluate_vqa.main(argv)
    seconds = time.perf_counter() - start
    with open(output_dir / "predictions.jsonl") as f:
        records = [json.loads(line) for line in f]
    held_out_records = [record for record in records if record["question_id"] in held_out]
    splits = {"test": (results, records), "test_held_out": (evaluate_vqa.score(held_out_records), held_out_records)}
    return {
        "memory_footprint_bytes": footprint,
        "seconds": seconds,
        "splits": {
            split: {"results": results, "answers": {record["question_id"]: record["answer"] for record in records}}
            for split, (results, records) in splits.items()
        },
    }


def summarise(measured: dict) -> dict:
    """Accuracy, per-type accuracy, agreement with fp32 and footprint ratio of every storage."""
    reference = measured["fp32"]
    summary = {}
    for storage, values in measured.items():
        summary[storage] = {
            "memory_footprint_bytes": values["memory_footprint_bytes"],
            "footprint_over_fp32": values["memory_footprint_bytes"] / reference["memory_footprint_bytes"],
        }
        for split, split_values in values["splits"].items():
            answers, reference_answers = split_values["answers"], reference["splits"][split]["answers"]
            results = split_values["results"]
            summary[storage][split] = {
                "count": results["count"],
                "accuracy": results["accuracy"],
                "accuracy_change_vs_fp32": results["accuracy"] - reference["splits"][split]["results"]["accuracy"],
                "per_type": {name: metrics["accuracy"] for name, metrics in results["per_type"].items()},
                "same_answer_as_fp32": sum(answers[key] == reference_answers[key] for key in answers) / len(answers),
            }
        summary[storage]["seconds"] = values["seconds"]
    return summary


def render_markdown(summary: dict) -> str:
    header = ["storage", "footprint", "/ fp32"]
    for split in SPLITS:
        header += [f"{split}: accuracy", "change", "same answer as fp32"]
    header += [f"test: {name}" for name in QUESTION_TYPES] + ["eval time"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for storage, values in summary.items():
        cells = [storage, f"{values['memory_footprint_bytes'] / 1e6:.2f} MB", f"{values['footprint_over_fp32']:.3f}"]
        for split in SPLITS:
            split_values = values[split]
            cells += [
                f"{100 * split_values['accuracy']:.2f}",
                f"{100 * split_values['accuracy_change_vs_fp32']:+.2f}",
                f"{100 * split_values['same_answer_as_fp32']:.1f}%",
            ]
        cells += [f"{100 * values['test']['per_type'].get(name, float('nan')):.1f}" for name in QUESTION_TYPES]
        cells.append(f"{values['seconds']:.1f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder with training_results.json")
    parser.add_argument("--storages", default=",".join(STORAGES), help=f"comma-separated, from {STORAGES}")
    parser.add_argument("--test_images", type=int, default=None, help="fewer test images than the model's (smoke run)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    storages = args.storages.split(",")
    if storages[0] != "fp32" or not set(storages) <= set(STORAGES):
        parser.error(f"--storages must start with fp32 (the reference) and name only {STORAGES}, got {args.storages!r}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        test = default_test_split(Path(args.model), args.test_images)
        datasets.DatasetDict({"test": test}).save_to_disk(workdir / "data")
        held_out = {question_id for question_id, flag in zip(test["question_id"], test["held_out"]) if flag}
        measured = {
            storage: evaluate(Path(args.model), workdir / "data", held_out, workdir, storage, args.batch_size)
            for storage in storages
        }
    results = {"machine": machine_info(args.threads), "model": str(args.model), "summary": summarise(measured)}
    markdown = render_markdown(results["summary"])
    print(markdown)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
