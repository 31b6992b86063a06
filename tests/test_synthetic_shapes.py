"""
Tests of the synthetic scene-VQA generator. Answers are checked against the rendered images: the objects are read back
from the pixels (connected components of each palette colour, their shape from how much of their bounding box they
fill, their size from their height) and every question is answered again from those objects and its own words.
"""

import collections
import io
import json
import re

import numpy as np
import pytest
from datasets import DatasetDict
from datasets import Image as ImageFeature
from PIL import Image

from modeling_bcqlm.data.synthetic_shapes import (
    ATTRIBUTE_TEMPLATES,
    BACKGROUND_COLOUR,
    COLOURS,
    COMPARISON_TEMPLATES,
    COUNTING_TEMPLATES,
    EXISTENCE_TEMPLATES,
    HELD_OUT_COMBINATIONS,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    SPATIAL_TEMPLATES,
    SYNTHETIC_VQA_FEATURES,
    SceneObject,
    generate_questions,
    generate_scene,
    make_synthetic_captions,
    make_synthetic_region_captions,
    make_synthetic_scenes,
    make_synthetic_splits,
    make_synthetic_vqa,
    render_scene,
)


TEMPLATES = {
    "attribute": [template for templates in ATTRIBUTE_TEMPLATES.values() for template in templates],
    "existence": list(EXISTENCE_TEMPLATES),
    "counting": list(COUNTING_TEMPLATES),
    "spatial": [template for templates in SPATIAL_TEMPLATES.values() for template in templates],
    "comparison": [template for templates in COMPARISON_TEMPLATES.values() for template in templates],
}
DESCRIPTION = re.compile(
    rf"\bthe ((?:(?:{'|'.join(SIZES)}) )?(?:(?:{'|'.join(COLOURS)}) )?(?:{'|'.join(SHAPES)}|object|shape))\b"
)
ASKED_ATTRIBUTE = re.compile(r"\b(?:what|which) (colou?r|shape|size)\b|\bwhat is the (colou?r|shape|size) of\b")
RELATIONS = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}
YES_NO = {"yes", "no"}
# The smallest offset of a related object's centre at 96 px: half of two small radii, less a pixel of rounding.
MIN_RELATED_OFFSET = 7


