"""Each stage of a BcQLM measured on its own, on the synthetic shape scenes (issue 16): does the image side know what
is in the image, before Q-GCAM and the decoder read it?

    python -m benchmarks.stage_probes --train_scenes 300 --test_scenes 100 --output benchmarks/results/stage_probes.json
    python -m benchmarks.stage_probes --model model --breezeclip work/breezeclip --teacher work/teacher --output r.json

(a) Caption retrieval with hard negatives, for each dual encoder given: `bcqlm`, the BreezeCLIP inside the BcQLM folder
    (with its image processor and question tokenizer; stage 2 may have trained it further: the default model's `--recipe
    full` does), `stage 1`, a BreezeCLIP folder as distillation left it (`--breezeclip`: model, image processor and
    tokenizer, `examples/train_default_model.py --work_dir W` keeps it in `W/breezeclip`), and `teacher`, the CLIP
    teacher (`--teacher`, a `CLIPModel` folder with its `CLIPProcessor`, `W/teacher`). Each test scene's true caption is
    scored (cosine similarity of the embeddings of the image and the caption) against negatives made from the same scene
    with one thing changed: one object's colour, shape or size, the count (an object added or removed), or two
    neighbouring objects' left/right order swapped; `other scene` (the next scene's caption) is an easy control. Per
    kind: the share of (scene, negative) pairs where the true caption scores higher (ties count half; chance is 0.5),
    the ties, and the negatives whose token ids equal the true caption's (out-of-vocabulary words and truncation hide a
    change from the text tower). Changed or added objects never take a held-out shape-colour combination they did not
    have, which a tower could reject as unfamiliar without looking at the image.
(b) Linear probes of the image side: for each cell of the image tower's last feature map, the label is the colour /
    shape / size of the object whose centre lies in that cell ("none" for an empty cell; cells holding two centres are
    left out). A logistic-regression probe (torch, full batch) is fitted on the train scenes' cells and scored on the
    test scenes', for the cell's pixels (8x8 average-pooled, what a probe gets with no tower), the BcQLM's BreezeCLIP's
    raw tower cells, its visual tokens (`get_image_features(pixel_values).pooler_output`, the adapter's output) and
    the stage-1 BreezeCLIP's raw tower cells and its projected cells (with `--breezeclip`; the projected cells are
    what crop distillation trains and what the BcQLM's adapter reads); with the majority-class baselines, over all
    cells and over the cells holding an object.
(c) With `--teacher`, what stage 1's crop distillation can pass on: the teacher's zero-shot size, colour and shape of
    the object centred in each cell, from its embedding of the window around the cell (`cell_windows`, `--crop_window`
    times the image's side) against its embeddings of every "a {size} {colour} {shape}"; over the test scenes' cells
    holding one object's centre.
(d) The read-out from perfect object tokens is `benchmarks/oracle_readout.py`.
(e) Held-out shape-colour combinations (`HELD_OUT_COMBINATIONS`, never in the train split): (b)'s probes of size,
    colour and shape on the cells holding one object's centre, fitted on the train scenes (where no held-out
    combination occurs, as in stage 2's training) and on as many other test-split scenes (half holding one), scored
    on `--test_scenes` further test scenes that each hold one, on the held-out objects' cells and the others' apart.
    Fitted on the train split, a probe may read an attribute from another one that goes with it there (no green
    object is a triangle); fitted with held-out combinations too, it shows whether the cells carry the attribute.
(f) With `--teacher` and `--breezeclip` of the same embedding width, how closely the stage-1 cells follow the teacher
    where stage 1 never trained them: crop distillation trains each cell's projected features (what the BcQLM's
    adapter reads) towards the teacher's embedding of the window showing the object centred in it alone (a blank
    window elsewhere), standardised per dimension. On (e)'s scoring scenes, the cells mapped back to the teacher's
    scale (its window embeddings' mean and spread over all their cells), on the cells holding one object's centre: the
    mean cosine similarity to the teacher's window embedding, and the zero-shot size, colour and shape read from each
    as in (c) (the teacher's own beside it), on the held-out objects' cells and the others' apart. This reads the
    teacher's directions; a reader fitted on seen combinations, as (e)'s probe and stage 2's read-out are, may read
    others (`benchmarks/README.md`, "Stage 1 without the patch tokens": (e) predicts the answers, (f) does not).

Train scenes come from the `train` split (those the model was trained on), test scenes from the `test` split, both
with `--seed`; `--held_out_fraction` 0 keeps the test scenes in the training distribution. Prints Markdown tables.
"""

