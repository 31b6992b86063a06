"""
A deterministic synthetic scene-VQA dataset: images of a few coloured shapes, questions about them and captions, built
in memory from a seed, for training and testing small BcQLM models without downloads.

Scenes hold 1 to `MAX_OBJECTS` shapes (`SHAPES`) in clearly distinct colours (`COLOURS`) and two sizes (`SIZES`) on a
light background. Shapes never touch: the circles around them are at least `MIN_GAP` pixels apart, and every shape lies
fully inside the image. Images are drawn without anti-aliasing, so every pixel is the background or a palette colour.

Questions have one-word answers in lower case (counts as digits), computed from the scene description. Objects are
named by descriptions built from their attributes ("the large red circle", "the blue object"), used only where they
pick out exactly one object. Five types:

- `attribute`: the colour, shape or size of an object named by its other attributes ("what colour is the large
  triangle?").
- `existence`: "is there a green square?", answered yes and no equally often.
- `counting`: "how many blue shapes are there?", "how many shapes are there?"; among the counts the scene's
  descriptions give, count n is drawn with weight n + 1, so that large counts are not rare.
- `spatial`: the colour or shape of the object left of, right of, above or below a named anchor. An object is left of
  the anchor when its centre lies further left by at least `SPATIAL_MARGIN` times the sum of the two radii; a question
  is asked only when exactly one object is, and no other object's centre lies left of the anchor's at all, so that no
  object sits near the boundary (likewise for the other relations, with y growing downwards).
- `comparison`: "is the circle larger than the square?", "are the red object and the large object the same shape?",
  answered yes and no equally often; the compared attribute never appears in the descriptions.

With `extra_colours` (captions only), scenes also hold shapes in `EXTRA_COLOURS`, five colours no question asks
about: every shape then comes in nine or ten colours (the held-out combinations stay out), so that an image tower
trained on the captions learns shape apart from colour rather than from the few colours each shape has in the
questions' scenes.

With `vary_style`, each scene is drawn in a style of its own (`random_style`): a random light background, each
shape's colour shaded by up to `STYLE_SHADE` per channel, its radius scaled within `STYLE_SCALE`, and half of the images
anti-aliased; so that a model trained on them does not depend on this renderer's exact pixels.

Held-out shape-colour combinations (`HELD_OUT_COMBINATIONS`) never appear in the train split: in no scene, question or
caption. In the test split, a `held_out_fraction` of the images contain at least one object with a held-out combination
and the rest follow the train distribution; the `held_out` column is true for the questions about the first kind.
"""

import collections
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from .images import crop_window
from .loaders import VQA_FEATURES


SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
}
EXTRA_COLOURS = {
    "black": (30, 30, 30),
    "grey": (128, 128, 128),
    "teal": (0, 128, 128),
    "olive": (128, 128, 0),
    "navy": (0, 0, 128),
}
PALETTE = {**COLOURS, **EXTRA_COLOURS}
SIZES = ("small", "large")
# Radii at `MIN_IMAGE_SIZE` pixels; they scale with the image size.
RADII = {"small": 8, "large": 16}
BACKGROUND_COLOUR = (240, 240, 240)
MIN_IMAGE_SIZE = 96
MAX_OBJECTS = 6
# Pixels between the circles around two shapes (a circle's own outline, a triangle's circumcircle, a square's).
MIN_GAP = 2
# A square's half side, as a fraction of its radius.
SQUARE_HALF_SIDE = 0.75
# Random centres tried (at once) for one shape before its layout starts again, and layouts tried before the shapes are
# drawn again (crowded scenes of large shapes may not fit).
PLACEMENT_TRIES = 100
LAYOUT_TRIES = 10
# How far an object's centre must lie beyond an anchor's along a relation's axis, as a fraction of their radii's sum.
SPATIAL_MARGIN = 0.5
# Renderer variation (`vary_style`): per-channel shade of a shape's colour, range of its radius as a factor of its
# size's, lowest channel value of the background, and the supersampling factor of anti-aliased images.
STYLE_SHADE = 20
STYLE_SCALE = (0.85, 1.15)
STYLE_MIN_BACKGROUND = 170
SUPERSAMPLING = 4
HELD_OUT_COMBINATIONS = frozenset({("triangle", "green"), ("circle", "purple")})
SPLITS = ("train", "test")
QUESTION_TYPES = ("attribute", "existence", "counting", "spatial", "comparison")
# Attributes in the order their words take in a description ("the large red circle").
ATTRIBUTES = ("size", "colour", "shape")
ATTRIBUTE_VALUES = {"size": SIZES, "colour": tuple(COLOURS), "shape": SHAPES}
ATTRIBUTE_SUBSETS = tuple(
    subset for length in range(len(ATTRIBUTES) + 1) for subset in itertools.combinations(ATTRIBUTES, length)
)
# Every description, from the empty one (all objects) to those naming size, colour and shape.
ALL_DESCRIPTIONS = tuple(
    dict(zip(subset, values))
    for subset in ATTRIBUTE_SUBSETS
    for values in itertools.product(*(ATTRIBUTE_VALUES[attribute] for attribute in subset))
)
# Nouns of descriptions that do not name a shape.
NOUNS = ("object", "shape")
# Axis and direction of each spatial relation, in image coordinates (y grows downwards).
RELATIONS = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}
RELATION_PHRASES = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
# The attribute each comparison compares.
COMPARED_ATTRIBUTES = {
    "larger": "size",
    "smaller": "size",
    "same size": "size",
    "same colour": "colour",
    "same shape": "shape",
}

ATTRIBUTE_TEMPLATES = {
    "colour": (
        "what colour is the {object}?",
        "what color is the {object}?",
        "what is the colour of the {object}?",
        "which colour is the {object}?",
    ),
    "shape": ("what shape is the {object}?", "what is the shape of the {object}?", "which shape is the {object}?"),
    "size": ("what size is the {object}?", "what is the size of the {object}?", "how big is the {object}?"),
}
EXISTENCE_TEMPLATES = (
    "is there a {object}?",
    "are there any {objects}?",
    "does the image contain a {object}?",
    "can you see a {object}?",
)
COUNTING_TEMPLATES = (
    "how many {objects} are there?",
    "how many {objects} are in the image?",
    "what is the number of {objects}?",
    "how many {objects} can you see?",
)
SPATIAL_TEMPLATES = {
    "colour": (
        "what colour is the {object} {relation} the {anchor}?",
        "what is the colour of the {object} {relation} the {anchor}?",
        "which colour does the {object} {relation} the {anchor} have?",
    ),
    "shape": (
        "what shape is {relation} the {anchor}?",
        "what is the shape of the {object} {relation} the {anchor}?",
        "which shape is {relation} the {anchor}?",
    ),
}
COMPARISON_TEMPLATES = {
    "larger": ("is the {first} larger than the {second}?", "is the {first} bigger than the {second}?"),
    "smaller": ("is the {first} smaller than the {second}?",),
    "same size": (
        "are the {first} and the {second} the same size?",
        "is the {first} the same size as the {second}?",
        "do the {first} and the {second} have the same size?",
    ),
    "same colour": (
        "are the {first} and the {second} the same colour?",
        "is the {first} the same colour as the {second}?",
        "do the {first} and the {second} have the same colour?",
    ),
    "same shape": (
        "are the {first} and the {second} the same shape?",
        "is the {first} the same shape as the {second}?",
        "do the {first} and the {second} have the same shape?",
    ),
}
CAPTION_TEMPLATES = ("{objects}", "a picture of {objects}", "{number}: {objects}", "from left to right, {objects}")
NUMBER_WORDS = ("one shape", "two shapes", "three shapes", "four shapes", "five shapes", "six shapes")