@pytest.fixture(scope="module")
def splits():
    return {split: make_synthetic_vqa(40, seed=7, questions_per_image=5, split=split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def train_dataset(splits):
    return splits["train"]


def image_bytes(dataset):
    return dataset.cast_column("image", ImageFeature(decode=False))["image"]


def decoded_images(dataset):
    """The distinct images of `dataset`, in order, with one of their rows each."""
    images = {}
    for index, data in enumerate(image_bytes(dataset)):
        images.setdefault(data["bytes"], index)
    return [(Image.open(io.BytesIO(data)), index) for data, index in images.items()]


def components(mask):
    """The pixel (y, x) lists of the 8-connected components of a boolean mask."""
    height, width = mask.shape
    rows, seen, found = mask.tolist(), np.zeros_like(mask).tolist(), []
    for start_y, start_x in zip(*np.nonzero(mask)):
        if seen[start_y][start_x]:
            continue
        seen[start_y][start_x] = True
        stack, pixels = [(start_y, start_x)], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for next_y in (y - 1, y, y + 1):
                for next_x in (x - 1, x, x + 1):
                    if 0 <= next_y < height and 0 <= next_x < width and rows[next_y][next_x]:
                        if not seen[next_y][next_x]:
                            seen[next_y][next_x] = True
                            stack.append((next_y, next_x))
        found.append(np.array(pixels))
    return found


def read_objects(image):
    """The objects drawn on `image`, as dicts of colour, shape, size and centroid, read from its pixels alone."""
    pixels = np.asarray(image.convert("RGB"))
    scale = image.width / 96
    objects = []
    for colour, rgb in COLOURS.items():
        for component in components((pixels == rgb).all(axis=-1)):
            height, width = component.max(axis=0) - component.min(axis=0) + 1
            fill = len(component) / (height * width)
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            size = "large" if height > 20 * scale else "small"
            y, x = component.mean(axis=0)
            objects.append({"colour": colour, "shape": shape, "size": size, "x": x, "y": y})
    return objects


def words(text):
    """The attributes named in `text` ("large", "red", "circles" -> shape "circle")."""
    description = {}
    for word in re.findall(r"[a-z]+", text):
        if word in SIZES:
            description["size"] = word
        elif word in COLOURS:
            description["colour"] = word
        elif word.removesuffix("s") in SHAPES:
            description["shape"] = word.removesuffix("s")
    return description


def matching(objects, description):
    return [obj for obj in objects if all(obj[attribute] == value for attribute, value in description.items())]


def the_one(objects, description):
    (obj,) = matching(objects, description)
    return obj


def asked_attribute(question):
    if question.startswith("how big"):
        return "size"
    name = next(group for group in ASKED_ATTRIBUTE.search(question).groups() if group)
    return "colour" if name.startswith("colo") else name


def answer_from_image(question, question_type, objects):
    """Answers `question` from the objects read off its image and the question's words."""
    if question_type in ("existence", "counting"):
        found = matching(objects, words(question))
        return ("yes" if found else "no") if question_type == "existence" else str(len(found))
    descriptions = [words(text) for text in DESCRIPTION.findall(question) if words(text)]
    if question_type == "attribute":
        (description,) = descriptions
        attribute = asked_attribute(question)
        assert attribute not in description, question
        return the_one(objects, description)[attribute]
    if question_type == "spatial":
        (description,) = descriptions
        anchor = the_one(objects, description)
        relation = next(relation for relation in RELATIONS if re.search(rf"\b{relation}\b", question))
        axis, direction = RELATIONS[relation]
        offsets = [(direction * (obj[axis] - anchor[axis]), obj) for obj in objects if obj is not anchor]
        (related,) = [obj for offset, obj in offsets if offset >= MIN_RELATED_OFFSET]
        assert all(offset <= 1 for offset, obj in offsets if obj is not related), question
        return related[asked_attribute(question)]
    first, second = (the_one(objects, description) for description in descriptions)
    if re.search(r"\b(larger|bigger)\b", question):
        attribute, answer = "size", first["size"] == "large" and second["size"] == "small"
    elif re.search(r"\bsmaller\b", question):
        attribute, answer = "size", first["size"] == "small" and second["size"] == "large"
    else:
        attribute = re.search(r"\bsame (colour|shape|size)\b", question).group(1)
        answer = first[attribute] == second[attribute]
    assert all(attribute not in description for description in descriptions), question
    return "yes" if answer else "no"


def template_of(question, question_type):
    """The templates of `question_type` that `question` fits."""
    return [
        template
        for template in TEMPLATES[question_type]
        if re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)), question)
    ]


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_agree_with_rendered_images(split, splits):
    dataset = splits[split]
    objects_by_scene = {dataset[index]["scene"]: read_objects(image) for image, index in decoded_images(dataset)}
    for row in dataset.select_columns(["question", "question_type", "answer", "scene"]):
        objects = objects_by_scene[row["scene"]]
        assert answer_from_image(row["question"], row["question_type"], objects) == row["answer"], row


def test_answers_agree_with_rendered_images_at_128_pixels():
    dataset = make_synthetic_vqa(10, seed=1, image_size=128)
    for image, _ in decoded_images(dataset):
        assert image.size == (128, 128)
    objects_by_scene = {dataset[index]["scene"]: read_objects(image) for image, index in decoded_images(dataset)}
    for row in dataset.select_columns(["question", "question_type", "answer", "scene"]):
        # Offsets are in pixels: at 128 px they only grow, so the 96 px bound still holds.
        objects = objects_by_scene[row["scene"]]
        assert answer_from_image(row["question"], row["question_type"], objects) == row["answer"], row


def test_rendered_objects_match_scene_description(train_dataset):
    for image, index in decoded_images(train_dataset):
        scene = json.loads(train_dataset[index]["scene"])
        read = read_objects(image)
        assert len(read) == len(scene)
        for obj in scene:
            (drawn,) = [
                drawn for drawn in read if abs(drawn["x"] - obj["x"]) <= 1.5 and abs(drawn["y"] - obj["y"]) <= 1.5
            ]
            assert (drawn["colour"], drawn["shape"], drawn["size"]) == (obj["colour"], obj["shape"], obj["size"])