import argparse
import collections
import itertools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

from benchmarks.lib.report import write_json
from benchmarks.lib.system import machine_info
from modeling_bcqlm import (
    DEFAULT_MODEL,
    BcQLMForConditionalGeneration,
    BcQLMImageProcessor,
    BcQLMProcessor,
    BreezeCLIPModel,
)
from modeling_bcqlm.data.images import cell_windows, object_windows
from modeling_bcqlm.data.synthetic_shapes import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    CAPTION_TEMPLATES,
    HELD_OUT_COMBINATIONS,
    MAX_OBJECTS,
    MIN_IMAGE_SIZE,
    SceneObject,
    format_caption,
    make_synthetic_scenes,
    object_box,
    object_radius,
    render_scene,
)


NEGATIVE_KINDS = ("colour", "shape", "size", "count", "swap", "other scene")
# "object": is there an object's centre in the cell at all (what counting needs); then its attributes.
PROBE_ATTRIBUTES = ("object", "colour", "shape", "size")
NONE = "none"
PIXEL_POOL = 8  # each cell's pixels average-pooled to 8 x 8 for the no-tower reference probe


def caption_template(scene: list[SceneObject], caption: str) -> str:
    """The template of `CAPTION_TEMPLATES` that `caption` was written in (negatives keep it)."""
    return next(template for template in CAPTION_TEMPLATES if format_caption(scene, template) == caption)


def _allowed(shape: str, colour: str) -> bool:
    return (shape, colour) not in HELD_OUT_COMBINATIONS


def _pick(rng, choices):
    return choices[int(rng.integers(len(choices)))]


def perturb_scene(scene: list[SceneObject], kind: str, rng: np.random.Generator, image_size: int):
    """
    `scene` with one thing changed (`kind`: an attribute of `ATTRIBUTES`, "count" or "swap"), or None where the scene
    allows no such change (a swap needs two neighbours, left to right, that read differently).
    """
    ordered = sorted(scene, key=lambda obj: (obj.x, obj.y))
    if kind in ATTRIBUTES:
        index = int(rng.integers(len(ordered)))
        obj = ordered[index]
        changes = [replace(obj, **{kind: value}) for value in ATTRIBUTE_VALUES[kind] if value != getattr(obj, kind)]
        # No new held-out combination (a held-out object's size may still change).
        combination = (obj.shape, obj.colour)
        changes = [new for new in changes if _allowed(new.shape, new.colour) or (new.shape, new.colour) == combination]
        ordered[index] = _pick(rng, changes)
        return ordered
    if kind == "count":
        if len(ordered) == MAX_OBJECTS or (len(ordered) > 1 and rng.random() < 0.5):
            del ordered[int(rng.integers(len(ordered)))]
            return ordered
        # The added object is only named, never drawn: any centre gives it a place in the left-to-right order.
        shape, colour = _pick(rng, [combination for combination in _combinations() if _allowed(*combination)])
        size = _pick(rng, ATTRIBUTE_VALUES["size"])
        x, y = (int(value) for value in rng.integers(0, image_size, 2))
        return ordered + [SceneObject(shape, colour, size, x, y, object_radius(size, image_size))]
    if kind != "swap":
        raise ValueError(f"Unknown kind of change {kind!r}.")
    neighbours = [index for index in range(len(ordered) - 1) if _phrase(ordered[index]) != _phrase(ordered[index + 1])]
    if not neighbours:
        return None
    index = _pick(rng, neighbours)
    left, right = ordered[index], ordered[index + 1]
    # Trading centres trades their places in the order and nothing else.
    ordered[index], ordered[index + 1] = replace(left, x=right.x, y=right.y), replace(right, x=left.x, y=left.y)
    return ordered


def _combinations():
    return [(shape, colour) for shape in ATTRIBUTE_VALUES["shape"] for colour in ATTRIBUTE_VALUES["colour"]]


def _phrase(obj: SceneObject) -> tuple:
    return obj.size, obj.colour, obj.shape


def hard_negatives(scenes, captions, rng, image_size: int, per_kind: int) -> dict[str, list[tuple[int, str]]]:
    """Per kind of `NEGATIVE_KINDS`, (scene index, negative caption) pairs: `per_kind` per scene that allows one."""
    negatives = {kind: [] for kind in NEGATIVE_KINDS}
    for index, (scene, caption) in enumerate(zip(scenes, captions)):
        template = caption_template(scene, caption)
        for kind in NEGATIVE_KINDS[:-1]:
            for _ in range(per_kind):
                changed = perturb_scene(scene, kind, rng, image_size)
                if changed is not None:
                    negatives[kind].append((index, format_caption(changed, template)))
        negatives["other scene"].append((index, captions[(index + 1) % len(captions)]))
    return negatives


