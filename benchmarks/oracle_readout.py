"""How fast does a read-out learn the synthetic scene questions when the image tower is perfect?

    python -m benchmarks.oracle_readout --readout bcqlm --steps 3000 --output bcqlm.json
    python -m benchmarks.oracle_readout --readout transformer --layers 4 --steps 12000 --output transformer.json

The image tower is replaced by oracle object tokens built from each scene's description: one token per object with
one-hot colour, shape and size, its centre (x, y as fractions of the image) and a presence flag; absent objects are
zero tokens. This bounds what any image tower can give the read-out, so the accuracy reached after N steps bounds what
the default model's stage 2 can reach in N steps.

- `--readout bcqlm`: the shipped default model's configuration with fresh weights; an MLP maps the object tokens to
  the decoder width in place of the tower and adapter, then Q-GCAM and the Llama decoder as in stage 2 (the answer's
  tokens scored; greedy generation at evaluation). `--image_last` puts `<image>` after the question.
- `--readout transformer`: a plain pre-norm transformer encoder over [object tokens; question tokens; a class token]
  and a classifier over the answers seen in training: the same information with no generation. Its object tokens are
  embedded by a two-layer MLP, or with `--object_embedding linear` by one linear map: each object's embedding is then
  the sum of its colour's, shape's, size's and position's, whatever their combination.

`--held_out_fraction` draws that share of the test images with a held-out shape-colour combination and scores their
questions apart (`held_out`, `seen`, and per type).

Both train with AdamW, batches of `--batch_size` questions drawn at random, warm-up then cosine decay, and print the
test split's accuracy per question type every `--eval_every` steps (JSON with `--output`).
"""

import argparse
import collections
import json
import math
import time

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_bcqlm import DEFAULT_MODEL, BcQLMConfig, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import COLOURS, MAX_OBJECTS, SHAPES, SIZES, make_synthetic_vqa
from modeling_bcqlm.training import BcQLMVQACollator


IMAGE_SIZE = 128
ONE_HOTS = (tuple(COLOURS), SHAPES, SIZES)
TOKEN_SIZE = sum(map(len, ONE_HOTS)) + 3  # one-hots, x, y, presence


def oracle_object_tokens(scene_json: str, num_tokens: int = MAX_OBJECTS) -> torch.Tensor:
    """`(num_tokens, TOKEN_SIZE)`: one token per object of the scene (see the module's docstring), then zero tokens."""
    tokens = torch.zeros(num_tokens, TOKEN_SIZE)
    for row, obj in enumerate(json.loads(scene_json)):
        offset = 0
        for values, value in zip(ONE_HOTS, (obj["colour"], obj["shape"], obj["size"])):
            tokens[row, offset + values.index(value)] = 1.0
            offset += len(values)
        tokens[row, offset:] = torch.tensor([obj["x"] / IMAGE_SIZE, obj["y"] / IMAGE_SIZE, 1.0])
    return tokens