def test_every_object_centre_has_its_colour_and_pixels_are_palette_colours():
    palette = {tuple(rgb) for rgb in COLOURS.values()} | {BACKGROUND_COLOUR}
    for seed in range(30):
        scene = generate_scene(np.random.default_rng(seed))
        image = render_scene(scene)
        for obj in scene:
            assert image.getpixel((obj.x, obj.y)) == COLOURS[obj.colour]
            assert obj.radius <= obj.x < 96 - obj.radius and obj.radius <= obj.y < 96 - obj.radius
        # Drawn without anti-aliasing: no blended pixels.
        assert {tuple(rgb) for rgb in np.asarray(image).reshape(-1, 3).tolist()} <= palette


def test_objects_of_a_colour_are_its_connected_components():
    for seed in range(30):
        scene = generate_scene(np.random.default_rng(seed), num_objects=6)
        pixels = np.asarray(render_scene(scene))
        for colour, rgb in COLOURS.items():
            count = sum(obj.colour == colour for obj in scene)
            assert len(components((pixels == rgb).all(axis=-1))) == count


def test_same_seed_gives_same_dataset_and_other_seeds_differ(train_dataset):
    again = make_synthetic_vqa(40, seed=7, questions_per_image=5)
    assert image_bytes(again) == image_bytes(train_dataset)
    assert again.remove_columns("image").to_list() == train_dataset.remove_columns("image").to_list()
    prefix = make_synthetic_vqa(20, seed=7, questions_per_image=5)
    assert (
        prefix.remove_columns("image").to_list()
        == train_dataset.select(range(len(prefix))).remove_columns("image").to_list()
    )

    other = make_synthetic_vqa(40, seed=8, questions_per_image=5)
    assert image_bytes(other)[0] != image_bytes(train_dataset)[0]
    assert other["scene"] != train_dataset["scene"]
    assert other["question"] != train_dataset["question"]
    test_split = make_synthetic_vqa(40, seed=7, questions_per_image=5, split="test")
    assert set(test_split["scene"]).isdisjoint(train_dataset["scene"])

    rng, same_rng = np.random.default_rng(3), np.random.default_rng(3)
    scene = generate_scene(rng)
    assert scene == generate_scene(same_rng)
    assert generate_questions(scene, rng) == generate_questions(scene, same_rng)
    assert render_scene(scene).tobytes() == render_scene(generate_scene(np.random.default_rng(3))).tobytes()


def test_held_out_combinations_never_in_train(train_dataset):
    train = make_synthetic_vqa(150, seed=11, questions_per_image=5)
    for text in set(train["scene"]):
        for obj in json.loads(text):
            assert (obj["shape"], obj["colour"]) not in HELD_OUT_COMBINATIONS
    for image, _ in decoded_images(train_dataset):
        for obj in read_objects(image):
            assert (obj["shape"], obj["colour"]) not in HELD_OUT_COMBINATIONS
    named = [f"{colour} {shape}" for shape, colour in HELD_OUT_COMBINATIONS]
    for text in set(train["question"]) | set(train["caption"]):
        assert not any(name in text for name in named), text
    assert not any(train["held_out"])


def test_held_out_marks_test_images_with_held_out_combinations(splits):
    for image, index in decoded_images(splits["test"]):
        drawn = {(obj["shape"], obj["colour"]) for obj in read_objects(image)}
        assert splits["test"][index]["held_out"] == bool(drawn & HELD_OUT_COMBINATIONS)
    held_out = make_synthetic_vqa(120, seed=11, questions_per_image=1, split="test")["held_out"]
    assert 0.35 < sum(held_out) / len(held_out) < 0.65, sum(held_out)


def test_question_types_phrasings_and_answers(splits):
    vocabulary = YES_NO | set(COLOURS) | set(SHAPES) | set(SIZES) | {str(count) for count in range(7)}
    phrasings = collections.defaultdict(set)
    for dataset in splits.values():
        assert dataset.features == SYNTHETIC_VQA_FEATURES
        assert len(set(dataset["question_id"])) == len(dataset)
        for row in dataset.select_columns(["question", "question_type", "answer", "answers"]):
            assert row["answer"] in vocabulary and row["answers"] == [row["answer"]]
            assert row["question"] == row["question"].lower()
            templates = template_of(row["question"], row["question_type"])
            assert templates, row
            phrasings[row["question_type"]].update(templates)
    assert set(phrasings) == set(QUESTION_TYPES)
    for question_type, used in phrasings.items():
        assert len(used) >= 3, (question_type, used)


