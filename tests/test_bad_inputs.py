"""
The catalogue of first-contact inputs: each bad input (or odd image) through each path that takes it (the `bcqlm`
command, the processor + `generate`, the VQA pipeline), with the error text expected, or the answer. A regression
shows up as a named case.
"""

import os
import re
import shutil
import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm import image_processing_bcqlm as image_processing
from modeling_bcqlm.cli.main import main
from modeling_bcqlm.pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline

from .helpers import run_python
from .test_default_model import EXAMPLE_IMAGE, bcqlm_command


QUESTION = "how many shapes are there?"
LONG_QUESTION = " ".join(["what"] * 5000) + "?"
PATHS = ("cli", "processor", "pipeline")


@pytest.fixture(scope="module")
def default_model():
    return BcQLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL), BcQLMProcessor.from_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def silent_server():
    """An http URL whose server accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    connections = []
    threading.Thread(target=lambda: [connections.append(server.accept()) for _ in range(64)], daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/scene.png"
    server.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, silent_server):
    """Each bad image input by name: a path, a URL or a folder."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "notes.txt").write_text("not an image")
    return {
        "missing file": str(folder / "missing.png"),
        "directory": str(folder),
        "not an image": str(folder / "notes.txt"),
        "refused URL": "http://127.0.0.1:9/scene.png",  # the discard port: nothing listens there
        "silent URL": silent_server,
    }


def ask(path: str, default_model, image, question: str = QUESTION, top_k: int = 1, timeout: float = 1.0):
    """Ask through one path; returns `(answer, score)` or raises `ValueError` with the path's error message."""
    model, processor = default_model
    if path == "cli":
        try:
            main(["ask", "--image", str(image), "--question", question, "--no_notice", "--timeout", str(timeout)])
        except SystemExit as exit:
            raise ValueError(str(exit.code)) from None
        return None
    if path == "processor":
        inputs = processor(images=image, text=question, return_tensors="pt")
        return processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=8))[0], None
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)
    [answer] = vqa(image=image, question=question, timeout=timeout)
    return answer["answer"], answer["score"]


ERRORS = {
    "missing file": r"Image file '.*missing\.png' does not exist\. Pass the path of an image file",
    "directory": r"Image file '.*inputs\d*' is a directory\. Pass the path of an image file",
    "not an image": r"'.*notes\.txt' is not an image that PIL can read",
    "refused URL": r"^(bcqlm: error: )?Could not fetch the image at 'http://127\.0\.0\.1:9/scene\.png' \(.*\)\. Check",
    "silent URL": r"The server of 'http://127\.0\.0\.1:\d+/scene\.png' did not answer within 1 seconds\..*`timeout`",
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_image_gets_a_clear_error(case, path, default_model, inputs, monkeypatch):
    # The processor path has no timeout argument: its default applies (shortened here to keep the test short).
    monkeypatch.setattr(image_processing, "DEFAULT_TIMEOUT", 1.0)
    with pytest.raises(ValueError, match=ERRORS[case]) as error:
        ask(path, default_model, inputs[case])
    if path == "cli":
        assert str(error.value).startswith("bcqlm: error: ")


@pytest.mark.parametrize("path", PATHS)
def test_question_longer_than_the_decoder_reads_is_refused(path, default_model):
    expected = r"Prompt 0 is 5023 tokens long .* the decoder reads at most 128 .*Shorten the question by at least 4895"
    with pytest.raises(ValueError, match=expected):
        ask(path, default_model, EXAMPLE_IMAGE, question=LONG_QUESTION)


@pytest.mark.parametrize("path", ["processor", "pipeline"])
def test_question_within_the_decoders_limit_is_answered(path, default_model):
    # 40 words: longer than the question encoder's 32 tokens (truncated there, with a warning), within the decoder's.
    answer, _ = ask(path, default_model, EXAMPLE_IMAGE, question=" ".join(["shapes"] * 40) + "?")
    assert answer.strip()


def composite_on_white(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:] / 255.0
    return Image.fromarray(np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8))


