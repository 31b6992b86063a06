"""The small BcQLM shipped with the package (`modeling_bcqlm.DEFAULT_MODEL`), the `bcqlm` command and the example."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_bcqlm import (
    DEFAULT_MODEL,
    BcQLMForConditionalGeneration,
    BcQLMProcessor,
    BcQLMVisualQuestionAnsweringPipeline,
)
from modeling_bcqlm.cli.main import main
from modeling_bcqlm.data.synthetic_shapes import make_synthetic_vqa

from .helpers import run_python


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGE = ROOT / "examples" / "images" / "shapes.png"
# The example image is the scene of this one-image synthetic test set, which also gives its questions and answers.
EXAMPLE_SCENE = {"num_images": 1, "seed": 7, "image_size": 128, "split": "test", "held_out_fraction": 0.0}
MAX_SIZE_BYTES = 20 * 1024 * 1024
CODE_FILES = (
    "configuration_bcqlm.py", "modeling_bcqlm.py", "processing_bcqlm.py", "image_processing_bcqlm.py", "pipeline_bcqlm.py"
)  # fmt: skip


@pytest.fixture(scope="module")
def example():
    """The example scene's synthetic questions: {question: answer}, and its PNG bytes."""
    rows = make_synthetic_vqa(**EXAMPLE_SCENE).cast_column("image", datasets.Image(decode=False))
    return {row["question"]: row["answer"] for row in rows}, rows[0]["image"]["bytes"]


def bcqlm_command() -> str:
    command = shutil.which("bcqlm", path=os.path.dirname(sys.executable))
    assert command, "The `bcqlm` console command is not installed: `pip install .` installs it."
    return command


def run_bcqlm(*args, cwd, **env) -> subprocess.CompletedProcess:
    return run_python(*args, cwd=cwd, executable=bcqlm_command(), **env)


def test_example_image_is_the_synthetic_scene(example):
    _, png = example
    assert EXAMPLE_IMAGE.read_bytes() == png


def test_shipped_folder_is_complete_small_and_hub_ready():
    folder = Path(DEFAULT_MODEL)
    files = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert files == {
        "config.json", "model.safetensors", "generation_config.json", "processor_config.json", "chat_template.jinja",
        "tokenizer.json", "tokenizer_config.json", "question_tokenizer/tokenizer.json",
        "question_tokenizer/tokenizer_config.json", "training_results.json", *CODE_FILES,
    }  # fmt: skip
    assert sum((folder / name).stat().st_size for name in files) <= MAX_SIZE_BYTES
    # The code files are the package's own (links in the repository, copies in a built wheel).
    for name in CODE_FILES:
        assert (folder / name).read_bytes() == (folder.parent / name).read_bytes(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_bcqlm.BcQLMForConditionalGeneration"
    assert set(config["custom_pipelines"]) == {"visual-question-answering", "vqa"}


LOAD_WITHOUT_PACKAGE = """
import json, sys
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

folder, image, question = sys.argv[1:]
try:
    AutoProcessor.from_pretrained(folder, trust_remote_code=False)
except ValueError as error:
    refused = "trust_remote_code=True" in str(error)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
inputs = processor(images=image, text=question, return_tensors="pt")
vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
print(json.dumps({
    "refused": refused,
    "classes": [type(processor).__name__, type(model).__name__, type(vqa).__name__],
    "generate": processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=4))[0],
    "pipeline": vqa(image=image, question=question, max_new_tokens=4)[0]["answer"],
}))
"""


def test_shipped_folder_loads_where_the_package_is_not_imported(tmp_path, example):
    questions, _ = example
    question = "how many green objects can you see?"
    result = run_python(
        "-c", LOAD_WITHOUT_PACKAGE, DEFAULT_MODEL, EXAMPLE_IMAGE, question, cwd=tmp_path, without_package=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["refused"], "without trust_remote_code the folder's code must not run"
    assert loaded["classes"] == ["BcQLMProcessor", "BcQLMForConditionalGeneration", "BcQLMVisualQuestionAnsweringPipeline"]
    model = BcQLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL)
    processor = BcQLMProcessor.from_pretrained(DEFAULT_MODEL)
    inputs = processor(images=str(EXAMPLE_IMAGE), text=question, return_tensors="pt")
    [answer] = processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=4))
    assert loaded["generate"] == loaded["pipeline"] == answer


