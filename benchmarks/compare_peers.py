"""Efficiency of the default BcQLM against a LLaVA-style peer and a SmolVLM-256M-shaped peer, on this machine's CPU.

    python -m benchmarks.compare_peers --output benchmarks/results/cpu_fp32.json --markdown
    python -m benchmarks.compare_peers --tiny --repeats 1 --new-tokens 4        # smoke run, seconds

(run from the repository root). Every model is built with random weights (no download) and measured in its own
spawned process, so that the peak resident memory is that model's alone; `benchmarks/lib/peers.py` describes the
three models.

Each model gets the same image (resized to its resolution), the same question length and the same number of new
tokens, forced with ``min_new_tokens = max_new_tokens = N`` and greedy decoding, batch size 1. Reported per model:
median time to first token (``generate`` with one new token: vision + prefill), decode tokens/s from
``(time(N tokens) - TTFT) / (N - 1)``, peak resident memory, parameter counts, prefill FLOPs (counted with
``torch.utils.flop_counter.FlopCounterMode`` on one prefill forward) and the physical floors of this machine (measured
fp32 matmul rate and memory bandwidth). ``--quantization`` adds ``get_memory_footprint()`` of the default BcQLM in fp32,
bitsandbytes 8-bit and 4-bit (nf4), loaded from a saved random checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.lib import cpu_report
from benchmarks.lib.floors import floor_seconds, physical_floors
from benchmarks.lib.footprints import quantization_footprints
from benchmarks.lib.measure import DTYPES, benchmark_model
from benchmarks.lib.peers import MODELS
from benchmarks.lib.report import gb, log, write_json, write_markdown
from benchmarks.lib.system import machine_info, run_here, run_isolated, wait_for_quiet_cpu


def _names(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of bcqlm,llava,smolvlm")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated, forced (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; medians (default 3)")
    parser.add_argument("--question-length", type=int, default=12, help="question tokens (default 12)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--cache", default="dynamic,static",
                        help="cache implementations to time (default dynamic,static)")
    parser.add_argument("--quantization", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure bnb 8-bit / 4-bit footprints of the default BcQLM "
                             "(saves a ~5 GB checkpoint)")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoint for --quantization goes")
    parser.add_argument("--profile", default="", help="comma-separated models to profile with torch.profiler")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of all three models (smoke run)")
    parser.add_argument("--output", default=None, help="results JSON, e.g. benchmarks/results/cpu_fp32.json")
    parser.add_argument("--markdown", action="store_true", help="(re)write the results section of benchmarks/README.md")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parent / "README.md"), help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (peak RSS is then not per model)")
    parser.add_argument("--quiet-timeout", type=float, default=300.0,
                        help="before each model, wait up to this many seconds for other processes to leave the CPUs "
                             "(default 300; 0: do not wait)")
    parser.add_argument("--quiet-share", type=float, default=0.15,
                        help="'quiet' = other processes use less than this share of all CPUs (default 0.15)")
    args = parser.parse_args(argv)
    args.models = _names(args.models)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    args.cache = tuple(_names(args.cache))
    args.profile = set(_names(args.profile))
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed needs one token after the first)")
    return args


def measure_models(args, runner) -> dict:
    """Each model of `args.models` measured by `runner` (its own process unless --in-process), after waiting for a
    quiet CPU."""
    models = {}
    for name in args.models:
        quiet = wait_for_quiet_cpu(args.quiet_share, timeout=args.quiet_timeout) if args.quiet_timeout > 0 else None
        if quiet is not None:
            log(f"other processes' CPU share {quiet['others_cpu_share']}, waited {quiet['waited_s']} s")
        log(f"{name}: building and timing")
        models[name] = model = runner(
            benchmark_model, name, tiny=args.tiny, dtype=args.dtype, new_tokens=args.new_tokens, repeats=args.repeats,
            question_length=args.question_length, threads=args.threads, cache_implementations=args.cache,
            profile=name in args.profile,
        )
        model["quiet_check"] = quiet
        t = model["timings"][args.cache[0]]
        log(f"{name}: TTFT {t['ttft_s']:.2f} s, decode {t['decode_tokens_per_s']:.2f} tok/s, "
            f"peak RSS {gb(model['peak_rss_bytes'])}")
    return models


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runner = run_here if args.in_process else run_isolated
    results = {
        "machine": machine_info(args.threads),
        "settings": {
            "models": args.models, "dtype": args.dtype, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "question_length": args.question_length, "cache": list(args.cache), "tiny": args.tiny,
            "peak_rss": "VmHWM reset after the model is built, read after the dynamic-cache runs (weights included)",
        },
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    results["models"] = measure_models(args, runner)
    if args.quiet_timeout > 0:
        results["floors_quiet_check"] = wait_for_quiet_cpu(args.quiet_share, timeout=args.quiet_timeout)
    log("measuring the machine's floors")
    shapes = {name: model["gemm_shapes"] for name, model in results["models"].items()}
    results["floors"] = runner(physical_floors, shapes, args.tiny, args.threads, floor_seconds(args.tiny))
    if args.quantization:
        log("quantized footprints of the default BcQLM")
        try:
            results["quantization"] = runner(
                quantization_footprints, tiny=args.tiny, threads=args.threads, workdir=args.workdir
            )
        except Exception as error:  # report what happened rather than lose the timings
            results["quantization_error"] = f"{type(error).__name__}: {error}"
            log(f"quantization failed: {results['quantization_error']}")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    cpu_report.derive(results)

    markdown = cpu_report.render_markdown(results)
    print(markdown)
    if args.output:
        write_json(results, Path(args.output))
        log(f"wrote {args.output}")
    if args.markdown:
        write_markdown(markdown, Path(args.readme), cpu_report.RESULTS_START, cpu_report.RESULTS_END)
        log(f"wrote {args.readme}")
    return results


if __name__ == "__main__":
    main()