@dataclass
class DualEncoder:
    """An image tower and a text tower compared by cosine similarity (BreezeCLIP or a CLIP teacher), with its inputs."""

    model: torch.nn.Module
    image_processor: object
    tokenizer: object
    batch_size: int = 64

    def embed_images(self, images: list) -> torch.Tensor:
        return F.normalize(self.image_features(images), dim=-1)

    @torch.no_grad()
    def image_features(self, images: list, field: str = "pooler_output") -> torch.Tensor:
        """
        `get_image_features(...)`'s `field` of `images`, unnormalised: the projected embeddings `(images, dim)`, or with
        "last_hidden_state" a BreezeCLIP's projected cells `(images, cells, dim)` (what crop distillation trains).
        """
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixel_values = self.image_processor(images[start : start + self.batch_size], return_tensors="pt")
            chunks.append(getattr(self.model.get_image_features(pixel_values=pixel_values["pixel_values"]), field))
        return torch.cat(chunks)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self._tokenize(texts[start : start + self.batch_size], return_tensors="pt")
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            chunks.append(self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)
        return F.normalize(torch.cat(chunks), dim=-1)

    def token_ids(self, text: str) -> list[int]:
        return self._tokenize(text)["input_ids"]

    def _tokenize(self, texts, **kwargs):
        # As stage 1 tokenized its captions: padded, truncated to the tokenizer's length, no token type ids.
        return self.tokenizer(texts, padding=True, truncation=True, return_token_type_ids=False, **kwargs)


def retrieval(encoder: DualEncoder, images: list, captions: list[str], negatives: dict) -> dict:
    """
    Per kind of negative: `accuracy` (the share of pairs where the true caption scores above the negative, ties
    counting half), `pairs`, `ties` and `identical_tokens` (negatives whose token ids equal the true caption's).
    """
    image_embeds = encoder.embed_images(images)
    true_scores = (image_embeds * encoder.embed_texts(captions)).sum(-1)
    true_ids = [encoder.token_ids(caption) for caption in captions]
    results = {}
    for kind, pairs in negatives.items():
        if not pairs:
            results[kind] = {"accuracy": None, "pairs": 0, "ties": None, "identical_tokens": None}
            continue
        indices = torch.tensor([index for index, _ in pairs])
        scores = (image_embeds[indices] * encoder.embed_texts([text for _, text in pairs])).sum(-1)
        # Identical token ids give identical embeddings up to the padding's rounding.
        ties = torch.isclose(true_scores[indices], scores, rtol=0.0, atol=1e-5)
        wins = (true_scores[indices] > scores) & ~ties
        results[kind] = {
            "accuracy": (wins.sum().item() + 0.5 * ties.sum().item()) / len(pairs),
            "pairs": len(pairs),
            "ties": ties.float().mean().item(),
            "identical_tokens": float(np.mean([encoder.token_ids(text) == true_ids[index] for index, text in pairs])),
        }
    return results


def tokenizer_stats(tokenizer, captions: list[str]) -> dict:
    """How much of `captions` the text tower cannot see: out-of-vocabulary words and captions cut by truncation."""
    words = [word for caption in captions for word in re.findall(r"\w+|[^\w\s]", caption.lower())]
    unknown = {word for word in set(words) if tokenizer.unk_token in tokenizer.tokenize(word)}
    lengths = [len(ids) for ids in tokenizer(captions, verbose=False)["input_ids"]]
    return {
        "oov_word_rate": sum(word in unknown for word in words) / len(words),
        "oov_words": sorted(unknown),
        "model_max_length": tokenizer.model_max_length,
        "longest_caption_tokens": max(lengths),
        "truncated_captions": float(np.mean([length > tokenizer.model_max_length for length in lengths])),
    }


def cell_labels(scene: list[SceneObject], grid: tuple[int, int], image_size: int) -> dict[str, list]:
    """
    Per attribute of `PROBE_ATTRIBUTES`, each cell's label in row-major order (as the tower's map flattens): the
    attribute of the object whose centre lies in the cell ("object" for `object`), `NONE` for an empty cell, None for a
    cell holding two centres (left out).
    """
    occupants = cell_objects(scene, grid, image_size)
    labels = {}
    for attribute in PROBE_ATTRIBUTES:
        values = [_cell_label(cell[0], attribute) if cell else NONE for cell in occupants]
        labels[attribute] = [None if len(cell) > 1 else value for cell, value in zip(occupants, values)]
    return labels


