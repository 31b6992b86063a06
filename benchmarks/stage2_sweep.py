"""How fast does stage 2's read-out (adapter, Q-GCAM, decoder) learn from the frozen BreezeCLIP, by learning rate and
by where `<image>` sits in the prompt?

    python -m benchmarks.stage2_sweep --work_dir W --learning_rates 1e-3 5e-4 --steps 3000 --output sweep.json

`W` is `examples/train_default_model.py --work_dir W`: stage 2 starts from `W/composed` and trains on `W/vqa` in its
saved order, as the recipe's `frozen_vision` stage 2 does (BreezeCLIP frozen, the rest trained, AdamW, warm-up then
cosine decay, batches of `--batch_size`). BreezeCLIP is frozen, so its image and question features are computed once
per batch and reused by every run. `--image_last` also runs each rate with the prompt
`"Question: {question}\\n<image>Answer:"`. Every `--eval_every` steps each run reports the test split's accuracy per
question type and on its held-out and seen shape-colour combinations (exact match of the answer and end-of-text tokens
under teacher forcing, which equals greedy decoding's exact match) and the same on the first `--train_eval_batches`
training batches.

`--readout transformer` trains a plain transformer classifier (`oracle_readout.py`'s, fresh weights) on the same
frozen cells and question tokens instead: what a read-out with bidirectional attention over the cells and no decoder
learns from what BreezeCLIP gives, to tell the read-out's limits from the features'. `--cell_extras` appends values
to each cell for it, to find what the cells lack: from the scene, on the cell holding each object's centre, a flag
(`centre`), with the object's one-hot shape (`centre_shape`) or size, colour and shape (`centre_attributes`); from the
CLIP teacher (`--teacher`, default `W/teacher`), its zero-shot size, colour and shape of the window around each cell
(`cell_windows`, half the image's side; softmax over the captions "a {size} {colour} {shape}", summed per value) on
every cell (`teacher_windows`) or, with the flag, on the centre cells only (`teacher_centre`).
"""

import argparse
import collections
import json
import math
import time

import datasets
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor

from benchmarks.oracle_readout import TransformerReadout
from benchmarks.stage_probes import COMBINATION_CAPTIONS, COMBINATIONS, DualEncoder, window_caption_similarities
from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import ATTRIBUTE_VALUES, ATTRIBUTES
from modeling_bcqlm.training import BcQLMVQACollator


CELL_EXTRAS = ("centre", "centre_shape", "centre_attributes", "teacher_windows", "teacher_centre")
# The one-hot size, colour and shape values, in `ATTRIBUTES` order.
VALUES = [(attribute, value) for attribute in ATTRIBUTES for value in ATTRIBUTE_VALUES[attribute]]


class ImageLastProcessor:
    """A [`BcQLMProcessor`] whose prompts put `<image>` between the question and the answer cue."""

    def __init__(self, processor: BcQLMProcessor):
        self.processor = processor
        self.tokenizer = processor.tokenizer

    def __call__(self, images, text, **kwargs):
        prompts = [f"Question: {question}\n{self.processor.image_token}Answer:" for question in text]
        return self.processor(images=images, text=prompts, questions=text, **kwargs)


