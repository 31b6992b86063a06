"""The efficiency comparison of `compare_peers.py` on one GPU: the default BcQLM, the LLaVA-style peer and the
SmolVLM-256M-shaped peer (the same random-weight models and inputs) in bf16 and loaded with bitsandbytes 8-bit
(LLM.int8) and 4-bit (nf4, double quantization, bf16 compute).

    python benchmarks/gpu_peers.py --output benchmarks/results/cuda.json --markdown
    python benchmarks/gpu_peers.py --device cpu --tiny --repeats 1 --new-tokens 3   # the same path on the CPU, seconds

Per model and storage: median time to first token (`generate` with one new token), decode tokens/s from
`(time(N tokens) - TTFT) / (N - 1)` with `min_new_tokens = max_new_tokens = N`, `get_memory_footprint()`, the GPU
memory the loaded model holds and the peak allocated while generating (`torch.cuda.max_memory_allocated`, reset after
loading), and the floors of the GPU measured in the same process: bf16 matmul rate at the decoder's prefill MLP shape
and bandwidth from a large bf16 matrix-vector product. Quantized models are loaded with `from_pretrained` from a
random fp32 checkpoint saved once per model in a temporary folder (`--workdir`), as a user would load them.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/gpu_peers.py` from a checkout that is not installed
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from transformers import BitsAndBytesConfig  # noqa: E402

from benchmarks import compare_peers as cp  # noqa: E402


STORAGES = ("bf16", "int8", "nf4")
QUANTIZATION = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    ),
}
RESULTS_START = "<!-- cuda-results:start (written by benchmarks/gpu_peers.py --markdown) -->"
RESULTS_END = "<!-- cuda-results:end -->"


def memory_allocated(device) -> int | None:
    """Bytes the caching allocator hands out on a CUDA `device` (None on the CPU)."""
    return torch.cuda.memory_allocated(device) if torch.device(device).type == "cuda" else None


def load(name: str, storage: str, device: str, tiny: bool, checkpoints: dict, workdir: str) -> torch.nn.Module:
    """`name` in `storage` on `device`: bf16 is built directly; int8 and nf4 load the model's random fp32 checkpoint
    (saved on first use into `checkpoints[name]`) with that quantization config and bf16 for the parts kept."""
    if storage == "bf16":
        return cp.build_model(name, tiny=tiny, dtype=torch.bfloat16).to(device)
    if name not in checkpoints:
        checkpoints[name] = tempfile.mkdtemp(prefix=f"{name}_", dir=workdir)
        model = cp.build_model(name, tiny=tiny)
        model.save_pretrained(checkpoints[name])
        del model
        gc.collect()
    return (
        cp.model_class(name)
        .from_pretrained(
            checkpoints[name],
            quantization_config=QUANTIZATION[storage],
            dtype=torch.bfloat16,
            device_map={"": device},
        )
        .eval()
    )


def time_generation(model, inputs: dict, new_tokens: int, repeats: int, device) -> dict:
    """Median TTFT and N-token times, and decode tokens/s, with the device synchronised around each run."""

    def timed(tokens: int) -> float:
        cp.synchronize(device)
        start = time.perf_counter()
        cp.generate_exactly(model, inputs, tokens)
        cp.synchronize(device)
        return time.perf_counter() - start

    ttfts, fulls = [], []
    for _ in range(repeats):
        ttfts.append(timed(1))
        fulls.append(timed(new_tokens))
    ttft, full = statistics.median(ttfts), statistics.median(fulls)
    per_token = (full - ttft) / (new_tokens - 1)
    return {
        "ttft_s": ttft,
        "ttft_all_s": ttfts,
        "full_s": full,
        "full_all_s": fulls,
        "decode_s_per_token": per_token,
        "decode_tokens_per_s": 1.0 / per_token if per_token > 0 else float("nan"),
    }


def benchmark(
    name: str, storage: str, device: str, tiny: bool, new_tokens: int, repeats: int, checkpoints: dict, workdir: str
) -> dict:
    """Load `name` in `storage`, then measure its footprint, device memory and generation times."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = memory_allocated(device)
    model = load(name, storage, device, tiny, checkpoints, workdir)
    loaded = memory_allocated(device)
    inputs = {key: value.to(device) for key, value in cp.make_inputs(name, model.config).items()}
    result = {
        "footprint_bytes": model.get_memory_footprint(),
        "quantized_linears": sum(type(module).__name__ in ("Linear8bitLt", "Linear4bit") for module in model.modules()),
        "prompt_tokens": inputs["input_ids"].shape[1],
        "decoder_bytes_per_token": cp.decoder_bytes_per_token(name, model),
        "kv_bytes_per_position": cp.kv_bytes_per_position(model),
    }
    if storage == "bf16":  # bitsandbytes' kernels are invisible to the FLOP counter: count the unquantized model
        result["prefill_flops"] = cp.prefill_flops(name, model, inputs)
    output = cp.generate_exactly(model, inputs, 2, return_dict_in_generate=True, output_logits=True)  # warm-up
    if not all(torch.isfinite(step).all() for step in output.logits):
        raise RuntimeError(f"{name} ({storage}): non-finite logits with random weights")
    del output
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result["timings"] = time_generation(model, inputs, new_tokens, repeats, device)
    if before is not None:
        result["weights_on_device_bytes"] = loaded - before
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - before
    del model, inputs
    gc.collect()
    return result


