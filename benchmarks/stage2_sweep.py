"""How fast does stage 2's read-out (adapter, Q-GCAM, decoder) learn from the frozen BreezeCLIP, by learning rate and
by where `<image>` sits in the prompt?

    python -m benchmarks.stage2_sweep --work_dir W --learning_rates 1e-3 5e-4 --steps 3000 --output sweep.json

`W` is `examples/train_default_model.py --work_dir W`: stage 2 starts from `W/composed` and trains on `W/vqa` in its
saved order, as the recipe's `frozen_vision` stage 2 does (BreezeCLIP frozen, the rest trained, AdamW, warm-up then
cosine decay, batches of `--batch_size`). BreezeCLIP is frozen, so its image and question features are computed once
per batch and reused by every run. `--image_last` also runs each rate with the prompt
`"Question: {question}\\n<image>Answer:"`. Every `--eval_every` steps each run reports the test split's accuracy per
question type (exact match of the answer and end-of-text tokens under teacher forcing, which equals greedy decoding's
exact match) and the same on the first `--train_eval_batches` training batches.
"""

import argparse
import collections
import json
import math
import time

import datasets
import torch
import torch.nn.functional as F

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.training import BcQLMVQACollator


class ImageLastProcessor:
    """A [`BcQLMProcessor`] whose prompts put `<image>` between the question and the answer cue."""

    def __init__(self, processor: BcQLMProcessor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def __call__(self, images, text, **kwargs):
        prompts = [f"Question: {question}\n{self.processor.image_token}Answer:" for question in text]
        return self.processor(images=images, text=prompts, questions=text, **kwargs)


@torch.no_grad()
def cached_batches(model, collator, rows: datasets.Dataset, batch_size: int) -> list[dict]:
    """Collated batches of `rows` in order, with BreezeCLIP's image and question features in place of the inputs."""
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(len(rows), start + batch_size)))
        batch = collator(list(chunk))
        patches = model.model.breezeclip.get_image_features(batch.pop("pixel_values")).last_hidden_state
        tokens, pooled, mask = model.model.get_question_features(
            batch.pop("question_input_ids"), batch.pop("question_attention_mask")
        )
        batch.update(patches=patches, question_tokens=tokens, question_pooled=pooled, question_mask=mask)
        batch["question_type"] = chunk["question_type"]
        batches.append(batch)
    return batches


def logits_of(model, batch: dict) -> torch.Tensor:
    """The decoder's logits `(batch_size, sequence_length, vocab_size)` from a cached batch."""
    inner = model.model
    image_features = inner.visual_adapter(batch["patches"])[batch["image_indices"]]
    fused = inner.qgcam(image_features, batch["question_tokens"], batch["question_pooled"], batch["question_mask"])
    inputs_embeds = inner.embed_prompt(batch["input_ids"], fused)
    hidden = inner.language_model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"])
    return model.lm_head(hidden.last_hidden_state)


def answers_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(batch_size,)` booleans: every labelled token (answer and end-of-text) is the argmax of the step before it."""
    predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    return ((predicted == targets) | (targets == -100)).all(1)


@torch.no_grad()
def accuracy(model, batches: list[dict]) -> dict[str, float]:
    """Accuracy in percent, overall (`all`) and per question type."""
    model.eval()
    by_type = collections.defaultdict(list)
    for batch in batches:
        for kind, correct in zip(batch["question_type"], answers_correct(logits_of(model, batch), batch["labels"])):
            by_type[kind].append(bool(correct))
            by_type["all"].append(bool(correct))
    model.train()
    return {kind: round(100 * sum(values) / len(values), 1) for kind, values in sorted(by_type.items())}


def train_run(args, learning_rate: float, train: list[dict], test: list[dict]) -> list[dict]:
    """One stage-2 run from `W/composed`; the evaluations every `--eval_every` steps."""
    torch.manual_seed(args.seed)
    model = BcQLMForConditionalGeneration.from_pretrained(f"{args.work_dir}/composed")
    model.model.breezeclip.requires_grad_(False)
    model.train()
    trained = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    warmup, evaluations, start = args.warmup_steps, [], time.perf_counter()
    for step in range(args.steps):
        progress = (step - warmup) / max(1, args.steps - warmup)
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        optimizer.param_groups[0]["lr"] = learning_rate * scale
        batch = train[step % len(train)]
        logits = logits_of(model, batch)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evaluation = {"step": step + 1, "seconds": round(time.perf_counter() - start), "loss": loss.item()}
            evaluation.update(test=accuracy(model, test), train=accuracy(model, train[: args.train_eval_batches]))
            print(learning_rate, json.dumps(evaluation), flush=True)
            evaluations.append(evaluation)
    return evaluations


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", required=True, help="`train_default_model.py --work_dir` (its composed, vqa).")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-3, 5e-4])
    parser.add_argument("--image_last", action="store_true", help="Also run each rate with `<image>` after the question.")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--eval_every", type=int, default=1000)
    parser.add_argument("--train_eval_batches", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--output", help="JSON file of the evaluations.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = BcQLMForConditionalGeneration.from_pretrained(f"{args.work_dir}/composed").eval()
    processor = BcQLMProcessor.from_pretrained(f"{args.work_dir}/composed")
    vqa = datasets.load_from_disk(f"{args.work_dir}/vqa")
    results = {}
    for placement in ("first", "last") if args.image_last else ("first",):
        collator = BcQLMVQACollator(processor if placement == "first" else ImageLastProcessor(processor))
        train = cached_batches(model, collator, vqa["train"], args.batch_size)
        test = cached_batches(model, collator, vqa["test"], 100)
        for learning_rate in args.learning_rates:
            results[f"image {placement}, lr {learning_rate:g}"] = train_run(args, learning_rate, train, test)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