def oracle_cell_values(scene_json: str, grid: int, image_size: int) -> torch.Tensor:
    """`(grid * grid, 1 + len(VALUES))`: on the cell holding each object's centre 1 and its one-hot values, else 0."""
    values = torch.zeros(grid * grid, 1 + len(VALUES))
    for obj in json.loads(scene_json):
        cell = (obj["y"] * grid // image_size) * grid + obj["x"] * grid // image_size
        values[cell, 0] = 1.0
        for attribute in ATTRIBUTES:
            values[cell, 1 + VALUES.index((attribute, obj[attribute]))] = 1.0
    return values


class TeacherWindowScores:
    """The CLIP teacher's zero-shot size, colour and shape scores of the window around each cell of an image."""

    def __init__(self, teacher_dir: str, grid: int):
        processor = CLIPProcessor.from_pretrained(teacher_dir)
        model = CLIPModel.from_pretrained(teacher_dir).eval()
        self.teacher = DualEncoder(model, processor.image_processor, processor.tokenizer)
        self.grid, self.logit_scale = grid, model.logit_scale.exp().item()
        self.captions = self.teacher.embed_texts(COMBINATION_CAPTIONS)
        # (combinations, values): which values each caption names
        self.marginals = torch.tensor([[float(value in c) for _, value in VALUES] for c in COMBINATIONS])

    def __call__(self, image) -> torch.Tensor:
        """`(grid * grid, len(VALUES))`: per cell, the softmax over the captions summed per value."""
        similarities = window_caption_similarities(self.teacher, image, self.grid, 0.5, self.captions)
        return (self.logit_scale * similarities).softmax(-1) @ self.marginals


def cell_extras(kind: str, row: dict, grid: int, teacher: TeacherWindowScores | None) -> torch.Tensor:
    """`(grid * grid, size)`: the values `--cell_extras kind` appends to the cells of `row`'s image."""
    oracle = oracle_cell_values(row["scene"], grid, row["image"].width)
    if kind == "centre":
        return oracle[:, :1]
    if kind == "centre_shape":
        return oracle[:, [0] + [1 + VALUES.index(("shape", shape)) for shape in ATTRIBUTE_VALUES["shape"]]]
    if kind == "centre_attributes":
        return oracle
    scores = teacher(row["image"].convert("RGB"))
    return scores if kind == "teacher_windows" else torch.cat([oracle[:, :1], scores * oracle[:, :1]], -1)


@torch.no_grad()
def cached_batches(model, collator, rows: datasets.Dataset, batch_size: int, extras=None) -> list[dict]:
    """
    Collated batches of `rows` in order, with BreezeCLIP's image and question features in place of the inputs; with
    `extras` (a row's image's cell values `(cells, size)`), `cell_extras` `(num_images, cells, size)` too.
    """
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows.select(range(start, min(len(rows), start + batch_size)))
        batch = collator(list(chunk))
        if extras is not None:
            first_rows = {}
            for row, image in enumerate(batch["image_indices"].tolist()):
                first_rows.setdefault(image, row)
            batch["cell_extras"] = torch.stack([extras(chunk[first_rows[image]]) for image in sorted(first_rows)])
        patches = model.model.breezeclip.get_image_features(batch.pop("pixel_values")).last_hidden_state
        tokens, pooled, mask = model.model.get_question_features(
            batch["question_input_ids"], batch["question_attention_mask"]
        )
        batch.update(patches=patches, question_tokens=tokens, question_pooled=pooled, question_mask=mask)
        batch["question_type"], batch["held_out"] = chunk["question_type"], chunk["held_out"]
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


class DecoderReadout:
    """Stage 2 as the recipe trains it: the adapter, Q-GCAM and the decoder of `W/composed` (BreezeCLIP frozen)."""

    def __init__(self, work_dir: str):
        self.model = BcQLMForConditionalGeneration.from_pretrained(f"{work_dir}/composed")
        self.model.model.breezeclip.requires_grad_(False)

    def parameters(self) -> list[torch.Tensor]:
        return [param for param in self.model.parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def loss(self, batch: dict) -> torch.Tensor:
        logits = logits_of(self.model, batch)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    def correct(self, batch: dict) -> torch.Tensor:
        return answers_correct(logits_of(self.model, batch), batch["labels"])


class CellClassifierReadout:
    """
    A plain transformer classifier (`oracle_readout.TransformerReadout`, fresh weights) over the same frozen features:
    BreezeCLIP's projected cells and the question's tokens; each answer (its labelled token ids) is one class.
    """

    def __init__(self, work_dir: str, num_layers: int, train: list[dict]):
        config = BcQLMConfig.from_pretrained(f"{work_dir}/composed").breezeclip_config
        extras = train[0]["cell_extras"].shape[-1] if "cell_extras" in train[0] else 0
        self.answers = {}
        for batch in train:
            for answer in self._answer_ids(batch):
                self.answers.setdefault(answer, len(self.answers))
        self.network = TransformerReadout(
            config.text_config.vocab_size, len(self.answers), num_layers, token_size=config.projection_dim + extras
        )

    @staticmethod
    def _answer_ids(batch: dict) -> list[tuple[int, ...]]:
        return [tuple(token for token in row.tolist() if token != -100) for row in batch["labels"]]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.network.parameters())

    def train(self, mode: bool = True) -> None:
        self.network.train(mode)

    def _logits(self, batch: dict) -> torch.Tensor:
        cells = batch["patches"]
        if "cell_extras" in batch:
            cells = torch.cat([cells, batch["cell_extras"]], -1)
        cells = cells[batch["image_indices"]]
        padding = torch.zeros(cells.shape[:2], dtype=torch.bool)
        return self.network(cells, batch["question_input_ids"], batch["question_attention_mask"], padding)

    def loss(self, batch: dict) -> torch.Tensor:
        labels = torch.tensor([self.answers[answer] for answer in self._answer_ids(batch)])
        return F.cross_entropy(self._logits(batch), labels)

    def correct(self, batch: dict) -> torch.Tensor:
        labels = torch.tensor([self.answers.get(answer, -1) for answer in self._answer_ids(batch)])
        return self._logits(batch).argmax(-1) == labels


@torch.no_grad()
def accuracy(readout, batches: list[dict]) -> dict[str, float]:
    """Accuracy in percent: overall (`all`), per question type, on held-out and on seen shape-colour combinations."""
    readout.train(False)
    by_type = collections.defaultdict(list)
    for batch in batches:
        for kind, held_out, correct in zip(batch["question_type"], batch["held_out"], readout.correct(batch)):
            for key in (kind, "all", "held_out" if held_out else "seen"):
                by_type[key].append(bool(correct))
    readout.train()
    return {kind: round(100 * sum(values) / len(values), 1) for kind, values in sorted(by_type.items())}


def train_run(args, readout, learning_rate: float, train: list[dict], test: list[dict]) -> list[dict]:
    """Train `readout` with AdamW, warm-up then cosine decay; the evaluations every `--eval_every` steps."""
    readout.train()
    optimizer = torch.optim.AdamW(readout.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup, evaluations, start = args.warmup_steps, [], time.perf_counter()
    for step in range(args.steps):
        progress = (step - warmup) / max(1, args.steps - warmup)
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        optimizer.param_groups[0]["lr"] = learning_rate * scale
        loss = readout.loss(train[step % len(train)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evaluation = {"step": step + 1, "seconds": round(time.perf_counter() - start), "loss": loss.item()}
            evaluation.update(test=accuracy(readout, test), train=accuracy(readout, train[: args.train_eval_batches]))
            print(learning_rate, json.dumps(evaluation), flush=True)
            evaluations.append(evaluation)
    return evaluations


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", required=True, help="`train_default_model.py --work_dir` (its composed, vqa).")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-3, 5e-4])
    parser.add_argument("--image_last", action="store_true", help="Each rate with `<image>` after the question too.")
    parser.add_argument(
        "--readout",
        choices=("bcqlm", "transformer"),
        default="bcqlm",
        help="`transformer`: a plain transformer classifier on the same frozen features instead of stage 2's read-out.",
    )
    parser.add_argument("--layers", type=int, default=4, help="Encoder layers of `--readout transformer`.")
    parser.add_argument("--cell_extras", choices=CELL_EXTRAS, help="Values added to `--readout transformer`'s cells.")
    parser.add_argument("--teacher", help="The CLIP teacher of `--cell_extras teacher_*` (default: `W/teacher`).")
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
    extras = None
    if args.cell_extras:
        if args.readout != "transformer":
            raise ValueError("`--cell_extras` feeds the cells of `--readout transformer`; add `--readout transformer`.")
        grid = math.isqrt(model.config.image_seq_length)
        teacher = None
        if args.cell_extras.startswith("teacher"):
            teacher = TeacherWindowScores(args.teacher or f"{args.work_dir}/teacher", grid)

        def extras(row):
            return cell_extras(args.cell_extras, row, grid, teacher)

    results = {}
    for placement in ("first", "last") if args.image_last and args.readout == "bcqlm" else ("first",):
        collator = BcQLMVQACollator(processor if placement == "first" else ImageLastProcessor(processor))
        train = cached_batches(model, collator, vqa["train"], args.batch_size, extras)
        test = cached_batches(model, collator, vqa["test"], 100, extras)
        for learning_rate in args.learning_rates:
            torch.manual_seed(args.seed)
            if args.readout == "bcqlm":
                readout, name = DecoderReadout(args.work_dir), f"image {placement}, lr {learning_rate:g}"
            else:
                readout = CellClassifierReadout(args.work_dir, args.layers, train)
                name = f"transformer, lr {learning_rate:g}"
            results[name] = train_run(args, readout, learning_rate, train, test)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