class TransformerReadout(nn.Module):
    """
    A pre-norm transformer encoder over [object tokens; question tokens; class token] with an answer classifier. The
    object tokens are embedded by a two-layer MLP, or with `object_embedding="linear"` by one linear map.
    """

    def __init__(
        self,
        vocab_size: int,
        num_answers: int,
        num_layers: int,
        hidden_size: int = 128,
        max_length: int = 64,
        token_size: int = TOKEN_SIZE,
        object_embedding: str = "mlp",
    ):
        super().__init__()
        if object_embedding not in ("mlp", "linear"):
            raise ValueError(f"`object_embedding` must be 'mlp' or 'linear', got {object_embedding!r}.")
        if object_embedding == "linear":  # each object's embedding the sum of its values' embeddings
            self.objects = nn.Linear(token_size, hidden_size)
        else:
            self.objects = nn.Sequential(
                nn.Linear(token_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
            )
        self.words = nn.Embedding(vocab_size, hidden_size)
        self.positions = nn.Embedding(max_length, hidden_size)
        self.class_token = nn.Parameter(torch.randn(hidden_size) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden_size, 4, 4 * hidden_size, 0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden_size, num_answers)

    def forward(self, objects, input_ids, attention_mask, object_padding):
        """`objects` `(batch_size, num_tokens, token_size)`, `object_padding` `(batch_size, num_tokens)` True where
        absent, question `input_ids` `(batch_size, length)`: answer logits `(batch_size, num_answers)`."""
        batch_size = input_ids.shape[0]
        hidden = torch.cat(
            [self.objects(objects), self.words(input_ids), self.class_token.expand(batch_size, 1, -1)], 1
        )
        hidden = hidden + self.positions(torch.arange(hidden.shape[1]))
        padding = torch.cat([object_padding, attention_mask == 0, torch.zeros(batch_size, 1, dtype=torch.bool)], 1)
        return self.classifier(self.encoder(hidden, src_key_padding_mask=padding)[:, -1])


class BcQLMReadout:
    """The default model's Q-GCAM and decoder (fresh weights) reading oracle object tokens in place of the tower."""

    def __init__(self, image_last: bool):
        config = BcQLMConfig.from_pretrained(DEFAULT_MODEL)
        self.model = BcQLMForConditionalGeneration(config)
        self.processor = BcQLMProcessor.from_pretrained(DEFAULT_MODEL)
        # The oracle tokens are per row, not per distinct image.
        self.collator = BcQLMVQACollator(self.processor, deduplicate_images=False)
        hidden_size = config.text_config.hidden_size
        self.object_projection = nn.Sequential(
            nn.Linear(TOKEN_SIZE, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.image_last = image_last
        self.num_tokens = config.image_seq_length
        self.objects = None
        self.model.model.get_image_features = lambda pixel_values: BaseModelOutputWithPooling(
            pooler_output=self.object_projection(self.objects)
        )

    def parameters(self):
        return [*self.model.parameters(), *self.object_projection.parameters()]

    def prompts(self, rows):
        return [f"Question: {row['question']}\n<image>Answer:" if self.image_last else row["question"] for row in rows]

    def loss(self, rows):
        self.model.train()
        self.objects = torch.stack([oracle_object_tokens(row["scene"], self.num_tokens) for row in rows])
        rows = [{**row, "question": prompt} for row, prompt in zip(rows, self.prompts(rows))]
        return self.model(**self.collator(rows)).loss

    @torch.no_grad()
    def answer(self, rows):
        self.model.eval()
        self.objects = torch.stack([oracle_object_tokens(row["scene"], self.num_tokens) for row in rows])
        inputs = self.processor(images=[row["image"] for row in rows], text=self.prompts(rows), return_tensors="pt")
        generated = self.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        texts = self.processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [text.strip() for text in texts]


class ClassifierReadout:
    def __init__(self, answers: list[str], num_layers: int, object_embedding: str = "mlp"):
        self.tokenizer = BcQLMProcessor.from_pretrained(DEFAULT_MODEL).tokenizer
        self.answers = sorted(set(answers))
        self.network = TransformerReadout(
            len(self.tokenizer), len(self.answers), num_layers, object_embedding=object_embedding
        )

    def parameters(self):
        return list(self.network.parameters())

    def _logits(self, rows):
        objects = torch.stack([oracle_object_tokens(row["scene"]) for row in rows])
        text = self.tokenizer([row["question"] for row in rows], padding=True, return_tensors="pt")
        return self.network(objects, text.input_ids, text.attention_mask, objects[..., -1] == 0)

    def loss(self, rows):
        self.network.train()
        labels = torch.tensor([self.answers.index(row["answer"]) for row in rows])
        return nn.functional.cross_entropy(self._logits(rows), labels)

    @torch.no_grad()
    def answer(self, rows):
        self.network.eval()
        return [self.answers[index] for index in self._logits(rows).argmax(-1).tolist()]


def accuracy_by_type(readout, rows, batch_size: int = 50) -> dict[str, float]:
    """
    Accuracy in percent per question type and `overall`; where `rows` hold held-out shape-colour combinations, also
    `held_out` and `seen`, and each type's on them apart (`"attribute, held_out"`).
    """
    correct, total = collections.Counter(), collections.Counter()
    split = any(row["held_out"] for row in rows)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        for row, answer in zip(batch, readout.answer(batch)):
            kind = row["question_type"]
            keys = [kind, "overall"]
            if split:
                group = "held_out" if row["held_out"] else "seen"
                keys += [group, f"{kind}, {group}"]
            for key in keys:
                total[key] += 1
                correct[key] += answer == row["answer"]
    return {key: round(100 * correct[key] / total[key], 1) for key in sorted(total)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readout", choices=("bcqlm", "transformer"), default="bcqlm")
    parser.add_argument("--layers", type=int, default=2, help="Encoder layers of `--readout transformer`.")
    parser.add_argument(
        "--object_embedding",
        choices=("mlp", "linear"),
        default="mlp",
        help="`--readout transformer`: embed each object token by a two-layer MLP or by one linear map.",
    )
    parser.add_argument("--image_last", action="store_true", help="`--readout bcqlm`: `<image>` after the question.")
    parser.add_argument("--train_images", type=int, default=6000)
    parser.add_argument("--test_images", type=int, default=100)
    parser.add_argument(
        "--held_out_fraction",
        type=float,
        default=0.0,
        help="Share of test images holding a held-out shape-colour combination; their questions are scored apart.",
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--output", help="JSON file of the evaluations.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    train = make_synthetic_vqa(args.train_images, seed=0, image_size=IMAGE_SIZE, split="train")
    test = make_synthetic_vqa(
        args.test_images, seed=0, image_size=IMAGE_SIZE, split="test", held_out_fraction=args.held_out_fraction
    )
    if args.readout == "bcqlm":
        readout = BcQLMReadout(args.image_last)
    else:  # the classifier needs no pixels
        train, test = train.remove_columns("image"), test.remove_columns("image")
        readout = ClassifierReadout(train["answer"], args.layers, args.object_embedding)
    test_rows = list(test)

    parameters = readout.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
    )
    rng = np.random.default_rng(0)
    evaluations, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = readout.loss([train[int(index)] for index in rng.integers(0, len(train), args.batch_size)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = accuracy_by_type(readout, test_rows)
            evaluations.append(
                {"step": step, "seconds": round(time.perf_counter() - start, 1), "loss": loss.item(), **accuracy}
            )
            print(json.dumps(evaluations[-1]), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"arguments": vars(args), "evaluations": evaluations}, f, indent=2)
    return evaluations


if __name__ == "__main__":
    main()
