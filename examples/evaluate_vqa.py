"""Evaluate BcQLM on VQA data: batched greedy generation, VQA accuracy (official VQAv2 normalisation) and exact match,
overall and per question type.

    python examples/evaluate_vqa.py \
        --model_name_or_path bcqlm-vqav2 \
        --data v2_OpenEnded_mscoco_val2014_questions.json \
        --annotations_file v2_mscoco_val2014_annotations.json --image_root val2014/ \
        --output_dir eval-vqav2 --batch_size 32

`--quantization int8|nf4|fp4` loads the model with bitsandbytes (the decoder, adapter and Q-GCAM quantized), to measure
what quantization costs in accuracy (`benchmarks/quantized_accuracy.py` does it for the shipped default model). A folder
written by `bcqlm export` is evaluated on ONNX Runtime, in the precision it was exported in.

Writes `predictions.jsonl` (one answer per question, appended as the evaluation goes, so `--resume` continues an
interrupted run) and `results.json` (the metrics) into `--output_dir`. Under `accelerate launch` each process answers
its share of the questions and the main process scores them.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import BitsAndBytesConfig, HfArgumentParser

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.loaders import load_vqa_dataset
from modeling_bcqlm.engines.onnx_model import BcQLMOnnxForConditionalGeneration, is_onnx_folder
from modeling_bcqlm.evaluation import vqa_accuracy
from modeling_bcqlm.training.launch import run_script


logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATION = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
}


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A BcQLM folder or Hub id."})
    data: str = field(metadata={"help": "Evaluation data: a VQA file, a folder or a Hub dataset id."})
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and results.json are written."})
    split: str = field(default="validation", metadata={"help": "Split of a Hub dataset or saved DatasetDict."})
    image_root: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})
    annotations_file: str | None = field(default=None, metadata={"help": "VQAv2 annotations of `data`."})
    on_missing_image: str = field(default="raise", metadata={"help": "'raise' or 'skip' rows whose image is missing."})
    batch_size: int = field(default=16, metadata={"help": "Questions per `generate` call."})
    max_new_tokens: int = field(default=10, metadata={"help": "Longest answer, in decoder tokens."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N questions only."})
    dtype: str = field(default="float32", metadata={"help": "Weights' dtype: float32, bfloat16 or float16."})
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "Load with bitsandbytes: int8, nf4 (double quantization) or fp4. The decoder, adapter and Q-GCAM "
            "linear layers are quantized; BreezeCLIP stays in full precision."
        },
    )
    resume: bool = field(default=False, metadata={"help": "Keep the predictions already in predictions.jsonl."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU (and, under accelerate, DDP over gloo)."})


def answer_questions(model, processor, rows, max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of rows holding an `image` and a `question`."""
    inputs = processor(
        images=[row["image"].convert("RGB") for row in rows],
        text=[row["question"] for row in rows],
        return_tensors="pt",
    ).to(model.device)
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])


def load_model(model_name_or_path: str, dtype: torch.dtype, quantization: str | None, device):
    """
    The model in eval mode on `device`, its weights in `dtype` or, with `quantization`, in bitsandbytes form; a folder
    written by `bcqlm export` answers on ONNX Runtime, in the precision it was exported in.
    """
    if is_onnx_folder(model_name_or_path):
        if quantization is not None or torch.device(device).type != "cpu":
            raise ValueError(
                f"{model_name_or_path} is an ONNX export, quantized when exported; it runs on the CPU: drop "
                "--quantization, and pass --use_cpu under accelerate."
            )
        return BcQLMOnnxForConditionalGeneration.from_pretrained(model_name_or_path)
    if quantization is None:
        model = BcQLMForConditionalGeneration.from_pretrained(model_name_or_path, dtype=dtype).to(device)
    else:  # a quantized model is placed by `device_map`; it cannot be moved afterwards
        model = BcQLMForConditionalGeneration.from_pretrained(
            model_name_or_path, dtype=dtype, quantization_config=QUANTIZATION[quantization], device_map={"": device}
        )
    return model.eval()