@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """`{name: (file, the same image converted by hand to 8-bit RGB)}` for a transparent and a 16-bit scene."""
    folder = tmp_path_factory.mktemp("wide")
    scene = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    background = np.all(scene == scene[0, 0], axis=-1)
    rgba = np.dstack([np.where(background[..., None], 0, scene), np.where(background, 0, 255)]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")
    gray = scene.mean(axis=-1).astype(np.uint16) * 257  # 8-bit gray spread over 16 bits
    Image.fromarray(gray).save(folder / "gray16.png")
    assert np.asarray(Image.open(folder / "gray16.png")).max() > 255  # wider than 8 bits (mode I;16, or I before Pillow 10.1)
    return {
        "transparent": (folder / "transparent.png", composite_on_white(rgba)),
        "16-bit": (folder / "gray16.png", Image.fromarray((gray // 257).astype(np.uint8)).convert("RGB")),
    }


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["transparent", "16-bit"])
def test_wide_image_files_answer_as_the_converted_image(kind, path, default_model, wide_images, capsys):
    file, converted = wide_images[kind]
    model, processor = default_model
    if path == "processor":
        from_file = processor(images=str(file), text=QUESTION, return_tensors="pt")["pixel_values"]
        in_memory = processor(images=converted, text=QUESTION, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(from_file, in_memory)
        return
    expected, score = ask("pipeline", default_model, converted)
    if path == "pipeline":
        answer, file_score = ask("pipeline", default_model, str(file))
        assert answer == expected and file_score == pytest.approx(score, rel=1e-5)
    else:
        main(["ask", "--image", str(file), "--question", QUESTION, "--no_notice", "--top_k", "1"])
        assert capsys.readouterr().out == expected + "\n"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Local `--model` folders that are not usable BcQLM models, by name."""
    root = tmp_path_factory.mktemp("models")
    (root / "empty").mkdir()
    (root / "other type").mkdir()
    (root / "other type" / "config.json").write_text('{"model_type": "llava"}')
    (root / "file.txt").write_text("weights?")
    truncated = root / "truncated"
    shutil.copytree(DEFAULT_MODEL, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    no_weights = root / "no weights"
    shutil.copytree(DEFAULT_MODEL, no_weights)
    os.remove(no_weights / "model.safetensors")
    return root


CLI_ERRORS = {
    ("--model", "{root}/missing"): r"--model '.*missing' does not exist: pass the folder of a saved BcQLM model",
    ("--model", "{root}/file.txt"): r"--model '.*file\.txt' is a file: pass the folder",
    ("--model", "{root}/empty"): r"--model '.*empty' holds no config\.json",
    ("--model", "{root}/other type"): r"--model '.*other type' is a 'llava' model, not a BcQLM one",
    ("--model", "{root}/no weights"): r"--model '.*no weights' holds no weights \(model\.safetensors or",
    ("--model", "{root}/truncated"): r"The weights of '.*truncated' cannot be read \(.*\): the file is incomplete",
    ("--device", "cuda:99"): r"--device cuda:99: no such cuda device is available to this torch",
    ("--device", "gpu"): r"--device 'gpu' is not a device: use 'cpu', 'cuda', 'cuda:N'",
    ("--top_k", "0"): r"--top_k must be at least 1",
    ("--max_new_tokens", "0"): r"--max_new_tokens must be at least 1",
    ("--timeout", "0"): r"--timeout must be a positive number of seconds",
    ("--question", "  "): r"--question is empty",
}


@pytest.mark.parametrize("option, value", list(CLI_ERRORS))
def test_bad_command_option_gets_a_clear_error(option, value, model_folders):
    args = {"--image": str(EXAMPLE_IMAGE), "--question": QUESTION, option: value.format(root=model_folders)}
    with pytest.raises(SystemExit) as exit:
        main(["ask", *[item for pair in args.items() for item in pair], "--no_notice"])
    assert str(exit.value.code).startswith("bcqlm: error: ")
    assert re.search(CLI_ERRORS[option, value], str(exit.value.code)), exit.value.code


def test_help_and_argument_errors_come_before_torch_loads(tmp_path):
    """`bcqlm --help` and argument mistakes are answered without importing torch or transformers (seconds)."""
    for args in (["--help"], ["ask", "--help"], ["ask", "--image", "x.png", "--question", " "], ["ask", "--top_k"]):
        result = run_python(*args, cwd=tmp_path, executable=bcqlm_command(), PYTHONPROFILEIMPORTTIME="1")
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
        assert "modeling_bcqlm.cli.main" in imported, result.stderr[-2000:]
        assert not {"torch", "transformers", "PIL"} & imported, args
        assert result.returncode == (0 if "--help" in args else 2 if args[-1] == "--top_k" else 1)
