"""README's commands: the test command is what CI runs; the parameter table and benchmarks reproduce (the main command: test_default_model.py)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from .helpers import run_python


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL)]


def run(*args: str) -> subprocess.CompletedProcess:
    return run_python(*args, cwd=ROOT)


def run_benchmark_command(script: str, output: Path, *extra: str) -> dict:
    """Run README's command for `benchmarks.<script>` with its JSON written to `output` (and `extra` arguments)."""
    (command,) = [block for block in bash_blocks() if block.startswith(f"python -m benchmarks.{script} ")]
    args = command.split()[1:]
    args[args.index("--output") + 1] = str(output)
    if "--markdown" in args:
        args.remove("--markdown")  # keep the committed table
    result = run(*args, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


def test_readme_starts_with_the_install_and_test_commands():
    main_command, test_command = bash_blocks()[:2]
    assert README.index(main_command) < 200
    assert main_command.startswith("pip install torch==2.13.0 && pip install . && ")
    assert test_command.startswith('pip install torch==2.14.1 torchvision==0.29.1 && pip install ".[test]" && ')
    ci_commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert test_command in ci_commands


def test_parameter_table_matches_the_benchmark_script():
    result = run("benchmarks/count_parameters.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() in README


def test_benchmark_command_runs_on_tiny_models(tmp_path):
    quick = ["--tiny", "--repeats", "1", "--new-tokens", "3", "--no-quantization", "--quiet-timeout", "0", "--in-process"]
    results = run_benchmark_command("compare_peers", tmp_path / "results.json", *quick)
    assert set(results["models"]) >= {"bcqlm", "llava", "smolvlm"}


def test_multi_question_benchmark_gives_the_same_answers(tmp_path):
    # README's command with the tiny model instead of `--full_size`.
    result = run("benchmarks/multi_question.py", "--questions", "3", "--repeats", "1", "--output", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "benchmarks/multi_question.py --full_size" in README
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert rows and all(row["same_answers"] for row in rows)


def test_quantized_accuracy_command_on_a_few_test_images(tmp_path):
    pytest.importorskip("bitsandbytes")
    results = run_benchmark_command(
        "quantized_accuracy", tmp_path / "results.json", "--test_images", "12", "--storages", "fp32,int8,nf4,onnx-fp32,onnx-int4"
    )
    summary = results["summary"]
    assert summary["fp32"]["test"]["count"] == 60 and summary["fp32"]["test"]["same_answer_as_fp32"] == 1.0
    assert summary["onnx-fp32"]["test"]["same_answer_as_fp32"] == 1.0  # the same decoder on another engine
    for storage in ("int8", "nf4", "onnx-int4"):
        assert summary[storage]["memory_footprint_bytes"] < 0.7 * summary["fp32"]["memory_footprint_bytes"]
        assert summary[storage]["test"]["count"] == 60
        # The trained default answers (almost) as in full precision; a broken quantized load answers at random.
        assert summary[storage]["test"]["same_answer_as_fp32"] >= 0.9, summary[storage]["test"]
        change = summary[storage]["test"]["accuracy"] - summary["fp32"]["test"]["accuracy"]
        assert summary[storage]["test"]["accuracy_change_vs_fp32"] == pytest.approx(change)
    assert run("-m", "benchmarks.quantized_accuracy", "--storages", "int8,nf4").returncode == 2  # no fp32 reference


def test_image_ablation_command_on_a_few_test_images(tmp_path):
    output = tmp_path / "results.json"
    results = run_benchmark_command(
        "image_ablation", output, "--test_images", "40", "--prior_images", "400", "--threads", "1"
    )
    summary = results["summary"]
    assert list(summary) == [
        "own scene", "another scene", "empty scene", "own scene restyled", "own scene, other renderer",
        "answer prior (question alone)", "another scene's own answer (expected)",
    ]  # fmt: skip
    own, other = summary["own scene"], summary["another scene"]
    assert all(condition["count"] == 200 for condition in summary.values()) and own["same_answer_as_own_scene"] == 1.0
    # The shipped model counts the objects it sees: another scene's image changes those answers.
    assert other["per_type"]["counting"] < own["per_type"]["counting"] - 0.2
    assert other["same_answer_as_own_scene"] < 1.0
    # Counting from the question's text alone is right far less often than from the image.
    assert summary["answer prior (question alone)"]["per_type"]["counting"] < own["per_type"]["counting"] - 0.2
    assert summary["another scene's own answer (expected)"]["per_type"]["counting"] < own["per_type"]["counting"] - 0.2