def floors(device: str, tiny: bool, gemm_shapes: dict) -> dict:
    """bf16 matmul GFLOP/s at each decoder prefill MLP shape and bandwidth (GB/s) of a bf16 matrix-vector product."""
    rates = {
        "x".join(map(str, shape)): cp.measure_matmul_rate(*shape, dtype=torch.bfloat16, device=device)
        for shape in gemm_shapes.values()
    }
    rows, cols = (4096, 1024) if tiny else (128256, 2048)  # the default decoder's LM head
    bandwidth = cp.measure_bandwidth(rows, cols, repeats=20, dtype=torch.bfloat16, device=device)
    return {"matmul_gflops": rates, "bandwidth_gbs": bandwidth, "bandwidth_shape": [rows, cols]}


def derive(results: dict) -> None:
    """Each run's floors and its ratios to them; ours over each peer, per storage."""
    rates, bandwidth = results["floors"]["matmul_gflops"], results["floors"]["bandwidth_gbs"] * 1e9
    for name, runs in results["models"].items():
        rate = rates["x".join(map(str, results["gemm_shapes"][name]))] * 1e9
        flops = runs["bf16"]["prefill_flops"]["total"] if "bf16" in runs else None
        for run in runs.values():
            context = run["prompt_tokens"] + results["settings"]["new_tokens"] / 2
            decode_floor = (run["decoder_bytes_per_token"] + run["kv_bytes_per_position"] * context) / bandwidth
            run["prefill_floor_s"] = None if flops is None else flops / rate
            run["ttft_vs_floor"] = None if flops is None else run["timings"]["ttft_s"] / run["prefill_floor_s"]
            run["decode_floor_s_per_token"] = decode_floor
            run["decode_vs_floor"] = run["timings"]["decode_s_per_token"] / decode_floor
    ratios = {}
    ours = results["models"].get("bcqlm", {})
    for name, runs in results["models"].items():
        for storage, run in runs.items():
            if name == "bcqlm" or storage not in ours:
                continue
            mine = ours[storage]
            entry = {
                "ttft_ours_over_peer": mine["timings"]["ttft_s"] / run["timings"]["ttft_s"],
                "decode_tokens_per_s_ours_over_peer": mine["timings"]["decode_tokens_per_s"]
                / run["timings"]["decode_tokens_per_s"],
                "footprint_ours_over_peer": mine["footprint_bytes"] / run["footprint_bytes"],
            }
            if "peak_allocated_bytes" in run:
                entry["peak_allocated_ours_over_peer"] = mine["peak_allocated_bytes"] / run["peak_allocated_bytes"]
            ratios.setdefault(name, {})[storage] = entry
    results["ratios"] = ratios


def _gb_or_na(value) -> str:
    return "n/a" if value is None else cp._gb(value)


