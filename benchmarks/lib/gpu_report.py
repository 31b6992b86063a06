"""`gpu_peers.py`'s derived results (each run's floors and its times over them, ours over each peer per storage) and
its Markdown tables."""

from __future__ import annotations

from .floors import shape_key
from .peers import PEERS
from .report import gb, table_row


RESULTS_START = "<!-- cuda-results:start (written by benchmarks/gpu_peers.py --markdown) -->"
RESULTS_END = "<!-- cuda-results:end -->"


def _run_floors(run: dict, flops: int | None, rate: float, bandwidth: float, new_tokens: int) -> None:
    """Add the run's prefill floor (bf16 FLOPs / matmul rate; None without a FLOP count) and decode floor (bytes read
    per step / bandwidth), in seconds, and its times over them."""
    context = run["prompt_tokens"] + new_tokens / 2
    decode_floor = (run["decoder_bytes_per_token"] + run["kv_bytes_per_position"] * context) / bandwidth
    run["prefill_floor_s"] = None if flops is None else flops / rate
    run["ttft_vs_floor"] = None if flops is None else run["timings"]["ttft_s"] / run["prefill_floor_s"]
    run["decode_floor_s_per_token"] = decode_floor
    run["decode_vs_floor"] = run["timings"]["decode_s_per_token"] / decode_floor


def _ratio(mine: dict, run: dict) -> dict:
    """Ours over one peer's run in the same storage."""
    entry = {
        "ttft_ours_over_peer": mine["timings"]["ttft_s"] / run["timings"]["ttft_s"],
        "decode_tokens_per_s_ours_over_peer": mine["timings"]["decode_tokens_per_s"]
        / run["timings"]["decode_tokens_per_s"],
        "footprint_ours_over_peer": mine["footprint_bytes"] / run["footprint_bytes"],
    }
    if "peak_allocated_bytes" in run:
        entry["peak_allocated_ours_over_peer"] = mine["peak_allocated_bytes"] / run["peak_allocated_bytes"]
    return entry


def derive(results: dict) -> None:
    """Add each run's floors and its ratios to them, and ours over each peer per storage (`results["ratios"]`).
    Quantized runs use the bf16 run's FLOP count (bitsandbytes' kernels are invisible to the FLOP counter)."""
    rates, bandwidth = results["floors"]["matmul_gflops"], results["floors"]["bandwidth_gbs"] * 1e9
    for name, runs in results["models"].items():
        rate = rates[shape_key(results["gemm_shapes"][name])] * 1e9
        flops = runs["bf16"]["prefill_flops"]["total"] if "bf16" in runs else None
        for run in runs.values():
            _run_floors(run, flops, rate, bandwidth, results["settings"]["new_tokens"])
    ratios = {}
    ours = results["models"].get("bcqlm", {})
    for name, runs in results["models"].items():
        for storage, run in runs.items():
            if name != "bcqlm" and storage in ours:
                ratios.setdefault(name, {})[storage] = _ratio(ours[storage], run)
    results["ratios"] = ratios


def _times_over_floor(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _runs_table(models: dict) -> list[str]:
    lines = [
        "| model | storage | footprint | on the device | peak allocated | TTFT | TTFT / floor | decode | "
        "decode / floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in models.items():
        for storage, run in runs.items():
            timings = run["timings"]
            cells = [
                PEERS[name].label,
                storage,
                gb(run["footprint_bytes"]),
                gb(run.get("weights_on_device_bytes")),
                gb(run.get("peak_allocated_bytes")),
                f"{1e3 * timings['ttft_s']:.1f} ms",
                _times_over_floor(run["ttft_vs_floor"]),
                f"{timings['decode_tokens_per_s']:.1f} tokens/s",
                _times_over_floor(run["decode_vs_floor"]),
            ]
            lines.append(table_row(cells))
    return lines


def _ratios_table(ratios: dict) -> list[str]:
    if not ratios:
        return []
    lines = [
        "",
        "| ours / peer | storage | TTFT | decode tokens/s | footprint | peak allocated |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, storages in ratios.items():
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
            lines.append(table_row(cells))
    return lines


def render_markdown(results: dict) -> str:
    """The CUDA section of benchmarks/README.md: machine, settings and floors, one row per model and storage, and
    ours over each peer."""
    machine, settings, floors = results["machine"], results["settings"], results["floors"]
    rates = ", ".join(f"{shape}: {rate:,.0f} GFLOP/s" for shape, rate in floors["matmul_gflops"].items())
    lines = [
        f"Measured {machine['date']} on {machine['device_name']}, torch {machine['torch']}, transformers "
        f"{machine['transformers']}, bitsandbytes {machine.get('bitsandbytes', 'n/a')}; random weights, batch size 1, "
        f"greedy, {settings['new_tokens']} new tokens forced, medians of {settings['repeats']} runs. Floors: bf16 "
        f"matmul {rates}; bandwidth {floors['bandwidth_gbs']:,.0f} GB/s (bf16 matrix-vector).",
        "",
    ]
    lines += _runs_table(results["models"]) + _ratios_table(results["ratios"])
    return "\n".join(lines) + "\n"