SYNTHETIC_VQA_FEATURES = Features(
    {**VQA_FEATURES, "scene": Value("string"), "caption": Value("string"), "held_out": Value("bool")}
)
SYNTHETIC_CAPTION_FEATURES = Features({"image": ImageFeature(), "caption": Value("string")})
# Captioned scenes with each shape's box, `[x0, y0, x1, y1]` in pixels (`object_box`).
SYNTHETIC_BOXED_CAPTION_FEATURES = Features(
    {**SYNTHETIC_CAPTION_FEATURES, "boxes": Sequence(Sequence(Value("float32"), length=4))}
)


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene: its attributes, its centre (`x`, `y`) and its radius, in pixels."""

    shape: str
    colour: str
    size: str
    x: int
    y: int
    radius: int


@dataclass(frozen=True)
class RenderStyle:
    """How `render_scene` draws a scene: its background, each shape's fill in scene order (`None`: its colour in
    `PALETTE`) and whether edges are anti-aliased (drawn `SUPERSAMPLING` times larger, then averaged down)."""

    background: tuple[int, int, int] = BACKGROUND_COLOUR
    fills: tuple[tuple[int, int, int], ...] | None = None
    anti_aliased: bool = False


def random_style(scene: list[SceneObject], rng: np.random.Generator) -> RenderStyle:
    """A random `RenderStyle` for `scene`: a light background, shaded palette colours, anti-aliased half the time."""
    background = tuple(int(value) for value in rng.integers(STYLE_MIN_BACKGROUND, 256, size=3))
    shades = rng.integers(-STYLE_SHADE, STYLE_SHADE + 1, size=(len(scene), 3))
    fills = tuple(
        tuple(int(value) for value in np.clip(np.add(PALETTE[obj.colour], shade), 0, 255))
        for obj, shade in zip(scene, shades)
    )
    return RenderStyle(background, fills, anti_aliased=bool(rng.random() < 0.5))


def object_radius(size: str, image_size: int = MIN_IMAGE_SIZE, scale: float = 1.0) -> int:
    """The radius in pixels of a `size` shape ("small" or "large") in an image of `image_size` pixels, times `scale`."""
    return round(RADII[size] * scale * image_size / MIN_IMAGE_SIZE)


def object_box(obj: SceneObject) -> list[int]:
    """The square around a shape's circle, `[x0, y0, x1, y1]` in pixels (x1 and y1 exclusive), centred on its centre."""
    extent = math.ceil(_extent(obj.shape, obj.radius))
    return [obj.x - extent, obj.y - extent, obj.x + extent + 1, obj.y + extent + 1]


def generate_scene(
    rng: np.random.Generator,
    image_size: int = MIN_IMAGE_SIZE,
    num_objects: int | None = None,
    include_held_out: bool = False,
    scale_range: tuple[float, float] | None = None,
    colours: tuple[str, ...] = tuple(COLOURS),
) -> list[SceneObject]:
    """
    Draws a scene of `num_objects` shapes (default: 1 to `MAX_OBJECTS`, uniformly) at random non-touching positions,
    in `colours` (names of `PALETTE`). Without `include_held_out` no shape has a combination of
    `HELD_OUT_COMBINATIONS`; with it at least one has. With `scale_range` each radius is its size's times a factor
    drawn uniformly from that range.
    """
    _check_image_size(image_size)
    if num_objects is None:
        num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"`num_objects` must be between 1 and {MAX_OBJECTS}, got {num_objects}.")
    if unknown := sorted(set(colours) - set(PALETTE)):
        raise ValueError(f"`colours` must be names of `PALETTE` ({', '.join(PALETTE)}), got {unknown}.")
    all_combinations = list(itertools.product(SHAPES, colours))
    seen_combinations = [combination for combination in all_combinations if combination not in HELD_OUT_COMBINATIONS]
    while True:
        attributes = []
        for index in range(num_objects):
            if not include_held_out:
                combinations = seen_combinations
            else:
                combinations = sorted(HELD_OUT_COMBINATIONS) if index == 0 else all_combinations
            scale = 1.0 if scale_range is None else float(rng.uniform(*scale_range))
            attributes.append((*_pick(rng, combinations), _pick(rng, SIZES), scale))
        # Large shapes first: they are the hardest to fit.
        attributes.sort(key=lambda shape_colour_size: SIZES.index(shape_colour_size[2]), reverse=True)
        for _ in range(LAYOUT_TRIES):
            scene = _layout(rng, attributes, image_size)
            if scene is not None:
                return scene