def test_question_types_and_answers_are_balanced():
    dataset = make_synthetic_vqa(400, seed=5, questions_per_image=5)
    assert len(dataset) == 2000
    types = collections.Counter(dataset["question_type"])
    for question_type in QUESTION_TYPES:
        assert 0.17 <= types[question_type] / len(dataset) <= 0.23, types
    answers = collections.defaultdict(collections.Counter)
    for question_type, answer in zip(dataset["question_type"], dataset["answer"]):
        answers[question_type][answer] += 1
    for question_type in ("existence", "comparison"):
        assert set(answers[question_type]) == YES_NO
        assert 0.43 <= answers[question_type]["yes"] / types[question_type] <= 0.57, answers[question_type]
    assert set(answers["counting"]) == {str(count) for count in range(7)}
    for question_type in ("attribute", "counting", "spatial"):
        assert max(answers[question_type].values()) / types[question_type] <= 0.4, answers[question_type]


def test_captions_name_objects_left_to_right(train_dataset):
    captions = make_synthetic_captions(40, seed=7)
    assert image_bytes(captions) == list({data["bytes"]: data for data in image_bytes(train_dataset)}.values())
    phrase = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
    for image, caption in zip(captions["image"], captions["caption"]):
        drawn = sorted(read_objects(image), key=lambda obj: obj["x"])
        named = [(size, colour, shape) for size, colour, shape in phrase.findall(caption)]
        assert named == [(obj["size"], obj["colour"], obj["shape"]) for obj in drawn], caption
    openings = {caption[: phrase.search(caption).start()] for caption in captions["caption"]}
    assert len({re.sub(r"^\w+ shapes?:", "number:", opening) for opening in openings}) >= 3, openings


def test_caption_boxes_frame_each_drawn_shape():
    captions = make_synthetic_captions(20, seed=3, image_size=128)
    for image, boxes in zip(captions["image"], captions["boxes"]):
        pixels = np.asarray(image.convert("RGB"))
        shapes = [shape for rgb in COLOURS.values() for shape in components((pixels == rgb).all(axis=-1))]
        assert len(boxes) == len(shapes) > 0
        for shape in shapes:  # (pixels, 2) of (y, x)
            (top, left), (bottom, right) = shape.min(axis=0), shape.max(axis=0)
            # One box holds the shape whole and has its centre within the shape's extent.
            centred = [
                (x0, y0, x1, y1)
                for x0, y0, x1, y1 in boxes
                if x0 <= left and y0 <= top and right < x1 and bottom < y1
                and left <= (x0 + x1) / 2 <= right + 1 and top <= (y0 + y1) / 2 <= bottom + 1
            ]
            assert len(centred) == 1, (boxes, (left, top, right, bottom))


def test_region_captions_name_the_shape_their_window_is_centred_on():
    scenes = [scene for scene, _ in make_synthetic_scenes(12, seed=7)]
    objects = [obj for scene in scenes for obj in scene]
    # Windows as wide as the image, not moved: each holds its shape whole, at the centre.
    regions = make_synthetic_region_captions(12, seed=7, window=1.0, jitter=0.0)
    assert regions["caption"] == [f"a {obj.size} {obj.colour} {obj.shape}" for obj in objects]
    for image, obj in zip(regions["image"], objects):
        assert image.size == (96, 96)
        centred = [read for read in read_objects(image) if abs(read["x"] - 47.5) < 2 and abs(read["y"] - 47.5) < 2]
        assert [(read["size"], read["colour"], read["shape"]) for read in centred] == [(obj.size, obj.colour, obj.shape)]
    # The default windows (half the image, moved by up to an eighth of it) each show some of their shape.
    regions = make_synthetic_region_captions(12, seed=7)
    assert len(regions) == len(objects)
    for image, obj in zip(regions["image"], objects):
        assert image.size == (48, 48)
        assert (np.asarray(image.convert("RGB")) == COLOURS[obj.colour]).all(axis=-1).sum() > 10


