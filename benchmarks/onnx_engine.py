"""The paper-size BcQLM (random weights) on PyTorch and on ONNX Runtime, side by side: time to first token, decode
speed and peak memory for the same image and question, each engine in its own process; and the export's time and peak
memory per precision.

    python -m benchmarks.onnx_engine --output benchmarks/results/onnx_engine.json

TTFT is the time from the call to the first new token (image tower, question encoder, Q-GCAM and the prefill);
decode tokens/s counts the tokens after it, `--new_tokens` of them (end-of-text ignored). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.lib.footprints import save_random_checkpoint
from benchmarks.lib.inputs import generate_exactly, make_inputs
from benchmarks.lib.peers import PEERS
from benchmarks.lib.report import gb, table_row, write_json
from benchmarks.lib.system import machine_info, max_rss_bytes, run_here, run_isolated
from benchmarks.lib.timing import PartTimer
from modeling_bcqlm import BcQLMForConditionalGeneration
from modeling_bcqlm.engines import ONNX_PRECISIONS
from modeling_bcqlm.testing.tiny_models import make_processor


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class StampStreamer:
    """Records when each chunk arrives: the prompt first, then one stamp per new token."""

    def __init__(self):
        self.stamps = []

    def put(self, ids):
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def _timings(model, generate, new_tokens: int, repeats: int) -> dict:
    """
    Median TTFT and decode tokens/s over `repeats` runs of `generate(new_tokens, streamer)`, after one untimed run; then
    the median seconds of each of BcQLM's parts (`PEERS["bcqlm"].parts`) in `repeats` one-token runs (the TTFT's parts;
    "rest": the run's time outside them: the embedding lookup, generation's own work).
    """
    ttfts, rates, parts = [], [], []
    for run in range(repeats + 1):
        streamer, start = StampStreamer(), time.perf_counter()
        generate(new_tokens, streamer)
        first, last = streamer.stamps[1], streamer.stamps[-1]
        if run:
            ttfts.append(first - start)
            rates.append((len(streamer.stamps) - 2) / (last - first))
    # No "lm_head" part: on ONNX Runtime the LM head is inside the decoder's graph (on PyTorch it counts in "rest").
    timer = PartTimer(model, {name: path for name, path in PEERS["bcqlm"].parts.items() if name != "lm_head"})
    for _ in range(repeats):
        timer.reset()
        start = time.perf_counter()
        generate(1, None)
        parts.append({**timer.times, "rest": time.perf_counter() - start - sum(timer.times.values())})
    timer.remove()
    return {
        "ttft_s": statistics.median(ttfts),
        "decode_tokens_per_s": statistics.median(rates),
        "ttft_parts_s": {name: statistics.median(run[name] for run in parts) for name in parts[0]},
        "runs": repeats,
    }


def save_checkpoint(folder: str, tiny: bool) -> None:
    """A random BcQLM with a processor (the builder copies a tokenizer; the runs feed ids of their own)."""
    save_random_checkpoint(PEERS["bcqlm"], tiny, folder)
    make_processor().save_pretrained(folder)


def time_torch(folder: str, dtype: str, new_tokens: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = BcQLMForConditionalGeneration.from_pretrained(folder, dtype=TORCH_DTYPES[dtype]).eval()
    inputs = make_inputs(PEERS["bcqlm"], model.config)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    result = _timings(
        model, lambda tokens, streamer: generate_exactly(model, inputs, tokens, streamer=streamer), new_tokens, repeats
    )
    return {**result, "peak_rss_bytes": max_rss_bytes()}


def time_onnx(folder: str, new_tokens: int, repeats: int, threads: int) -> dict:
    from modeling_bcqlm.engines.onnx_model import BcQLMOnnxForConditionalGeneration

    torch.set_num_threads(threads)
    model = BcQLMOnnxForConditionalGeneration.from_pretrained(folder, num_threads=threads)
    model.generation_config.eos_token_id = None  # exactly `new_tokens` tokens, as with the PyTorch runs
    inputs = make_inputs(PEERS["bcqlm"], model.config)

    def generate(tokens, streamer):
        return model.generate(**inputs, max_new_tokens=tokens, streamer=streamer)

    result = _timings(model, generate, new_tokens, repeats)
    return {**result, "peak_rss_bytes": max_rss_bytes()}


def export(folder: str, output: str, precision: str) -> dict:
    from modeling_bcqlm.engines.onnx_export import export_onnx

    start = time.perf_counter()
    export_onnx(folder, output, precision)
    decoder_bytes = sum(path.stat().st_size for path in (Path(output) / "onnx").iterdir())
    return {"seconds": time.perf_counter() - start, "peak_rss_bytes": max_rss_bytes(), "decoder_bytes": decoder_bytes}


def markdown(results: dict) -> str:
    lines = [table_row(["engine", "TTFT", "decode tokens/s", "peak RSS", "export", "export peak RSS"])]
    lines.append(table_row(["---", "---:", "---:", "---:", "---:", "---:"]))
    for name, run in results["runs"].items():
        made = results["exports"].get(name.removeprefix("onnxruntime "), {})
        lines.append(table_row([
            name, f"{run['ttft_s']:.2f} s", f"{run['decode_tokens_per_s']:.1f}", gb(run["peak_rss_bytes"]),
            f"{made['seconds']:.0f} s" if made else "", gb(made["peak_rss_bytes"]) if made else "",
        ]))  # fmt: skip
    names = list(next(iter(results["runs"].values()))["ttft_parts_s"])
    lines += ["", table_row(["one-token run by part", *names]), table_row(["---", *["---:"] * len(names)])]
    for name, run in results["runs"].items():
        lines.append(table_row([name, *[f"{run['ttft_parts_s'][part]:.3f} s" for part in names]]))
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="The tests' tiny BcQLM instead of the paper's.")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default=",".join(ONNX_PRECISIONS), help="ONNX decoder precisions.")
    parser.add_argument("--torch_dtypes", default="float32,bfloat16", help="PyTorch dtypes.")
    parser.add_argument("--workdir", help="Folder for the checkpoint and the exports (default: a temporary one).")
    parser.add_argument("--in_process", action="store_true", help="Run every engine in this process (tests).")
    parser.add_argument("--output", type=Path, help="Write the results as JSON here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run = run_here if args.in_process else run_isolated
    results = {"machine": machine_info(args.threads), "arguments": {**vars(args), "output": str(args.output)}}
    results.update(runs={}, exports={})
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        checkpoint = str(Path(work) / "bcqlm")
        run(save_checkpoint, checkpoint, args.tiny)
        for dtype in filter(None, args.torch_dtypes.split(",")):
            results["runs"][f"PyTorch {dtype}"] = run(
                time_torch, checkpoint, dtype, args.new_tokens, args.repeats, args.threads
            )
        for precision in filter(None, args.precisions.split(",")):
            folder = str(Path(work) / f"onnx-{precision}")
            results["exports"][precision] = run(export, checkpoint, folder, precision)
            results["runs"][f"onnxruntime {precision}"] = run(
                time_onnx, folder, args.new_tokens, args.repeats, args.threads
            )
    print(markdown(results))
    if args.output:
        write_json(results, args.output)
    return results


if __name__ == "__main__":
    main()
