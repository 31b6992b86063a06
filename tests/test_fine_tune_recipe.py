"""README's fine-tune recipe for the bundled model, on data of its own: answer words the bundled model never produced."""

import json
import random
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from modeling_bcqlm import DEFAULT_MODEL
from modeling_bcqlm.data.synthetic_shapes import COLOURS

from .helpers import run_python


REPO = Path(__file__).resolve().parents[1]
# Colours outside the synthetic palette: their names are words the bundled decoder never generated.
NEW_COLOURS = {"orange": (255, 140, 0), "cyan": (0, 190, 200), "pink": (250, 110, 180), "brown": (130, 75, 20)}
QUESTION = "what color is the shape?"


def write_new_colour_data(folder: Path, num_images: int, seed: int) -> Path:
    """Squares and circles in `NEW_COLOURS` on light backgrounds of varying shade, one question each, as `.jsonl`."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "data.jsonl", "w") as f:
        for index in range(num_images):
            colour = rng.choice(sorted(NEW_COLOURS))
            image = Image.new("RGB", (128, 128), tuple(rng.randint(225, 250) for _ in range(3)))
            radius = rng.randint(12, 28)
            x, y = rng.randint(radius, 128 - radius), rng.randint(radius, 128 - radius)
            draw = ImageDraw.Draw(image)
            box = (x - radius, y - radius, x + radius, y + radius)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=NEW_COLOURS[colour])
            image.save(folder / "images" / f"{index}.png")
            f.write(json.dumps({"image": f"images/{index}.png", "question": QUESTION, "answer": colour}) + "\n")
    return folder / "data.jsonl"


def readme_fine_tune_command() -> str:
    readme = (REPO / "README.md").read_text()
    [command] = [c for c in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL) if "DEFAULT_MODEL" in c]
    return command.strip()


def evaluate(model: Path | str, data: Path, output: Path) -> list[dict]:
    completed = run_python(
        REPO / "examples" / "evaluate_vqa.py", "--model_name_or_path", model, "--data", data,
        "--output_dir", output, "--batch_size", "32", "--max_new_tokens", "4", cwd=data.parent,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def test_readme_fine_tune_recipe_teaches_the_bundled_model_new_answer_words(tmp_path):
    assert not set(NEW_COLOURS) & set(COLOURS)
    command = readme_fine_tune_command()
    assert command.startswith("python examples/train_vqa.py ") and " my_vqa.jsonl " in command
    # As typed in a shell, in a folder holding `my_vqa.jsonl` and its images; this interpreter for `python`.
    command = command.replace("python ", f"{sys.executable} ").replace("examples/", f"{REPO}/examples/")
    write_new_colour_data(tmp_path, 160, seed=0).rename(tmp_path / "my_vqa.jsonl")
    completed = run_python("-c", command + " --report_to none", cwd=tmp_path, executable="bash")
    assert completed.returncode == 0, completed.stderr[-3000:]

    test = write_new_colour_data(tmp_path / "test", 40, seed=1)
    before = evaluate(DEFAULT_MODEL, test, tmp_path / "before")
    after = evaluate(tmp_path / "my-bcqlm", test, tmp_path / "after")
    truths = [row["answers"][0] for row in after]
    assert max(truths.count(colour) for colour in NEW_COLOURS) <= 16  # no colour's prior reaches 40%
    assert not any(row["answer"] in NEW_COLOURS for row in before)
    assert sum(row["answer"] == truth for row, truth in zip(after, truths)) >= 36  # 90%