def render_scene(
    scene: list[SceneObject], image_size: int = MIN_IMAGE_SIZE, style: RenderStyle | None = None
) -> Image.Image:
    """Draws `scene` on an `image_size` x `image_size` RGB image, in `style` (default: the palette on the default
    background, without anti-aliasing)."""
    style = style or RenderStyle()
    factor = SUPERSAMPLING if style.anti_aliased else 1
    image = Image.new("RGB", (image_size * factor, image_size * factor), style.background)
    draw = ImageDraw.Draw(image)
    fills = style.fills or [PALETTE[obj.colour] for obj in scene]
    for obj, fill in zip(scene, fills):
        # Pixel centres map to pixel centres in the larger image.
        x, y, radius = obj.x * factor + (factor - 1) / 2, obj.y * factor + (factor - 1) / 2, obj.radius * factor
        if obj.shape == "circle":
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        elif obj.shape == "square":
            half_side = _square_half_side(radius)
            draw.rectangle((x - half_side, y - half_side, x + half_side, y + half_side), fill=fill)
        else:
            half_base = radius * math.sqrt(3) / 2
            corners = [(x, y - radius), (x - half_base, y + radius / 2), (x + half_base, y + radius / 2)]
            draw.polygon(corners, fill=fill)
    return image.resize((image_size, image_size), Image.Resampling.BOX) if factor > 1 else image


def generate_caption(scene: list[SceneObject], rng: np.random.Generator) -> str:
    """A caption naming every shape of `scene` from left to right ("a large red circle and a small blue square")."""
    return format_caption(scene, _pick(rng, CAPTION_TEMPLATES))


def format_caption(scene: list[SceneObject], template: str) -> str:
    """The caption of `scene` in one of `CAPTION_TEMPLATES`: its shapes from left to right (by centre, then top)."""
    phrases = [f"a {obj.size} {obj.colour} {obj.shape}" for obj in sorted(scene, key=lambda obj: (obj.x, obj.y))]
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return template.format(objects=objects, number=NUMBER_WORDS[len(scene) - 1])


def generate_questions(
    scene: list[SceneObject],
    rng: np.random.Generator,
    num_questions: int = 5,
    excluded_combinations: frozenset = frozenset(),
    type_counts: collections.Counter | None = None,
) -> list[dict]:
    """
    Asks up to `num_questions` distinct questions about `scene`, as dicts with `question`, `answer` and
    `question_type`. Each question takes the type asked least so far, in this scene or across the calls that share the
    `type_counts` counter (which it updates), ties broken at random; types the scene cannot ask about (e.g. spatial
    ones about a single shape) are skipped. No question names a shape-colour combination of `excluded_combinations`.
    """
    type_counts = collections.Counter() if type_counts is None else type_counts
    descriptions = {obj: _unique_descriptions(scene, obj) for obj in scene}
    counts = collections.Counter(
        tuple((attribute, getattr(obj, attribute)) for attribute in subset)
        for obj in scene
        for subset in ATTRIBUTE_SUBSETS
    )
    descriptions_by_count = {}
    for description in ALL_DESCRIPTIONS:
        if not _names_combination(description, excluded_combinations):
            descriptions_by_count.setdefault(counts[tuple(description.items())], []).append(description)
    generators = {
        "attribute": lambda: _attribute_question(scene, descriptions, rng),
        "existence": lambda: _existence_question(scene, rng, excluded_combinations),
        "counting": lambda: _counting_question(descriptions_by_count, rng),
        "spatial": lambda: _spatial_question(scene, descriptions, rng),
        "comparison": lambda: _comparison_question(scene, descriptions, rng),
    }
    available = list(QUESTION_TYPES)
    questions, asked = [], set()
    while len(questions) < num_questions and available:
        fewest = min(type_counts[question_type] for question_type in available)
        question_type = _pick(rng, [candidate for candidate in available if type_counts[candidate] == fewest])
        generated = _new_question(generators[question_type], asked)
        if generated is None:
            available.remove(question_type)
            continue
        question, answer = generated
        asked.add(question)
        type_counts[question_type] += 1
        questions.append({"question": question, "answer": answer, "question_type": question_type})
    return questions


