"""Can BreezeCLIP's image tower learn what each cell holds when it is told? (issue 16)

    python -m benchmarks.tower_capacity --image_sizes 64,128 --steps 500 --output benchmarks/results/tower_capacity.json

The image tower of a BcQLM folder's config (default: the bundled model's MobileViT), built and initialised as
`BreezeCLIPModel` builds it for stage 1 (MobileViT's own init draws the batch-norm scales from N(0, 0.02), and a
tower so built learns several times slower), is trained with a linear head per attribute on the colour and shape of
the object whose centre lies in each cell of the 4 x 4
grid (the cells `benchmarks/stage_probes.py` probes; empty cells and cells holding two centres carry no label), on
synthetic scenes drawn at 128 px (the teacher's input) and resized by the model's image processor to each
`--image_sizes` size. A tower map finer than the grid is average-pooled to it, as stage 1 pools the teacher's patch
tokens. AdamW, batch `--batch_size`, `--steps` steps; then the accuracy on the labelled cells of the train scenes and
of test scenes from the training distribution (no held-out combinations), in eval mode.

It bounds what stage 1 can put in the cells: a tower that does not learn an attribute from its labels within a budget
will not learn it faster from a teacher's targets. Prints a Markdown table.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.lib.report import write_json
from benchmarks.lib.system import machine_info
from benchmarks.stage_probes import NONE, cell_labels
from modeling_bcqlm import DEFAULT_MODEL, BcQLMConfig, BcQLMImageProcessor, BreezeCLIPModel
from modeling_bcqlm.data.synthetic_shapes import COLOURS, SHAPES, make_synthetic_scenes, render_scene


GRID = (4, 4)
SCENE_SIZE = 128
CLASSES = {"colour": list(COLOURS), "shape": list(SHAPES)}


def cell_targets(scenes: list, image_size: int) -> dict[str, torch.Tensor]:
    """Per attribute, `(scenes, cells)` class indices of `CLASSES`; -100 for empty cells and cells with two centres."""
    targets = {attribute: [] for attribute in CLASSES}
    for scene in scenes:
        labels = cell_labels(scene, GRID, image_size)
        for attribute, classes in CLASSES.items():
            targets[attribute].append(
                [-100 if label in (None, NONE) else classes.index(label) for label in labels[attribute]]
            )
    return {attribute: torch.tensor(rows) for attribute, rows in targets.items()}


class CellClassifier(torch.nn.Module):
    """BreezeCLIP's image tower with a linear head per attribute on each cell: logits `(batch, cells, classes)`."""

    def __init__(self, breezeclip_config):
        super().__init__()
        self.tower = BreezeCLIPModel(breezeclip_config).vision_model
        channels = breezeclip_config.vision_config.neck_hidden_sizes[-1]
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(channels, len(c)) for name, c in CLASSES.items()})

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        feature_map = self.tower(pixel_values).last_hidden_state
        cells = F.adaptive_avg_pool2d(feature_map, GRID).flatten(2).transpose(1, 2)
        return {name: head(cells) for name, head in self.heads.items()}


@torch.no_grad()
def accuracy(model: CellClassifier, pixel_values: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict:
    """Share of the labelled cells whose attribute is predicted right, per attribute, with the count of cells."""
    model.eval()
    logits = model(pixel_values)
    model.train()
    results = {}
    for name, target in targets.items():
        labelled = target != -100
        correct = (logits[name].argmax(-1)[labelled] == target[labelled]).float()
        results[name] = {"accuracy": correct.mean().item(), "cells": int(labelled.sum())}
    return results


def train_and_score(breezeclip_config, train: tuple, test: tuple, args) -> dict:
    """Train a `CellClassifier` for `args.steps` steps; its accuracies, losses and seconds."""
    torch.manual_seed(args.seed)
    model = CellClassifier(breezeclip_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    (pixels, targets), generator = train, torch.Generator().manual_seed(args.seed)
    losses, start = [], time.perf_counter()
    for _ in range(args.steps):
        batch = torch.randint(len(pixels), (args.batch_size,), generator=generator)
        logits = model(pixels[batch])
        loss = sum(F.cross_entropy(logits[n].flatten(0, 1), targets[n][batch].flatten()) for n in CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        feature_map = list(model.tower(pixels[:1]).last_hidden_state.shape[2:])
    return {
        "train": accuracy(model, *train),
        "test": accuracy(model, *test),
        "feature_map": feature_map,
        "losses": losses,
        "seconds": seconds,
    }


def markdown(results: dict) -> str:
    lines = ["| tower input | steps | train: colour | train: shape | test: colour | test: shape | minutes |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for size, run in results["runs"].items():
        cells = [f"{100 * run[split][name]['accuracy']:.1f}" for split in ("train", "test") for name in CLASSES]
        lines.append(f"| {size} px | {results['steps']} | " + " | ".join(cells) + f" | {run['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder: its image tower's config and processor")
    parser.add_argument("--image_sizes", default="64,128", help="the tower's input sizes to compare")
    parser.add_argument("--train_scenes", type=int, default=4000)
    parser.add_argument("--test_scenes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    breezeclip_config = BcQLMConfig.from_pretrained(args.model).breezeclip_config
    image_processor = BcQLMImageProcessor.from_pretrained(args.model)
    scenes = {
        "train": [scene for scene, _ in make_synthetic_scenes(args.train_scenes, args.seed, SCENE_SIZE, "train")],
        "test": [scene for scene, _ in make_synthetic_scenes(args.test_scenes, args.seed, SCENE_SIZE, "test", 0.0)],
    }
    images = {split: [render_scene(scene, SCENE_SIZE) for scene in scenes[split]] for split in scenes}
    targets = {split: cell_targets(scenes[split], SCENE_SIZE) for split in scenes}
    results = {"machine": machine_info(args.threads), "arguments": vars(args), "steps": args.steps, "runs": {}}
    for size in [int(size) for size in args.image_sizes.split(",")]:
        resize = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
        pixels = {split: image_processor(images[split], return_tensors="pt", **resize).pixel_values for split in images}
        breezeclip_config.vision_config.image_size = size
        train, test = (pixels["train"], targets["train"]), (pixels["test"], targets["test"])
        results["runs"][size] = train_and_score(breezeclip_config, train, test, args)
    print(markdown(results))
    if args.output:
        write_json(results, Path(args.output))
    return results


if __name__ == "__main__":
    main()
