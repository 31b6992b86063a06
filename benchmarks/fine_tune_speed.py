"""Questions per second of the bundled model's fine-tune (README's recipe: `--recipe frozen_vision`, BreezeCLIP frozen,
the rest trained), and where a training step's time goes.

    python -m benchmarks.fine_tune_speed --output benchmarks/results/fine_tune_speed.json

The steps are those of `examples/train_vqa.py`'s `Trainer`: rows of generated scenes (five questions per image, in
order, as `examples/train_default_model.py` feeds them) batched by `BcQLMVQACollator`, the model's forward with the
labels, backward, AdamW. Each step is timed by phase (rows read from the dataset, collate, forward by part of the
model, backward, optimizer), after `--warmup` untimed steps. Prints a Markdown table.
`--precompute_vision_features` first runs the frozen image tower once per image (`train_vqa.py
--precompute_vision_features`), timed apart, and the steps train on its features.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.lib.peers import PEERS
from benchmarks.lib.system import machine_info
from benchmarks.lib.timing import PartTimer
from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import make_synthetic_vqa
from modeling_bcqlm.training import BcQLMVQACollator, freeze_for_stage2, precompute_vision_features


PHASES = ("rows", "collate", "forward", "backward", "optimizer")


def time_steps(model, collator, dataset, batch_size: int, steps: int, warmup: int) -> list[dict[str, float]]:
    """Seconds of each phase (and of each model part within the forward) for `steps` timed training steps."""
    parts = PartTimer(model, PEERS["bcqlm"].parts)
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=1e-4)
    timings = []
    for step in range(warmup + steps):
        start = step * batch_size % (len(dataset) - batch_size)
        clock = [time.perf_counter()]
        rows = [dataset[index] for index in range(start, start + batch_size)]
        clock.append(time.perf_counter())
        batch = collator(rows)
        clock.append(time.perf_counter())
        parts.reset()
        loss = model(**batch).loss
        clock.append(time.perf_counter())
        loss.backward()
        clock.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad()
        clock.append(time.perf_counter())
        if step >= warmup:
            phases = dict(zip(PHASES, (end - begin for begin, end in zip(clock, clock[1:]))))
            timings.append({**phases, **{f"forward: {name}": seconds for name, seconds in parts.times.items()}})
    parts.remove()
    return timings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder")
    parser.add_argument("--batch_sizes", default="16,32,64", help="per-step batch sizes to time")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precompute_vision_features", action="store_true", help="the tower once per image first")
    parser.add_argument("--attn_implementation", default=None, help="the decoder's attention, as train_vqa.py's")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    processor = BcQLMProcessor.from_pretrained(args.model)
    attention = {"attn_implementation": {"text_config": args.attn_implementation}} if args.attn_implementation else {}
    model = BcQLMForConditionalGeneration.from_pretrained(args.model, **attention)
    freeze_for_stage2(model, decoder="trained")  # train_vqa.py's --recipe frozen_vision
    model.train()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    questions = (args.steps + args.warmup) * max(batch_sizes)
    dataset = make_synthetic_vqa(questions // 5 + 1, seed=1, questions_per_image=5, image_size=128)
    collator = BcQLMVQACollator(processor)

    results = {"machine": machine_info(args.threads), "model": str(args.model), "runs": {}}
    results["attn_implementation"] = model.config.text_config._attn_implementation
    if args.precompute_vision_features:
        start = time.perf_counter()
        dataset = precompute_vision_features(dataset, model, processor)
        results["precompute_ms_per_question"] = 1000 * (time.perf_counter() - start) / len(dataset)
        print(f"precomputed the vision features: {results['precompute_ms_per_question']:.2f} ms per question")
    lines = ["| batch | questions/s | " + " | ".join(f"{phase} ms" for phase in PHASES) + " | forward by part (ms) |"]
    lines.append("|---:|---:|" + "---:|" * len(PHASES) + "---|")
    for batch_size in batch_sizes:
        timings = time_steps(model, collator, dataset, batch_size, args.steps, args.warmup)
        medians = {key: statistics.median(step[key] for step in timings) for key in timings[0]}
        step_seconds = statistics.median(sum(step[phase] for phase in PHASES) for step in timings)
        results["runs"][batch_size] = {"questions_per_s": batch_size / step_seconds, "median_s": medians}
        by_part = ", ".join(
            f"{key.removeprefix('forward: ')} {1000 * value:.0f}"
            for key, value in medians.items()
            if key.startswith("forward: ")
        )
        cells = [str(batch_size), f"{batch_size / step_seconds:.0f}"] + [f"{1000 * medians[p]:.0f}" for p in PHASES]
        lines.append("| " + " | ".join(cells + [by_part]) + " |")
    print("\n".join(lines))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