def make_synthetic_vqa(
    num_images: int,
    seed: int = 0,
    questions_per_image: int = 5,
    image_size: int = MIN_IMAGE_SIZE,
    split: str = "train",
    held_out_fraction: float = 0.5,
    vary_style: bool = False,
) -> Dataset:
    """
    Builds `num_images` scenes and their questions as a `datasets.Dataset` with the columns of
    `SYNTHETIC_VQA_FEATURES`: those of `VQA_FEATURES`, `scene` (the scene description as JSON), `caption` and
    `held_out`. Question types are balanced across the whole dataset (see `generate_questions`). The same arguments
    give the same rows and image bytes, and fewer images give a prefix of the rows; train and test scenes differ.
    `vary_style` draws each scene in a random style (see the module's docstring).
    """
    excluded_combinations = HELD_OUT_COMBINATIONS if split == "train" else frozenset()
    rows = {column: [] for column in SYNTHETIC_VQA_FEATURES}
    type_counts = collections.Counter()
    images = _synthetic_images(num_images, seed, image_size, split, held_out_fraction, vary_style)
    for index, scene, image, caption, rng in images:
        scene_json = json.dumps([asdict(obj) for obj in scene])
        held_out = any((obj.shape, obj.colour) in HELD_OUT_COMBINATIONS for obj in scene)
        questions = generate_questions(scene, rng, questions_per_image, excluded_combinations, type_counts)
        for number, question in enumerate(questions):
            rows["image"].append(image)
            rows["question"].append(question["question"])
            rows["answers"].append([question["answer"]])
            rows["answer"].append(question["answer"])
            rows["question_id"].append(f"synthetic-{split}-{seed}-{index}-{number}")
            rows["question_type"].append(question["question_type"])
            rows["scene"].append(scene_json)
            rows["caption"].append(caption)
            rows["held_out"].append(held_out)
    return Dataset.from_dict(rows, features=SYNTHETIC_VQA_FEATURES)


def make_synthetic_captions(
    num_images: int,
    seed: int = 0,
    image_size: int = MIN_IMAGE_SIZE,
    split: str = "train",
    held_out_fraction: float = 0.5,
    vary_style: bool = False,
    extra_colours: bool = False,
) -> Dataset:
    """
    The images of `make_synthetic_vqa` with the same arguments, one row each with its caption and its shapes' boxes
    (`object_box`), for BreezeCLIP's distillation (the columns of `load_caption_file` with `box_column`).
    `extra_colours` adds `EXTRA_COLOURS` to the scenes' colours (other images than `make_synthetic_vqa`'s then).
    """
    rows = {"image": [], "caption": [], "boxes": []}
    images = _synthetic_images(num_images, seed, image_size, split, held_out_fraction, vary_style, extra_colours)
    for _, scene, image, caption, _ in images:
        rows["image"].append(image)
        rows["caption"].append(caption)
        rows["boxes"].append([object_box(obj) for obj in scene])
    return Dataset.from_dict(rows, features=SYNTHETIC_BOXED_CAPTION_FEATURES)