def test_loads_through_the_auto_classes_and_answers_like_the_pipeline(example):
    questions, _ = example
    model = BcQLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL)
    assert type(AutoModel.from_pretrained(DEFAULT_MODEL)) is BcQLMForConditionalGeneration
    assert type(AutoModelForImageTextToText.from_pretrained(DEFAULT_MODEL)) is BcQLMForConditionalGeneration
    processor = AutoProcessor.from_pretrained(DEFAULT_MODEL)
    assert isinstance(processor, BcQLMProcessor)
    vqa = pipeline("visual-question-answering", model=DEFAULT_MODEL, pipeline_class=BcQLMVisualQuestionAnsweringPipeline)
    chat = pipeline("image-text-to-text", model=DEFAULT_MODEL)
    for question in questions:
        inputs = processor(images=str(EXAMPLE_IMAGE), text=question, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        [answer] = processor.post_process_image_text_to_text(generated)
        assert vqa(image=str(EXAMPLE_IMAGE), question=question, max_new_tokens=4)[0]["answer"] == answer
        messages = [{"role": "user", "content": [{"type": "image", "path": str(EXAMPLE_IMAGE)}, {"type": "text", "text": question}]}]
        [reply] = chat(text=messages, max_new_tokens=4, do_sample=False)
        assert reply["generated_text"][-1] == {"role": "assistant", "content": answer}


def test_readme_table_shows_the_models_own_answers_and_the_truth_where_the_scene_asks(example):
    questions, _ = example
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| question | truth | answer |") :].split("\n\n", 1)[0].splitlines()[2:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert len(rows) == 12
    vqa = pipeline("visual-question-answering", model=DEFAULT_MODEL, pipeline_class=BcQLMVisualQuestionAnsweringPipeline)
    for question, truth, answer in rows:
        assert vqa(image=str(EXAMPLE_IMAGE), question=question, max_new_tokens=4)[0]["answer"] == answer, question
        assert questions.get(question, truth) == truth, question
    # The model card counts the right ones.
    right = sum(truth == answer for _, truth, answer in rows)
    assert f"answers {right} of 12 plain questions right" in (ROOT / "model_card.md").read_text()


def test_bcqlm_ask_answers_the_readme_question_correctly(tmp_path, example):
    questions, _ = example
    readme = (ROOT / "README.md").read_text()
    main_command = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    ask = main_command.split(" && ")[-1]
    assert ask.startswith("bcqlm ask --image examples/images/shapes.png --question ")
    question = ask.split("--question ", 1)[1].strip().strip('"')
    assert question in questions
    # From a folder outside the repository: the installed package, its command and its package data answer.
    result = run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", question, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == questions[question]


def test_model_card_command_answers_from_the_repository_root(monkeypatch, capsys, example):
    questions, _ = example
    [command] = re.findall(r"`(bcqlm ask [^`]+)`", (ROOT / "model_card.md").read_text().replace("\n", " "))
    monkeypatch.chdir(ROOT)
    main(shlex.split(command)[1:] + ["--no_notice"])
    question = shlex.split(command)[shlex.split(command).index("--question") + 1]
    assert capsys.readouterr().out == questions[question] + "\n"


def test_bcqlm_ask_streams_the_answer_it_prints(capsys, example):
    questions, _ = example
    for question in list(questions)[:4]:
        main(["ask", "--image", str(EXAMPLE_IMAGE), "--question", question, "--no_notice"])
        printed = capsys.readouterr().out
        main(["ask", "--image", str(EXAMPLE_IMAGE), "--question", question, "--no_notice", "--stream"])
        assert capsys.readouterr().out == printed
    with pytest.raises(SystemExit, match="--stream prints one answer"):
        main(["ask", "--image", str(EXAMPLE_IMAGE), "--question", question, "--stream", "--top_k", "2"])


def test_bcqlm_ask_needs_neither_torchvision_nor_timm(tmp_path, example):
    """The test environment has both (for the conversion tests); the package must work where they are missing."""
    questions, _ = example
    question = next(iter(questions))
    script = (
        "import sys\n"
        "sys.modules['torchvision'] = sys.modules['timm'] = None  # as if not installed: imports fail, find_spec is None\n"
        "from modeling_bcqlm.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    result = run_python("-c", script, "ask", "--image", EXAMPLE_IMAGE, "--question", question, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == questions[question]


def test_loading_and_answering_prints_nothing_but_the_answer(tmp_path, example):
    """No warning from the package, transformers or the libraries our code paths import, on the Python API or the CLI."""
    questions, _ = example
    question = next(iter(questions))
    script = (
        "import sys\n"
        "from transformers import AutoModel, AutoProcessor, pipeline\n"
        "from modeling_bcqlm import DEFAULT_MODEL\n"
        "image, question = sys.argv[1:]\n"
        "model, processor = AutoModel.from_pretrained(DEFAULT_MODEL), AutoProcessor.from_pretrained(DEFAULT_MODEL)\n"
        "inputs = processor(images=image, text=question, return_tensors='pt')\n"
        "print(processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=8))[0])\n"
        "vqa = pipeline('visual-question-answering', model=DEFAULT_MODEL, trust_remote_code=True)\n"
        "print(vqa(image=image, question=question)[0]['answer'])\n"
        "messages = [{'role': 'user', 'content': [{'type': 'image', 'url': image}, {'type': 'text', 'text': question}]}]\n"
        "chat = pipeline('image-text-to-text', model=DEFAULT_MODEL)\n"
        "print(chat(text=messages, max_new_tokens=8, return_full_text=False)[0]['generated_text'])\n"
        "assert 'bitsandbytes' not in sys.modules, 'imported without a quantization config'\n"
    )
    # `-W always` shows every Python warning, deprecations included; progress bars are not warnings.
    result = run_python(
        "-W", "always", "-c", script, EXAMPLE_IMAGE, question, cwd=tmp_path, HF_HUB_DISABLE_PROGRESS_BARS="1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.splitlines() == [questions[question]] * 3

    # The command says once, on stderr, what the bundled model knows; a flag or the environment silences it.
    cli = run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", question, cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout == questions[question] + "\n", cli.stderr[-3000:]
    [notice] = cli.stderr.splitlines()
    assert "only synthetic scenes" in notice and "--no_notice" in notice and "BCQLM_NO_NOTICE=1" in notice
    for silenced in (
        run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", question, "--no_notice", cwd=tmp_path),
        run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", question, cwd=tmp_path, BCQLM_NO_NOTICE="1"),
    ):
        assert silenced.returncode == 0 and silenced.stderr == "", silenced.stderr[-3000:]
        assert silenced.stdout == questions[question] + "\n"


def test_bcqlm_ask_top_k_prints_scored_answers(tmp_path, example):
    questions, _ = example
    question = next(iter(questions))
    result = run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", question, "--top_k", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(len(line) == 2 for line in lines)
    scores = [float(score) for score, _ in lines]
    assert 1.0 >= scores[0] >= scores[1] > 0.0


def test_bcqlm_ask_reports_bad_input(tmp_path):
    missing = run_bcqlm("ask", "--image", tmp_path / "missing.png", "--question", "how many shapes?", cwd=tmp_path)
    assert missing.returncode != 0
    assert "bcqlm: error:" in missing.stderr and "missing.png" in missing.stderr
    assert "Traceback" not in missing.stderr
    empty = run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", "  ", cwd=tmp_path)
    assert empty.returncode != 0 and "--question is empty" in empty.stderr
    bad_model = run_bcqlm("ask", "--image", EXAMPLE_IMAGE, "--question", "how many?", "--model", tmp_path, cwd=tmp_path)
    assert bad_model.returncode != 0 and "bcqlm: error:" in bad_model.stderr and "Traceback" not in bad_model.stderr


def test_evaluation_script_reproduces_the_reported_results(tmp_path):
    summary = json.loads((Path(DEFAULT_MODEL) / "training_results.json").read_text())
    arguments = summary["arguments"]
    test = make_synthetic_vqa(
        arguments["test_images"], arguments["seed"], arguments["questions_per_image"], 128, split="test"
    )
    splits = datasets.DatasetDict({"test": test, "test_held_out": test.filter(lambda row: row["held_out"])})
    splits.save_to_disk(str(tmp_path / "data"))
    card = (ROOT / "model_card.md").read_text()
    for split in ("test", "test_held_out"):
        completed = run_python(
            ROOT / "examples" / "evaluate_vqa.py", "--model_name_or_path", DEFAULT_MODEL,
            "--data", tmp_path / "data", "--split", split, "--output_dir", tmp_path / split,
            "--batch_size", "64", "--max_new_tokens", "4", cwd=tmp_path,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr[-3000:]
        results = json.loads((tmp_path / split / "results.json").read_text())
        reported = summary["results"][split]
        assert results["count"] == reported["count"]
        assert results["accuracy"] == pytest.approx(reported["accuracy"], abs=1e-9)
        for question_type, metrics in reported["per_type"].items():
            assert results["per_type"][question_type]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
        # The model card quotes the same numbers, in percent with one decimal.
        assert f"value: {100 * results['accuracy']:.1f}" in card


def test_quickstart_answers_its_default_question_correctly(example):
    questions, _ = example
    result = run_python(ROOT / "examples" / "quickstart.py", "--max-new-tokens", "4", cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    question_line, answer_line = result.stdout.strip().splitlines()[-2:]
    question = question_line.removeprefix("Question: ")
    assert answer_line == f"Answer: {questions[question]}"


def test_readme_default_model_snippet_runs(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Default model") :]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    exec(snippet, {})
    printed = capsys.readouterr().out
    assert printed.startswith("[{'score': ") and "'answer': " in printed


def test_loading_warns_of_no_missing_torchvision_variant(tmp_path):
    """With torchvision installed, `AutoProcessor` asks for a torchvision image processor first: no fallback warning."""
    assert importlib.util.find_spec("torchvision") is not None, "the test command installs torchvision"
    script = (
        "from transformers import AutoProcessor\n"
        "from modeling_bcqlm import DEFAULT_MODEL, BcQLMImageProcessor\n"
        "assert isinstance(AutoProcessor.from_pretrained(DEFAULT_MODEL).image_processor, BcQLMImageProcessor)\n"
    )
    result = run_python("-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend" not in result.stderr, result.stderr
