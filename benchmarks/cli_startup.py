"""How long the `bcqlm` command takes from command to answer, and where the time goes.

    python -m benchmarks.cli_startup --repeats 5 --output benchmarks/results/cli_startup.json

Times each command in a fresh process (`--help`, an argument error, `bcqlm ask` with the bundled model), warm: after
one untimed run, so that the files are in the OS cache. Then the parts of `ask`: importing torch alone, importing
what `ask` imports, and loading the model and answering in a process that has imported everything. Prints a Markdown
table of the medians (min-max).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.lib.report import table_row, write_json
from benchmarks.lib.system import machine_info


ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "images" / "shapes.png"
QUESTION = "how many green objects can you see?"
COMMANDS = {
    "bcqlm --help": ["--help"],
    "argument error (empty --question)": ["ask", "--image", str(IMAGE), "--question", " "],
    "bcqlm ask, bundled model": ["ask", "--image", str(IMAGE), "--question", QUESTION, "--no_notice"],
}
IMPORTS = {
    "import torch": "import torch",
    "import what ask imports": (
        "import modeling_bcqlm.cli.main, modeling_bcqlm.pipeline_bcqlm, safetensors; from transformers import "
        "AutoModelForImageTextToText, AutoProcessor, PreTrainedConfig"
    ),
}
LOAD_AND_ANSWER = f"""
import time
from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline
start = time.perf_counter()
model, processor = BcQLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL), BcQLMProcessor.from_pretrained(DEFAULT_MODEL)
loaded = time.perf_counter()
BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)(image={str(IMAGE)!r}, question={QUESTION!r})
print(loaded - start, time.perf_counter() - loaded)
"""


def wall_times(argv: list[str], repeats: int) -> list[float]:
    """Seconds from start to exit of `argv` in a fresh process, `repeats` times after one untimed run."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times[1:]


def load_and_answer_times(repeats: int) -> dict[str, list[float]]:
    runs = [subprocess.run([sys.executable, "-c", LOAD_AND_ANSWER], capture_output=True, text=True, check=True)]
    runs += [subprocess.run([sys.executable, "-c", LOAD_AND_ANSWER], capture_output=True, text=True, check=True)
             for _ in range(repeats)]  # fmt: skip
    pairs = [tuple(map(float, run.stdout.split())) for run in runs[1:]]
    return {"load the bundled model": [load for load, _ in pairs], "answer (pipeline call)": [ask for _, ask in pairs]}


def summary(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": times}


def markdown(results: dict) -> str:
    lines = [table_row(["what", "seconds, median (min-max)"]), table_row(["---", "---:"])]
    for name, entry in results["timings"].items():
        lines.append(table_row([name, f"{entry['median']:.2f} ({entry['min']:.2f}-{entry['max']:.2f})"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each command (after one untimed).")
    parser.add_argument("--output", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    command = shutil.which("bcqlm", path=str(Path(sys.executable).parent))
    if command is None:
        parser.error("the `bcqlm` command is not installed next to this Python: `pip install -e .` installs it.")
    timings = {name: wall_times([command, *arguments], args.repeats) for name, arguments in COMMANDS.items()}
    timings |= {name: wall_times([sys.executable, "-c", code], args.repeats) for name, code in IMPORTS.items()}
    timings |= load_and_answer_times(args.repeats)
    results = {
        "machine": machine_info(threads=torch.get_num_threads()),
        "arguments": {"repeats": args.repeats},
        "timings": {name: summary(times) for name, times in timings.items()},
    }
    print(markdown(results))
    if args.output:
        write_json(results, args.output)
    return results


if __name__ == "__main__":
    main()