def make_synthetic_region_captions(
    num_images: int,
    seed: int = 0,
    image_size: int = MIN_IMAGE_SIZE,
    split: str = "train",
    window: float = 0.5,
    jitter: float = 0.125,
    held_out_fraction: float = 0.5,
    vary_style: bool = False,
    extra_colours: bool = False,
) -> Dataset:
    """
    Region captions of the images of `make_synthetic_captions` with the same arguments: for every shape, the window
    of `window` times the image's side around it (`crop_window`; its centre moved off the shape's by up to `jitter`
    times the side along each axis) captioned with that shape alone ("a small red circle"). A CLIP teacher trained on
    them as well learns each shape's look, which whole-scene captions hardly need.
    """
    side = max(1, round(window * image_size))
    rows = {"image": [], "caption": []}
    images = _synthetic_images(num_images, seed, image_size, split, held_out_fraction, vary_style, extra_colours)
    for index, scene, image, _, _ in images:
        picture = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
        rng = np.random.default_rng([seed, SPLITS.index(split), index, 2])
        for obj in scene:
            offset = rng.uniform(-jitter, jitter, 2) * image_size
            rows["image"].append(crop_window(picture, (obj.x + offset[0], obj.y + offset[1]), side))
            rows["caption"].append(format_caption([obj], "{objects}"))
    return Dataset.from_dict(rows, features=SYNTHETIC_CAPTION_FEATURES)


def make_synthetic_scenes(
    num_images: int,
    seed: int = 0,
    image_size: int = MIN_IMAGE_SIZE,
    split: str = "train",
    held_out_fraction: float = 0.5,
    vary_style: bool = False,
    extra_colours: bool = False,
) -> list[tuple[list[SceneObject], str]]:
    """
    The scenes (their objects) and captions of `make_synthetic_vqa` (of `make_synthetic_captions` with
    `extra_colours`) with the same arguments, for measurements that need the objects themselves;
    `render_scene(scene, image_size)` draws each image in the generator's own style.
    """
    images = _synthetic_images(num_images, seed, image_size, split, held_out_fraction, vary_style, extra_colours)
    return [(scene, caption) for _, scene, _, caption, _ in images]


def make_synthetic_splits(
    train_images: int,
    test_images: int,
    seed: int = 0,
    questions_per_image: int = 5,
    image_size: int = MIN_IMAGE_SIZE,
    held_out_fraction: float = 0.5,
) -> DatasetDict:
    """The `train` and `test` splits of `make_synthetic_vqa` for one seed."""
    return DatasetDict(
        {
            split: make_synthetic_vqa(
                num_images, seed, questions_per_image, image_size, split=split, held_out_fraction=held_out_fraction
            )
            for split, num_images in (("train", train_images), ("test", test_images))
        }
    )


