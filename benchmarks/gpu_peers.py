"""The efficiency comparison of `compare_peers.py` on one GPU: the default BcQLM, the LLaVA-style peer and the
SmolVLM-256M-shaped peer (the same random-weight models and inputs) in bf16 and loaded with bitsandbytes 8-bit
(LLM.int8) and 4-bit (nf4, double quantization, bf16 compute).

    python -m benchmarks.gpu_peers --output benchmarks/results/cuda.json --markdown
    python -m benchmarks.gpu_peers --device cpu --tiny --repeats 1 --new-tokens 3   # the same path on the CPU, seconds

(run from the repository root). Per model and storage: median time to first token (`generate` with one new token),
decode tokens/s from `(time(N tokens) - TTFT) / (N - 1)` with `min_new_tokens = max_new_tokens = N`,
`get_memory_footprint()`, the GPU memory the loaded model holds and the peak allocated while generating
(`torch.cuda.max_memory_allocated`, reset after loading), and the floors of the GPU measured in the same process: bf16
matmul rate at the decoder's prefill MLP shape and bandwidth from a large bf16 matrix-vector product. Quantized models
are loaded with `from_pretrained` from a random fp32 checkpoint saved once per model in a temporary folder
(`--workdir`), as a user would load them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from benchmarks.lib import gpu_report
from benchmarks.lib.floors import bf16_floors, floor_seconds, gemm_shapes
from benchmarks.lib.inputs import make_inputs
from benchmarks.lib.measure import STORAGES, benchmark_storage
from benchmarks.lib.peers import MODELS, PEERS
from benchmarks.lib.report import log, write_json, write_markdown
from benchmarks.lib.system import machine_info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of bcqlm,llava,smolvlm")
    parser.add_argument("--storages", default=",".join(STORAGES), help="comma-separated subset of bf16,int8,nf4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated, forced (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement; medians (default 5)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of all three models (smoke run)")
    parser.add_argument("--workdir", default=None, help="where the temporary fp32 checkpoints for int8/nf4 go")
    parser.add_argument("--output", default=None, help="results JSON, e.g. benchmarks/results/cuda.json")
    parser.add_argument("--markdown", action="store_true", help="(re)write the CUDA section of benchmarks/README.md")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parent / "README.md"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [name for name in args.models.split(",") if name]
    args.storages = [storage for storage in args.storages.split(",") if storage]
    if not set(args.models) <= set(MODELS) or not set(args.storages) <= set(STORAGES):
        parser.error(f"--models must name some of {MODELS} and --storages some of {STORAGES}")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed needs one token after the first)")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch (pass --device cpu for a smoke run)")
    return args


def device_info(device: str) -> dict:
    """`machine_info` with the device's name (the CPU's on the CPU) and the CUDA version."""
    machine = machine_info(torch.get_num_threads())
    cuda = torch.device(device).type == "cuda"
    machine["device_name"] = torch.cuda.get_device_name(device) if cuda else machine["cpu"]
    machine["cuda"] = torch.version.cuda
    return machine


def measure_runs(args, results: dict) -> None:
    """Each model in each storage into `results["models"]`, and its decoder's prefill MLP shape into
    `results["gemm_shapes"]`; the temporary checkpoints are removed at the end."""
    checkpoints = {}
    try:
        for name in args.models:
            config = PEERS[name].make_config(args.tiny)
            prompt_length = make_inputs(PEERS[name], config)["input_ids"].shape[1]
            results["gemm_shapes"][name] = gemm_shapes(PEERS[name], config, prompt_length)["decoder"]
            results["models"][name] = {}
            for storage in args.storages:
                log(f"{name} ({storage})")
                run = benchmark_storage(
                    name, storage, args.device, args.tiny, args.new_tokens, args.repeats, checkpoints, args.workdir
                )
                results["models"][name][storage] = run
                log(f"{name} ({storage}): TTFT {run['timings']['ttft_s']:.4f} s, "
                    f"{run['timings']['decode_tokens_per_s']:.1f} tokens/s")
    finally:
        for folder in checkpoints.values():
            shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = {
        "machine": device_info(args.device),
        "settings": {"device": args.device, "new_tokens": args.new_tokens, "repeats": args.repeats, "tiny": args.tiny},
        "gemm_shapes": {},
        "models": {},
    }
    measure_runs(args, results)
    results["floors"] = bf16_floors(args.device, args.tiny, results["gemm_shapes"], floor_seconds(args.tiny))
    gpu_report.derive(results)

    markdown = gpu_report.render_markdown(results)
    print(markdown)
    if args.output:
        write_json(results, Path(args.output))
    if args.markdown:
        write_markdown(markdown, Path(args.readme), gpu_report.RESULTS_START, gpu_report.RESULTS_END)
    return results


if __name__ == "__main__":
    main()