def test_make_synthetic_splits_and_image_size():
    dataset_dict = make_synthetic_splits(train_images=4, test_images=3, seed=2, questions_per_image=2)
    assert isinstance(dataset_dict, DatasetDict) and set(dataset_dict) == {"train", "test"}
    assert len(dataset_dict["train"]) == 8 and len(dataset_dict["test"]) == 6
    assert dataset_dict["train"][0]["image"].size == (96, 96)
    with pytest.raises(ValueError, match="at least 96"):
        make_synthetic_vqa(1, image_size=64)
    with pytest.raises(ValueError, match="split"):
        make_synthetic_vqa(1, split="validation")


def test_each_question_type_takes_a_turn():
    scene = [SceneObject("circle", "red", "small", 20, 20, 8), SceneObject("square", "blue", "large", 60, 60, 16)]
    questions = generate_questions(scene, np.random.default_rng(0), num_questions=5)
    assert sorted(question["question_type"] for question in questions) == sorted(QUESTION_TYPES)
    # A single shape has no spatial relations and nothing to compare with.
    questions = generate_questions(scene[:1], np.random.default_rng(0), num_questions=6)
    assert len(questions) == 6
    assert {question["question_type"] for question in questions} == {"attribute", "existence", "counting"}


def test_varied_styles_keep_each_shape_its_colour_and_size_apart_from_the_other_size():
    from modeling_bcqlm.data.synthetic_shapes import STYLE_SCALE, STYLE_SHADE, object_radius

    varied = make_synthetic_vqa(30, seed=7, questions_per_image=5, vary_style=True)
    assert image_bytes(make_synthetic_vqa(30, seed=7, questions_per_image=5, vary_style=True)) == image_bytes(varied)
    images = decoded_images(varied)
    backgrounds = set()
    for image, index in images:
        pixels = np.asarray(image.convert("RGB")).astype(int)
        backgrounds.add(tuple(pixels[0, 0]))
        scene = json.loads(varied[index]["scene"])
        for obj in scene:
            low, high = (object_radius(obj["size"], 96, scale) for scale in STYLE_SCALE)
            assert low <= obj["radius"] <= high
            # The centre is the shape's colour, shaded by at most STYLE_SHADE per channel.
            assert np.abs(pixels[obj["y"], obj["x"]] - COLOURS[obj["colour"]]).max() <= STYLE_SHADE
        # Anti-aliased edges blend colours: more distinct pixel values than shapes and background.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= len(scene) + 1
    assert len(backgrounds) == len(images)
    assert object_radius("small", 96, STYLE_SCALE[1]) < object_radius("large", 96, STYLE_SCALE[0])
    anti_aliased = [len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50 for image, _ in images]
    assert 0 < sum(anti_aliased) < len(images)


def test_extra_colours_show_every_shape_in_more_colours_in_the_captions_only():
    from modeling_bcqlm.data.synthetic_shapes import EXTRA_COLOURS, PALETTE

    assert not set(EXTRA_COLOURS) & set(COLOURS) and len(set(PALETTE.values()) | {BACKGROUND_COLOUR}) == 11
    captions = make_synthetic_captions(60, seed=7, image_size=128, extra_colours=True)
    phrase = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})")
    named = collections.Counter()
    for image, caption, boxes in zip(captions["image"], captions["caption"], captions["boxes"]):
        objects = phrase.findall(caption)
        assert len(objects) == len(boxes) > 0, caption
        # Captions and boxes name the shapes left to right; each box's centre has its shape's colour.
        centres = sorted(((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes)
        for (_, colour, shape), (x, y) in zip(objects, centres):
            assert image.getpixel((int(x), int(y))) == PALETTE[colour], caption
            named[shape, colour] += 1
    assert {colour for _, colour in named} == set(PALETTE)
    assert all(any((shape, colour) in named for colour in EXTRA_COLOURS) for shape in SHAPES)
    assert not set(named) & HELD_OUT_COMBINATIONS
    # Their region captions name the extra colours too; without the option no caption does.
    regions = make_synthetic_region_captions(60, seed=7, image_size=128, extra_colours=True)
    assert sum(named.values()) == len(regions) and any(set(EXTRA_COLOURS) & set(c.split()) for c in regions["caption"])
    with pytest.raises(ValueError, match="must be names of `PALETTE`"):
        generate_scene(np.random.default_rng(0), colours=("red", "mauve"))
    plain = make_synthetic_captions(60, seed=7, image_size=128)["caption"]
    assert not any(set(EXTRA_COLOURS) & set(caption.replace(",", " ").split()) for caption in plain)