def _synthetic_images(num_images, seed, image_size, split, held_out_fraction, vary_style=False, extra_colours=False):
    """
    Yields each image's index, scene, PNG bytes, caption and random generator, seeded by (seed, split, index); the
    style of a varied image comes from a generator of its own, so that the questions do not depend on it.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    _check_image_size(image_size)
    scale_range = STYLE_SCALE if vary_style else None
    colours = tuple(PALETTE) if extra_colours else tuple(COLOURS)
    for index in range(num_images):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        include_held_out = split == "test" and rng.random() < held_out_fraction
        scene = generate_scene(
            rng, image_size, include_held_out=include_held_out, scale_range=scale_range, colours=colours
        )
        style = None
        if vary_style:
            style = random_style(scene, np.random.default_rng([seed, SPLITS.index(split), index, 1]))
        buffer = io.BytesIO()
        render_scene(scene, image_size, style).save(buffer, format="PNG")
        yield index, scene, {"bytes": buffer.getvalue(), "path": None}, generate_caption(scene, rng), rng


def _check_image_size(image_size):
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"`image_size` must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}.")


def _pick(rng, choices):
    return choices[int(rng.integers(len(choices)))]


def _square_half_side(radius):
    return round(SQUARE_HALF_SIDE * radius)


def _extent(shape, radius):
    """The radius of the circle around a shape."""
    return _square_half_side(radius) * math.sqrt(2) if shape == "square" else radius


def _layout(rng, attributes, image_size):
    """
    Places shapes of the given (shape, colour, size, scale) at random centres, or returns None where one does not fit.
    """
    scene = []
    for shape, colour, size, scale in attributes:
        radius = object_radius(size, image_size, scale)
        centre = _place(rng, scene, shape, radius, image_size)
        if centre is None:
            return None
        scene.append(SceneObject(shape, colour, size, *centre, radius))
    return scene


def _place(rng, scene, shape, radius, image_size):
    """A random centre keeping the shape inside the image and `MIN_GAP` pixels away from `scene`, or None."""
    extent = _extent(shape, radius)
    low, high = math.ceil(extent), image_size - 1 - math.ceil(extent)
    centres = rng.integers(low, high + 1, size=(PLACEMENT_TRIES, 2))
    if scene:
        placed = np.array([(obj.x, obj.y) for obj in scene])
        min_distances = np.array([extent + _extent(obj.shape, obj.radius) + MIN_GAP for obj in scene])
        distances = np.linalg.norm(centres[:, None, :] - placed[None, :, :], axis=-1)
        centres = centres[(distances >= min_distances).all(axis=1)]
    return (int(centres[0, 0]), int(centres[0, 1])) if len(centres) else None


def _matches(obj, description):
    return all(getattr(obj, attribute) == value for attribute, value in description.items())


def _describe(description, noun):
    """The words of a description in order ("large red circle"), ending in `noun` when it names no shape."""
    words = [description[attribute] for attribute in ("size", "colour") if attribute in description]
    return " ".join(words + [description.get("shape", noun)])


def _noun(rng, attribute):
    """The noun of a description naming no shape: "object" in questions about shape ("the blue shape" reads badly)."""
    return "object" if attribute == "shape" else _pick(rng, NOUNS)


def _names_combination(description, combinations):
    return (description.get("shape"), description.get("colour")) in combinations


def _unique_descriptions(scene, obj):
    """The descriptions of `obj` (by non-empty subsets of its attributes) that match no other object of `scene`."""
    descriptions = []
    for length in range(1, len(ATTRIBUTES) + 1):
        for subset in itertools.combinations(ATTRIBUTES, length):
            description = {attribute: getattr(obj, attribute) for attribute in subset}
            if sum(_matches(other, description) for other in scene) == 1:
                descriptions.append(description)
    return descriptions


def _without(descriptions, attribute):
    return [description for description in descriptions if attribute not in description]


def _new_question(generator, asked, tries=10):
    """A question from `generator` not in `asked`, or None."""
    for _ in range(tries):
        generated = generator()
        if generated is None:
            return None
        if generated[0] not in asked:
            return generated
    return None


def _attribute_question(scene, descriptions, rng):
    for attribute in [ATTRIBUTES[index] for index in rng.permutation(len(ATTRIBUTES))]:
        candidates = [(obj, description) for obj in scene for description in _without(descriptions[obj], attribute)]
        if candidates:
            obj, description = _pick(rng, candidates)
            question = _pick(rng, ATTRIBUTE_TEMPLATES[attribute]).format(
                object=_describe(description, _noun(rng, attribute))
            )
            return question, getattr(obj, attribute)
    return None


def _existence_question(scene, rng, excluded_combinations):
    answer = _pick(rng, ("yes", "no"))
    while True:
        length = int(rng.integers(1, len(ATTRIBUTES) + 1))
        attributes = [ATTRIBUTES[index] for index in sorted(rng.choice(len(ATTRIBUTES), length, replace=False))]
        if answer == "yes":
            obj = _pick(rng, scene)
            description = {attribute: getattr(obj, attribute) for attribute in attributes}
        else:
            description = {attribute: _pick(rng, ATTRIBUTE_VALUES[attribute]) for attribute in attributes}
        exists = any(_matches(obj, description) for obj in scene)
        if exists == (answer == "yes") and not _names_combination(description, excluded_combinations):
            break
    noun = _pick(rng, NOUNS)
    question = _pick(rng, EXISTENCE_TEMPLATES).format(
        object=_describe(description, noun), objects=_describe(description, noun) + "s"
    )
    return question, answer


def _counting_question(descriptions_by_count, rng):
    counts = sorted(descriptions_by_count)
    weights = np.array(counts) + 1.0
    count = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
    description = _pick(rng, descriptions_by_count[count])
    question = _pick(rng, COUNTING_TEMPLATES).format(objects=_describe(description, _pick(rng, NOUNS)) + "s")
    return question, str(count)


def _related_object(scene, anchor, relation):
    """The one object of `scene` in `relation` to `anchor` (see the module's docstring), or None."""
    axis, direction = RELATIONS[relation]
    related = None
    for obj in scene:
        if obj is anchor:
            continue
        offset = direction * (getattr(obj, axis) - getattr(anchor, axis))
        if offset >= SPATIAL_MARGIN * (obj.radius + anchor.radius):
            if related is not None:
                return None
            related = obj
        elif offset > 0:
            return None
    return related


def _spatial_question(scene, descriptions, rng):
    candidates = []
    for anchor in scene:
        for relation in RELATIONS if descriptions[anchor] else ():
            related = _related_object(scene, anchor, relation)
            if related is not None:
                candidates.append((anchor, relation, related))
    if not candidates:
        return None
    anchor, relation, related = _pick(rng, candidates)
    attribute = _pick(rng, tuple(SPATIAL_TEMPLATES))
    question = _pick(rng, SPATIAL_TEMPLATES[attribute]).format(
        object=_noun(rng, attribute),
        relation=_pick(rng, RELATION_PHRASES[relation]),
        anchor=_describe(_pick(rng, descriptions[anchor]), _noun(rng, attribute)),
    )
    return question, getattr(related, attribute)


def comparison_holds(comparison: str, first, second) -> bool:
    """Whether `comparison` ("larger", "same colour", ...) holds between two objects (or their compared values)."""
    if comparison == "larger":
        return first.size == "large" and second.size == "small"
    if comparison == "smaller":
        return first.size == "small" and second.size == "large"
    attribute = COMPARED_ATTRIBUTES[comparison]
    return getattr(first, attribute) == getattr(second, attribute)


def _comparison_question(scene, descriptions, rng):
    answer = _pick(rng, ("yes", "no"))
    candidates = {}
    for comparison, attribute in COMPARED_ATTRIBUTES.items():
        for first, second in itertools.permutations(scene, 2):
            first_descriptions = _without(descriptions[first], attribute)
            second_descriptions = _without(descriptions[second], attribute)
            holds = comparison_holds(comparison, first, second)
            if first_descriptions and second_descriptions and holds == (answer == "yes"):
                candidates.setdefault(comparison, []).append((first_descriptions, second_descriptions))
    if not candidates:
        return None
    comparison = _pick(rng, sorted(candidates))
    first_descriptions, second_descriptions = _pick(rng, candidates[comparison])
    attribute = COMPARED_ATTRIBUTES[comparison]
    question = _pick(rng, COMPARISON_TEMPLATES[comparison]).format(
        first=_describe(_pick(rng, first_descriptions), _noun(rng, attribute)),
        second=_describe(_pick(rng, second_descriptions), _noun(rng, attribute)),
    )
    return question, answer