def score(predictions: list[dict]) -> dict:
    """VQA accuracy and exact match of `{"answer", "answers", "question_type"}` records, overall and per type."""
    scored = [prediction for prediction in predictions if prediction["answers"]]
    if not scored:
        raise ValueError("None of the questions has reference answers (a test split?): nothing to score.")
    metric = evaluate.load(vqa_accuracy.__file__)  # the metric shipped in the package, loaded offline by path
    results = metric.compute(
        predictions=[prediction["answer"] for prediction in scored],
        references=[prediction["answers"] for prediction in scored],
        question_types=[prediction["question_type"] or "all" for prediction in scored],
    )
    return {"count": len(scored), **results}


def previous_predictions(predictions_file: Path, resume: bool, state: PartialState) -> dict[str, dict]:
    """The predictions already in `predictions_file` by question id with `--resume`; otherwise none (file removed)."""
    done = {}
    if resume and predictions_file.exists():
        with open(predictions_file) as f:
            done = {record["question_id"]: record for record in map(json.loads, f)}
    elif state.is_main_process:
        predictions_file.parent.mkdir(parents=True, exist_ok=True)
        predictions_file.unlink(missing_ok=True)
    state.wait_for_everyone()
    return done


def answer_shard(model, processor, dataset, shard: list[int], args, predictions_file: Path, state) -> list[dict]:
    """Prediction records of this process's rows of `dataset`, answered in batches of `--batch_size`."""
    predictions = []
    batches = [shard[start : start + args.batch_size] for start in range(0, len(shard), args.batch_size)]
    for batch in tqdm(batches, desc="Answering", disable=not state.is_local_main_process):
        rows = [dataset[index] for index in batch]
        answers = answer_questions(model, processor, rows, args.max_new_tokens)
        records = [
            {
                "question_id": row["question_id"],
                "question": row["question"],
                "answer": answer,
                "answers": row["answers"],
                "question_type": row["question_type"],
            }
            for row, answer in zip(rows, answers)
        ]
        predictions.extend(records)
        if state.num_processes == 1:  # appended as it goes, so that an interrupted run can resume
            with open(predictions_file, "a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)
    return predictions


def print_results(results: dict) -> None:
    print(f"{'question type':<24} {'count':>7} {'VQA acc':>8} {'exact':>8}")
    for name, metrics in [("overall", results)] + list(results["per_type"].items()):
        print(
            f"{name:<24} {metrics['count']:>7} {100 * metrics['accuracy']:>8.2f} {100 * metrics['exact_match']:>8.2f}"
        )


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(EvaluationArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {args.dtype!r}.")
    if args.quantization is not None and args.quantization not in QUANTIZATION:
        raise ValueError(f"--quantization must be one of {sorted(QUANTIZATION)}, got {args.quantization!r}.")
    state = PartialState(cpu=args.use_cpu)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and state.num_processes != world_size:
        raise RuntimeError(
            f"Launched as {world_size} processes, but they did not form a group (no GPUs?): pass --use_cpu to share "
            "the questions between CPU processes."
        )
    output_dir = Path(args.output_dir)
    predictions_file = output_dir / "predictions.jsonl"

    dataset = load_vqa_dataset(
        args.data,
        split=args.split,
        image_root=args.image_root,
        annotations_file=args.annotations_file,
        on_missing_image=args.on_missing_image,
    )
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    done = previous_predictions(predictions_file, args.resume, state)
    logger.info(f"{len(done)} of {len(dataset)} questions already answered in {predictions_file}.")
    todo = [index for index, question_id in enumerate(dataset["question_id"]) if question_id not in done]

    processor = BcQLMProcessor.from_pretrained(args.model_name_or_path)
    model = load_model(args.model_name_or_path, DTYPES[args.dtype], args.quantization, state.device)

    with state.split_between_processes(todo) as shard:
        new_predictions = answer_shard(model, processor, dataset, shard, args, predictions_file, state)
    new_predictions = gather_object(new_predictions) if state.num_processes > 1 else new_predictions

    if not state.is_main_process:
        return {}
    if state.num_processes > 1:
        with open(predictions_file, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in new_predictions)
    predictions = list(done.values()) + new_predictions
    results = {
        "model": args.model_name_or_path,
        "data": args.data,
        "dtype": args.dtype,
        "quantization": args.quantization,
        **score(predictions),
    }
    with open(output_dir / "results.json", "w") as f:
        json.dump(results, f, indent=2)

    print_results(results)
    return results


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