def _ratio_or_na(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_markdown(results: dict) -> str:
    machine, settings, floors = results["machine"], results["settings"], results["floors"]
    rates = ", ".join(f"{shape}: {rate:,.0f} GFLOP/s" for shape, rate in floors["matmul_gflops"].items())
    lines = [
        f"Measured {machine['date']} on {machine['device_name']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, bitsandbytes {machine.get('bitsandbytes', 'n/a')}; random weights, batch size 1, "
        f"greedy, {settings['new_tokens']} new tokens forced, medians of {settings['repeats']} runs. Floors: bf16 "
        f"matmul {rates}; bandwidth {floors['bandwidth_gbs']:,.0f} GB/s (bf16 matrix-vector).",
        "",
        "| model | storage | footprint | on the device | peak allocated | TTFT | TTFT / floor | decode | "
        "decode / floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results["models"].items():
        for storage, run in runs.items():
            timings = run["timings"]
            cells = [
                cp.LABELS[name],
                storage,
                cp._gb(run["footprint_bytes"]),
                _gb_or_na(run.get("weights_on_device_bytes")),
                _gb_or_na(run.get("peak_allocated_bytes")),
                f"{1e3 * timings['ttft_s']:.1f} ms",
                _ratio_or_na(run["ttft_vs_floor"]),
                f"{timings['decode_tokens_per_s']:.1f} tokens/s",
                _ratio_or_na(run["decode_vs_floor"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if results["ratios"]:
        lines += [
            "",
            "| ours / peer | storage | TTFT | decode tokens/s | footprint | peak allocated |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, storages in results["ratios"].items():
            for storage, entry in storages.items():
                peak = entry.get("peak_allocated_ours_over_peer")
                cells = [
                    name,
                    storage,
                    f"{entry['ttft_ours_over_peer']:.3f}",
                    f"{entry['decode_tokens_per_s_ours_over_peer']:.3f}",
                    f"{entry['footprint_ours_over_peer']:.3f}",
                    "n/a" if peak is None else f"{peak:.3f}",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(cp.MODELS), help="comma-separated subset of bcqlm,llava,smolvlm")
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
    if not set(args.models) <= set(cp.MODELS) or not set(args.storages) <= set(STORAGES):
        parser.error(f"--models must name some of {cp.MODELS} and --storages some of {STORAGES}")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed needs one token after the first)")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch (pass --device cpu for a smoke run)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = cp.machine_info(torch.get_num_threads())
    machine["device_name"] = (
        torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else machine["cpu"]
    )
    machine["cuda"] = torch.version.cuda
    results = {
        "machine": machine,
        "settings": {"device": args.device, "new_tokens": args.new_tokens, "repeats": args.repeats, "tiny": args.tiny},
        "gemm_shapes": {},
        "models": {},
    }
    checkpoints = {}
    try:
        for name in args.models:
            config = cp.model_config(name, args.tiny)
            prompt_length = cp.make_inputs(name, config)["input_ids"].shape[1]
            results["gemm_shapes"][name] = cp.gemm_shapes(name, config, prompt_length)["decoder"]
            results["models"][name] = {}
            for storage in args.storages:
                cp._log(f"{name} ({storage})")
                run = benchmark(
                    name, storage, args.device, args.tiny, args.new_tokens, args.repeats, checkpoints, args.workdir
                )
                results["models"][name][storage] = run
                timings = run["timings"]
                cp._log(
                    f"{name} ({storage}): TTFT {timings['ttft_s']:.4f} s, {timings['decode_tokens_per_s']:.1f} tokens/s"
                )
    finally:
        for folder in checkpoints.values():
            shutil.rmtree(folder, ignore_errors=True)
    results["floors"] = floors(args.device, args.tiny, results["gemm_shapes"])
    derive(results)

    markdown = render_markdown(results)
    print(markdown)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(cp._jsonable(results), indent=2) + "\n")
    if args.markdown:
        cp.write_markdown(markdown, Path(args.readme), RESULTS_START, RESULTS_END)
    return results


if __name__ == "__main__":
    main()