def cell_objects(scene: list[SceneObject], grid: tuple[int, int], image_size: int) -> list[list[SceneObject]]:
    """The objects whose centre lies in each cell of `grid` (rows, columns), cells in row-major order."""
    rows, columns = grid
    occupants = [[] for _ in range(rows * columns)]
    for obj in scene:
        occupants[(obj.y * rows // image_size) * columns + obj.x * columns // image_size].append(obj)
    return occupants


def _cell_label(obj: SceneObject, attribute: str) -> str:
    return "object" if attribute == "object" else getattr(obj, attribute)


@torch.no_grad()
def cell_features(model: BcQLMForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[dict, tuple[int, int]]:
    """
    `(images, cells, features)` per representation: the cells' pixels (average-pooled), BreezeCLIP's raw tower cells
    and the BcQLM visual tokens (left out where they are not one per cell: `vision_feature_mode="pooled"`); and the
    grid (rows, columns) of the tower's last map.
    """
    feature_map = model.model.breezeclip.vision_model(pixel_values=pixel_values).last_hidden_state
    rows, columns = feature_map.shape[2:]
    pooled = F.adaptive_avg_pool2d(pixel_values, (rows * PIXEL_POOL, columns * PIXEL_POOL))
    # (images, 3, rows, columns, 8, 8) -> (images, cells, 3 * 8 * 8), cells in row-major order
    pixels = pooled.unfold(2, PIXEL_POOL, PIXEL_POOL).unfold(3, PIXEL_POOL, PIXEL_POOL)
    features = {
        "cell pixels": pixels.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2),
        "tower cells": feature_map.flatten(2).transpose(1, 2),
    }
    tokens = model.get_image_features(pixel_values).pooler_output
    if tokens.shape[1] == rows * columns:
        features["visual tokens"] = tokens
    return features, (rows, columns)


def batched_cell_features(model, image_processor, images: list, stage1=None, batch_size: int = 64) -> tuple:
    """
    `cell_features` of `images` in batches, with a stage-1 BreezeCLIP's raw tower cells and projected cells (what
    the BcQLM's adapter reads) when `stage1` is given.
    """
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        features, grid = cell_features(model, image_processor(batch, return_tensors="pt")["pixel_values"])
        if stage1 is not None:
            pixel_values = stage1.image_processor(batch, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                feature_map = stage1.model.vision_model(pixel_values=pixel_values).last_hidden_state
                if tuple(feature_map.shape[2:]) == grid:
                    cells = feature_map.flatten(2).transpose(1, 2)
                    features["stage-1 tower cells"] = cells
                    features["stage-1 projected cells"] = stage1.model.visual_projection(cells)
        chunks.append(features)
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}, grid


def fit_probe(train_x: torch.Tensor, train_labels: list[str], test_x: torch.Tensor, steps: int) -> list[str]:
    """A multinomial logistic regression on standardised features (full batch, Adam, a little L2); test predictions."""
    classes = sorted(set(train_labels))
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, y = (train_x - mean) / std, torch.tensor([classes.index(label) for label in train_labels])
    probe = torch.nn.Linear(x.shape[1], len(classes))
    # A zero start makes the fit deterministic.
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(probe(x), y) + 1e-3 * probe.weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return [classes[index] for index in probe((test_x - mean) / std).argmax(-1).tolist()]


def probe_attribute(train_x, train_labels: list[str], test_x, test_labels: list[str], steps: int) -> dict:
    """
    Two probes of one attribute, each with its test accuracy and the majority-class baseline: `all_cells` (empty ones
    labelled `NONE`) and `object_cells` (fitted and scored on the cells holding an object only; None for `object`).
    """
    results = {}
    for cells, keep in (("all_cells", lambda label: True), ("object_cells", lambda label: label != NONE)):
        train_kept = [index for index, label in enumerate(train_labels) if keep(label)]
        test_kept = [index for index, label in enumerate(test_labels) if keep(label)]
        labels, truth = [train_labels[index] for index in train_kept], [test_labels[index] for index in test_kept]
        if len(set(labels)) < 2 or not truth:  # nothing to tell apart
            results[cells] = None
            continue
        predictions = fit_probe(train_x[train_kept], labels, test_x[test_kept], steps)
        majority = max(sorted(set(labels)), key=labels.count)
        results[cells] = {
            "accuracy": float(np.mean([predicted == true for predicted, true in zip(predictions, truth)])),
            "majority_baseline": float(np.mean([true == majority for true in truth])),
            "majority_class": majority,
            "train_cells": len(labels),
            "test_cells": len(truth),
        }
    return results


def probes(model, image_processor, train: list, test: list, image_size: int, steps: int, stage1=None) -> dict:
    """Linear probes of every representation of `batched_cell_features`, fitted on the `train` scenes' cells."""
    train_images = [render_scene(scene, image_size) for scene in train]
    test_images = [render_scene(scene, image_size) for scene in test]
    train_features, grid = batched_cell_features(model, image_processor, train_images, stage1)
    test_features, _ = batched_cell_features(model, image_processor, test_images, stage1)

    def labels(scenes):
        per_scene = [cell_labels(scene, grid, image_size) for scene in scenes]
        return {key: [label for cells in per_scene for label in cells[key]] for key in PROBE_ATTRIBUTES}

    train_labels, test_labels = labels(train), labels(test)
    # A cell holding two centres is ambiguous for every attribute alike.
    train_kept = [index for index, label in enumerate(train_labels["colour"]) if label is not None]
    test_kept = [index for index, label in enumerate(test_labels["colour"]) if label is not None]
    results = {
        "grid": list(grid),
        "train_cells": len(train_kept),
        "test_cells": len(test_kept),
        "ambiguous_train_cells": len(train_labels["colour"]) - len(train_kept),
        "ambiguous_test_cells": len(test_labels["colour"]) - len(test_kept),
        "representations": {},
    }
    for name in train_features:
        train_x, test_x = train_features[name].flatten(0, 1)[train_kept], test_features[name].flatten(0, 1)[test_kept]
        results["representations"][name] = {"dims": train_x.shape[1]}
        for attribute in PROBE_ATTRIBUTES:
            results["representations"][name][attribute] = probe_attribute(
                train_x,
                [train_labels[attribute][index] for index in train_kept],
                test_x,
                [test_labels[attribute][index] for index in test_kept],
                steps,
            )
    return results


def single_object_cells(model, image_processor, scenes: list, image_size: int, stage1=None) -> tuple[dict, list]:
    """
    `batched_cell_features` of the cells holding exactly one object's centre, `(cells, features)` per representation,
    and those objects.
    """
    features, grid = batched_cell_features(
        model, image_processor, [render_scene(scene, image_size) for scene in scenes], stage1
    )
    rows, objects = [], []
    for index, scene in enumerate(scenes):
        for cell, occupants in enumerate(cell_objects(scene, grid, image_size)):
            if len(occupants) == 1:
                rows.append(index * grid[0] * grid[1] + cell)
                objects.append(occupants[0])
    return {name: values.flatten(0, 1)[rows] for name, values in features.items()}, objects


def held_out_probes(
    model, image_processor, fits: dict[str, list], test: list, image_size: int, steps: int, stage1=None
):
    """
    Do the image side's attributes hold for shape-colour combinations it never saw? Per representation and attribute,
    a probe of the cells holding one object's centre, fitted on each scene list of `fits`, scored on the `test`
    scenes' such cells apart: those whose object has a held-out combination and the others (None where there are
    none).
    """
    test_x, test_objects = single_object_cells(model, image_processor, test, image_size, stage1)
    held_out = np.array([(obj.shape, obj.colour) in HELD_OUT_COMBINATIONS for obj in test_objects], dtype=bool)
    results = {"test_cells": {"held_out": int(held_out.sum()), "seen": int((~held_out).sum())}, "fitted_on": {}}
    for fit_name, scenes in fits.items():
        fit_x, fit_objects = single_object_cells(model, image_processor, scenes, image_size, stage1)
        entry = results["fitted_on"][fit_name] = {"cells": len(fit_objects)}
        for name in test_x:
            entry[name] = {}
            for attribute in ATTRIBUTES:
                labels = [getattr(obj, attribute) for obj in fit_objects]
                predictions = fit_probe(fit_x[name], labels, test_x[name], steps)
                correct = np.array(
                    [predicted == getattr(obj, attribute) for predicted, obj in zip(predictions, test_objects)]
                )
                entry[name][attribute] = {
                    group: float(correct[mask].mean()) if mask.any() else None
                    for group, mask in (("held_out", held_out), ("seen", ~held_out))
                }
    return results


# Every (size, colour, shape) and its caption, "a small red circle".
COMBINATIONS = list(itertools.product(*(ATTRIBUTE_VALUES[attribute] for attribute in ATTRIBUTES)))
COMBINATION_CAPTIONS = [f"a {' '.join(combination)}" for combination in COMBINATIONS]


def window_caption_similarities(teacher: DualEncoder, image, grid: int, window: float, captions: torch.Tensor):
    """`(grid * grid, captions)`: cosine similarities of the teacher's embedding of each cell's window to `captions`."""
    return teacher.embed_images(cell_windows(image, grid, window)) @ captions.T


def window_zero_shot(teacher: DualEncoder, images: list, scenes: list, grid: tuple, window: float) -> dict:
    """(c) of the module's docstring: the share of object cells whose size, colour, shape and all three are right."""
    combinations, texts = COMBINATIONS, teacher.embed_texts(COMBINATION_CAPTIONS)
    correct, cells = collections.Counter(), 0
    for image, scene in zip(images, scenes):
        labels = cell_labels(scene, grid, image.width)
        guesses = window_caption_similarities(teacher, image, grid[0], window, texts).argmax(-1).tolist()
        for cell, guess in enumerate(guesses):
            truth = tuple(labels[attribute][cell] for attribute in ATTRIBUTES)
            if None in truth or NONE in truth:
                continue
            cells += 1
            guessed = combinations[guess]
            correct.update(attribute for attribute, value, other in zip(ATTRIBUTES, truth, guessed) if value == other)
            correct["all"] += truth == guessed
    return {"cells": cells, **{key: correct[key] / max(1, cells) for key in (*ATTRIBUTES, "all")}}


def teacher_space_cells(stage1: DualEncoder, teacher: DualEncoder, scenes: list, image_size: int, window: float):
    """(f) of the module's docstring, on `scenes` drawn at `image_size`."""
    images = [render_scene(scene, image_size) for scene in scenes]
    cells = stage1.image_features(images, "last_hidden_state")
    grid = math.isqrt(cells.shape[1])
    boxes = [[object_box(obj) for obj in scene] for scene in scenes]
    windows = [crop for image, box in zip(images, boxes) for crop in object_windows(image, box, grid, window)]
    targets = teacher.image_features(windows).view(*cells.shape[:2], -1)
    occupants = [cell_objects(scene, (grid, grid), image_size) for scene in scenes]
    return teacher_space_scores(cells, targets, occupants, teacher.embed_texts(COMBINATION_CAPTIONS))


def teacher_space_scores(cells: torch.Tensor, targets: torch.Tensor, occupants: list, captions: torch.Tensor) -> dict:
    """
    The student's `cells` `(images, cells, dim)`, trained towards the teacher's `targets` (same shape) standardised per
    dimension over all cells, mapped back to the teacher's scale; on the cells holding one object's centre
    (`occupants`: per image, the objects centred in each cell), their mean cosine similarity to the targets and the
    zero-shot size, colour and shape of both (argmax over `captions`, the teacher's normalised embeddings of
    `COMBINATION_CAPTIONS`), for the held-out combinations' objects and the others apart.
    """
    flat = targets.flatten(0, 1)
    mapped = cells * flat.std(0) + flat.mean(0)
    index = [(i, c) for i, image in enumerate(occupants) for c, objects in enumerate(image) if len(objects) == 1]
    objects = [occupants[i][c][0] for i, c in index]
    held_out = np.array([(obj.shape, obj.colour) in HELD_OUT_COMBINATIONS for obj in objects], dtype=bool)
    student, teacher = (torch.stack([values[i, c] for i, c in index]) for values in (mapped, targets))

    def by_group(values: np.ndarray) -> dict:
        return {group: float(values[mask].mean()) if mask.any() else None
                for group, mask in (("held_out", held_out), ("seen", ~held_out))}  # fmt: skip

    def zero_shot(embeddings: torch.Tensor) -> dict:
        guesses = [COMBINATIONS[k] for k in (F.normalize(embeddings, dim=-1) @ captions.T).argmax(-1).tolist()]
        return {
            attribute: by_group(np.array([guess[j] == getattr(obj, attribute) for guess, obj in zip(guesses, objects)]))
            for j, attribute in enumerate(ATTRIBUTES)
        }

    return {
        "cells": {"held_out": int(held_out.sum()), "seen": int((~held_out).sum())},
        "cosine": by_group(F.cosine_similarity(student, teacher, dim=-1).numpy()),
        "zero_shot": {"stage 1": zero_shot(student), "teacher": zero_shot(teacher)},
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(results: dict) -> str:
    """The retrieval and probe tables."""
    lines = [_row(["towers", *NEGATIVE_KINDS, "OOV caption words", "truncated captions"])]
    lines.append("|---|" + "---:|" * (len(NEGATIVE_KINDS) + 2))
    for name, entry in results["retrieval"].items():
        kinds, tokenizer = entry["kinds"], entry["tokenizer"]
        accuracies = [_percent(kinds[kind]["accuracy"]) for kind in NEGATIVE_KINDS]
        seen = [_percent(tokenizer["oov_word_rate"]), _percent(tokenizer["truncated_captions"])]
        lines.append(_row([name, *accuracies, *seen]))
        identical = [_percent(kinds[kind]["identical_tokens"]) for kind in NEGATIVE_KINDS]
        lines.append(_row([f"{name}: identical token ids", *identical, "", ""]))

    columns = [(attribute, "all_cells") for attribute in PROBE_ATTRIBUTES]
    columns += [(attribute, "object_cells") for attribute in PROBE_ATTRIBUTES if attribute != "object"]
    header = [attribute if cells == "all_cells" else f"{attribute}, object cells" for attribute, cells in columns]
    lines += ["", _row(["representation", "dims", *header]), "|---|" + "---:|" * (len(header) + 1)]

    def figures(entry, key):  # a probe left out (None) reads n/a
        return [_percent(entry[attribute][cells] and entry[attribute][cells][key]) for attribute, cells in columns]

    representations = results["probes"]["representations"]
    lines.append(_row(["majority class", "", *figures(next(iter(representations.values())), "majority_baseline")]))
    for name, entry in representations.items():
        lines.append(_row([name, entry["dims"], *figures(entry, "accuracy")]))
    held_out = results["held_out_probes"]
    lines += ["", _row(["representation", "probe fitted on", *(f"{a}: held-out / seen" for a in ATTRIBUTES)])]
    lines.append("|---|---|" + "---:|" * len(ATTRIBUTES))
    for fit_name, entry in held_out["fitted_on"].items():
        for name in representations:
            pairs = [entry[name][attribute] for attribute in ATTRIBUTES]
            lines.append(_row([name, fit_name, *(f"{_percent(p['held_out'])} / {_percent(p['seen'])}" for p in pairs)]))
    if results.get("teacher_windows"):
        windows = results["teacher_windows"]
        lines += ["", _row(["teacher's zero-shot attributes of the window around each object cell", "cells",
                            *ATTRIBUTES, "all three"])]  # fmt: skip
        lines += ["|---|" + "---:|" * (len(ATTRIBUTES) + 2)]
        lines.append(_row(["", windows["cells"], *(_percent(windows[key]) for key in (*ATTRIBUTES, "all"))]))
    if results.get("teacher_space"):
        space = results["teacher_space"]
        lines += ["", _row(["object cells in the teacher's space: held-out / seen", "cosine to the teacher's",
                            *(f"zero-shot {attribute}" for attribute in ATTRIBUTES)])]  # fmt: skip
        lines += ["|---|" + "---:|" * (len(ATTRIBUTES) + 1)]
        for name, zero_shot in space["zero_shot"].items():
            cosine = space["cosine"] if name == "stage 1" else {"held_out": None, "seen": None}  # its own: n/a
            pairs = [cosine, *(zero_shot[attribute] for attribute in ATTRIBUTES)]
            lines.append(_row([name, *(f"{_percent(p['held_out'])} / {_percent(p['seen'])}" for p in pairs)]))
    return "\n".join(lines)


def scenes_only(num_scenes: int, seed: int, image_size: int, held_out_fraction: float) -> list[list[SceneObject]]:
    """Scenes of the `test` split (`make_synthetic_scenes`) without their captions."""
    return [scene for scene, _ in make_synthetic_scenes(num_scenes, seed, image_size, "test", held_out_fraction)]


def load_encoders(args, model: BcQLMForConditionalGeneration, processor: BcQLMProcessor) -> dict[str, DualEncoder]:
    """
    The dual encoders to score: "bcqlm" (the BreezeCLIP inside the BcQLM, which stage 2 may have trained further),
    "stage 1" (`--breezeclip`, as distillation left it) and "teacher" (`--teacher`), those given.
    """
    encoders = {"bcqlm": DualEncoder(model.model.breezeclip, processor.image_processor, processor.question_tokenizer)}
    if args.breezeclip:
        encoders["stage 1"] = DualEncoder(
            BreezeCLIPModel.from_pretrained(args.breezeclip).eval(),
            BcQLMImageProcessor.from_pretrained(args.breezeclip),
            AutoTokenizer.from_pretrained(args.breezeclip),
        )
    if args.teacher:
        teacher_processor = CLIPProcessor.from_pretrained(args.teacher)
        teacher = CLIPModel.from_pretrained(args.teacher).eval()
        encoders["teacher"] = DualEncoder(teacher, teacher_processor.image_processor, teacher_processor.tokenizer)
    return encoders


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BcQLM folder (model and processor)")
    parser.add_argument("--teacher", default=None, help="a CLIPModel folder with its CLIPProcessor (optional)")
    parser.add_argument(
        "--breezeclip", default=None, help="a stage-1 BreezeCLIP folder (model, image processor, tokenizer; optional)"
    )
    parser.add_argument("--train_scenes", type=int, default=300, help="scenes the probes are fitted on")
    parser.add_argument("--test_scenes", type=int, default=100)
    parser.add_argument("--held_out_fraction", type=float, default=0.0, help="test scenes' (synthetic_shapes)")
    parser.add_argument("--negatives_per_kind", type=int, default=3, help="hard negatives per test scene and kind")
    parser.add_argument("--probe_steps", type=int, default=300)
    parser.add_argument("--crop_window", type=float, default=0.5, help="(c)'s windows, as a fraction of the image side")
    parser.add_argument(
        "--image_size",
        type=int,
        help="side of the drawn scenes (default: the image tower's input, at least the generator's smallest, 96); "
        "`examples/train_default_model.py` draws its scenes at 128",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = BcQLMForConditionalGeneration.from_pretrained(args.model).eval()
    processor = BcQLMProcessor.from_pretrained(args.model)
    # The renderer draws at least MIN_IMAGE_SIZE pixels; the image processors resize square images from there.
    image_size = args.image_size or max(MIN_IMAGE_SIZE, model.config.breezeclip_config.vision_config.image_size)
    train = [scene for scene, _ in make_synthetic_scenes(args.train_scenes, args.seed, image_size, "train")]
    test = make_synthetic_scenes(args.test_scenes, args.seed, image_size, "test", args.held_out_fraction)
    test_scenes, test_captions = [scene for scene, _ in test], [caption for _, caption in test]
    rng = np.random.default_rng(args.seed)
    negatives = hard_negatives(test_scenes, test_captions, rng, image_size, args.negatives_per_kind)

    encoders = load_encoders(args, model, processor)
    test_images = [render_scene(scene, image_size) for scene in test_scenes]
    held_out_test = scenes_only(args.test_scenes, args.seed + 1, image_size, 1.0)
    results = {
        "machine": machine_info(args.threads),
        "model": str(args.model),
        "teacher": args.teacher,
        "breezeclip": args.breezeclip,
        "arguments": vars(args),
        "image_size": image_size,
        "retrieval": {
            name: {
                "tokenizer": tokenizer_stats(encoder.tokenizer, test_captions),
                "kinds": retrieval(encoder, test_images, test_captions, negatives),
            }
            for name, encoder in encoders.items()
        },
        "negative_examples": {
            kind: [{"caption": test_captions[index], "negative": text} for index, text in pairs[:2]]
            for kind, pairs in negatives.items()
        },
        "probes": probes(
            model, processor.image_processor, train, test_scenes, image_size, args.probe_steps, encoders.get("stage 1")
        ),
        "held_out_probes": held_out_probes(
            model,
            processor.image_processor,
            {"train split": train, "test split": scenes_only(args.train_scenes, args.seed + 2, image_size, 0.5)},
            held_out_test,
            image_size,
            args.probe_steps,
            encoders.get("stage 1"),
        ),
        "oracle_readout": "benchmarks/oracle_readout.py (benchmarks/README.md, Oracle read-out)",
    }
    if "teacher" in encoders:
        grid, window = tuple(results["probes"]["grid"]), args.crop_window
        results["teacher_windows"] = window_zero_shot(encoders["teacher"], test_images, test_scenes, grid, window)
        # Stage 1 trained the cells themselves only where they have the teacher's width (else through a learned map).
        stage1, teacher = encoders.get("stage 1"), encoders["teacher"]
        if stage1 and stage1.model.config.projection_dim == teacher.model.config.projection_dim:
            results["teacher_space"] = teacher_space_cells(stage1, teacher, held_out_test, image_size, window)
    print(markdown(results))
    if args.output:
        write_json(results, Path(args.output))
    return results


if __name__ == "__main__":
    main()
