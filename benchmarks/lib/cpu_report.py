"""`compare_peers.py`'s derived results (each model's floors and its times over them, ours over each peer, the
targets) and its Markdown tables."""

from __future__ import annotations

from typing import Callable

from .floors import shape_key
from .report import gb, millions, share, table_row


RESULTS_START = "<!-- results:start (written by benchmarks/compare_peers.py --markdown) -->"
RESULTS_END = "<!-- results:end -->"
TARGETS = {
    "ttft_vs_llava": 0.15,  # TTFT(ours) / TTFT(LLaVA-style) <= 0.15
    "decode_vs_floor": 1.5,  # decode time per token (ours) / bandwidth floor <= 1.5
    "memory_vs_llava": 0.85,  # peak RSS(ours) / peak RSS(LLaVA-style) <= 0.85
    "int4_vs_fp32": 0.35,  # get_memory_footprint(4-bit nf4) / get_memory_footprint(fp32) <= 0.35
}
QUANTIZATION_LABELS = {
    "int8": "bnb 8-bit (LLM.int8)",
    "nf4": "bnb 4-bit nf4, double quant",
    "nf4+bf16": "bnb 4-bit nf4, unquantized parts bf16 (BreezeCLIP kept fp32)",
}


def model_floors(model: dict, common_floors: dict) -> dict:
    """The model's prefill floor (counted FLOPs / matmul rate at its MLP shapes) and decode floor ((decoder weight
    bytes + mean KV-cache bytes) / bandwidth), in seconds, from the floors measured in its own process (else the
    run's common ones)."""
    floors = model.get("local_floors") or common_floors
    bandwidth = floors["bandwidth_gbs"] * 1e9
    rates = {part: floors["matmul_gflops"][shape_key(shape)] * 1e9 for part, shape in model["gemm_shapes"].items()}
    flops = model["prefill_flops"]
    prefill_floor = flops["decoder"] / rates["decoder"] + flops["vision"] / rates.get("vision", rates["decoder"])
    mean_context = model["prompt_tokens"] + model["new_tokens"] / 2
    decode_floor = (model["decoder_bytes_per_token"] + model["kv_bytes_per_position"] * mean_context) / bandwidth
    return {
        "source": "local" if model.get("local_floors") else "common",
        "bandwidth_gbs": floors["bandwidth_gbs"],
        "prefill_s": prefill_floor,
        "decode_s_per_token": decode_floor,
        "decode_tokens_per_s": 1.0 / decode_floor,
        "matmul_gflops_used": {part: rate / 1e9 for part, rate in rates.items()},
    }


def _default_timing(model: dict) -> dict:
    """The dynamic-cache timings, else the first cache's."""
    return model["timings"].get("dynamic") or next(iter(model["timings"].values()))


def peer_ratios(models: dict) -> dict:
    """Ours over each peer: TTFT, decode tokens/s, peak RSS, parameters, prefill FLOPs and image tokens."""
    if "bcqlm" not in models:
        return {}
    ours, ours_t = models["bcqlm"], _default_timing(models["bcqlm"])
    ratios = {}
    for name, peer in models.items():
        if name == "bcqlm":
            continue
        peer_t = _default_timing(peer)
        ratios[name] = {
            "ttft_ours_over_peer": ours_t["ttft_s"] / peer_t["ttft_s"],
            "decode_tokens_per_s_ours_over_peer": ours_t["decode_tokens_per_s"] / peer_t["decode_tokens_per_s"],
            "peak_rss_ours_over_peer": ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
            "params_ours_over_peer": ours["parameters"]["total"] / peer["parameters"]["total"],
            "prefill_flops_ours_over_peer": ours["prefill_flops"]["total"] / peer["prefill_flops"]["total"],
            "image_tokens_ours_over_peer": ours["image_tokens"] / peer["image_tokens"],
        }
    return ratios


def _target(value: float, limit: float, positive: bool = False) -> dict:
    """`positive`: a value <= 0 fails too (a negative decode time is noise in a tiny run, not speed)."""
    return {"value": value, "limit": limit, "pass": value <= limit and (value > 0 or not positive)}


def targets(results: dict) -> dict:
    """Each target's value, limit and pass/fail, for the measurements the run has."""
    models, ratios, found = results["models"], results["ratios"], {}
    if "llava" in ratios:
        found["TTFT ours <= 0.15x LLaVA-style"] = _target(
            ratios["llava"]["ttft_ours_over_peer"], TARGETS["ttft_vs_llava"]
        )
    for cache, timing in models.get("bcqlm", {}).get("timings", {}).items():
        found[f"decode within 1.5x bandwidth floor ({cache} cache)"] = _target(
            timing["decode_vs_floor"], TARGETS["decode_vs_floor"], positive=True
        )
    if "llava" in ratios:
        found["peak RSS ours <= 0.85x LLaVA-style"] = _target(
            ratios["llava"]["peak_rss_ours_over_peer"], TARGETS["memory_vs_llava"]
        )
    quantization = results.get("quantization")
    if quantization and "nf4" in quantization.get("loads", {}):
        found["4-bit footprint <= 0.35x fp32"] = _target(
            quantization["loads"]["nf4"]["ratio_to_fp32"], TARGETS["int4_vs_fp32"]
        )
    return found


def derive(results: dict) -> dict:
    """Add each model's floors and its times over them, the ratios of ours over each peer and the targets."""
    for model in results["models"].values():
        model["floors"] = floors = model_floors(model, results["floors"])
        for timing in model["timings"].values():
            timing["ttft_vs_floor"] = timing["ttft_s"] / floors["prefill_s"]
            timing["decode_vs_floor"] = timing["decode_s_per_token"] / floors["decode_s_per_token"]
    results["ratios"] = peer_ratios(results["models"])
    results["targets"] = targets(results)
    return results


def _header(results: dict) -> list[str]:
    machine, settings = results["machine"], results["settings"]
    return [
        f"Measured {machine['date']} on {machine['cpu']} ({machine['logical_cpus']} logical CPUs, "
        f"{machine.get('memory_gib', '?')} GiB, {machine['capability']}), "
        f"`torch.set_num_threads({machine['torch_threads']})`, torch {machine['torch']}, transformers "
        f"{machine['transformers']}"
        + (f", bitsandbytes {machine['bitsandbytes']}" if "bitsandbytes" in machine else "")
        + f"; load average {results['load_average_before']} before, {results['load_average_after']} after "
        "(other processes may have been running).",
        "",
        f"Settings: {settings['dtype']}, random weights, batch size 1, greedy, {settings['new_tokens']} new tokens "
        f"forced (`min_new_tokens = max_new_tokens`), question of {settings['question_length']} tokens, medians of "
        f"{settings['repeats']} runs{' — TINY configs, not the real shapes' if settings['tiny'] else ''}.",
    ]


def _cache_rows(cache: str) -> list[tuple[str, Callable[[dict], str]]]:
    def timing(m: dict) -> dict:
        return m["timings"][cache]

    return [
        (f"TTFT, s ({cache} cache; median, min)",
         lambda m: f"{timing(m)['ttft_s']:.2f}, {timing(m)['ttft_min_s']:.2f}"),
        (f"TTFT / prefill floor ({cache})", lambda m: f"{timing(m)['ttft_vs_floor']:.2f}x"),
        (f"decode, tokens/s ({cache} cache)", lambda m: f"{timing(m)['decode_tokens_per_s']:.2f}"),
        (f"decode step, median inside the N-token runs, s ({cache})",
         lambda m: f"{timing(m)['decode_step_median_s']:.3f}"),
        (f"decode time / bandwidth floor ({cache})", lambda m: f"{timing(m)['decode_vs_floor']:.2f}x"),
        (f"other processes' CPU share during these runs ({cache})", lambda m: share(timing(m).get("others_cpu_share"))),
    ]


def _model_rows(caches: list[str]) -> list[tuple[str, Callable[[dict], str]]]:
    """(label, cell of one model's results) for each row of the models' table."""
    def flops(m: dict) -> str:
        f = m["prefill_flops"]
        return f"{f['total'] / 1e9:,.1f} ({f['vision'] / 1e9:,.1f} + {f['decoder'] / 1e9:,.1f})"

    rows = [
        ("parameters: total", lambda m: millions(m["parameters"]["total"])),
        ("parameters: vision side (tower, projector/connector; ours: + question encoder, Q-GCAM)",
         lambda m: millions(m["parameters"]["vision"])),
        ("parameters: decoder (incl. embedding / LM head)", lambda m: millions(m["parameters"]["decoder"])),
        ("image size / image tokens / prompt tokens",
         lambda m: f"{m['image_size']} px / {m['image_tokens']} / {m['prompt_tokens']}"),
        ("prefill GFLOP (vision side + decoder)", flops),
    ]
    for cache in caches:
        rows += _cache_rows(cache)
    return rows + [
        ("fp32 matmul GFLOP/s at the decoder's (vision tower's) prefill MLP shape, measured in the model's process",
         lambda m: ", ".join(f"{part} {rate:.0f}" for part, rate in m["floors"]["matmul_gflops_used"].items())),
        ("fp32 matrix-vector bandwidth, GB/s, same", lambda m: f"{m['floors']['bandwidth_gbs']:.1f}"),
        ("prefill floor, s", lambda m: f"{m['floors']['prefill_s']:.2f}"),
        ("decode floor, tokens/s (weights + KV bytes / bandwidth)",
         lambda m: f"{m['floors']['decode_tokens_per_s']:.2f}"),
        ("peak RSS while generating", lambda m: gb(m["peak_rss_bytes"])),
        (f"TTFT breakdown, s ({caches[0]})",
         lambda m: ", ".join(f"{k} {v:.2f}" for k, v in m["timings"][caches[0]]["ttft_parts_s"].items())),
    ]


def _models_table(models: dict) -> list[str]:
    caches = list(next(iter(models.values()))["timings"])
    lines = ["| | " + " | ".join(m["label"] for m in models.values()) + " |", "|---|" + "---:|" * len(models)]
    for label, cell in _model_rows(caches):
        lines.append(table_row([label, *(cell(m) for m in models.values())]))
    return lines


def _floors_note(floors: dict) -> list[str]:
    rates = ", ".join(f"{shape}: {rate:.0f} GFLOP/s" for shape, rate in floors["matmul_gflops"].items())
    rows, cols = floors["bandwidth_shape"]
    return [
        "",
        "Common floors (measured after the models, other processes' CPU share "
        f"{share(floors.get('others_cpu_share'))}): fp32 matmul {rates}; fp32 matrix-vector bandwidth "
        f"{floors['bandwidth_gbs']:.1f} GB/s ({rows}x{cols}). "
        "Each model's floors use the rates measured in its own process right before its timings: prefill floor = "
        "counted prefill FLOPs / the rate at the model's decoder (and vision-tower) MLP shape; decode floor = (decoder "
        "weight bytes read per token + mean KV-cache bytes) / bandwidth.",
    ]


def _ratios_table(ratios: dict) -> list[str]:
    if not ratios:
        return []
    lines = ["", "| ours / peer | " + " | ".join(ratios) + " |", "|---|" + "---:|" * len(ratios)]
    for key in next(iter(ratios.values())):
        lines.append(table_row([key, *(f"{r[key]:.3f}" for r in ratios.values())]))
    return lines


def _quantization_table(quant: dict | None) -> list[str]:
    if not quant:
        return []
    lines = [
        "", "`get_memory_footprint()` of the default BcQLM (random weights saved and reloaded):", "",
        "| storage | footprint | / fp32 | + quant. statistics | load time |", "|---|---:|---:|---:|---:|",
        f"| fp32 | {gb(quant['fp32_bytes'])} | 1.000 | | |",
    ]
    for label, entry in quant["loads"].items():
        lines.append(
            f"| {QUANTIZATION_LABELS.get(label, label)} | {gb(entry['footprint_bytes'])} | "
            f"{entry['ratio_to_fp32']:.3f} | {entry['quant_state_bytes'] / 1e6:.1f} MB | "
            f"{entry['load_seconds']:.0f} s |"
        )
    nf4_16bit = quant["nf4_with_16bit_embedding_bytes"]
    lines.append(
        f"| nf4 with the tied embedding / LM head ({gb(quant['tied_embedding_fp32_bytes'])} in fp32) in 16-bit, "
        f"computed | {gb(nf4_16bit)} | {nf4_16bit / quant['fp32_bytes']:.3f} | | |"
    )
    return lines


def _targets_table(found: dict) -> list[str]:
    if not found:
        return []
    lines = ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
    for target, entry in found.items():
        result = "pass" if entry["pass"] else "FAIL"
        lines.append(table_row([target, f"{entry['value']:.3f}", str(entry["limit"]), result]))
    return lines


def render_markdown(results: dict) -> str:
    """The results section of benchmarks/README.md: machine and settings, the models' table, the floors, ours over
    each peer, the quantized footprints and the targets."""
    lines = _header(results) + [""] + _models_table(results["models"]) + _floors_note(results["floors"])
    lines += _ratios_table(results["ratios"]) + _quantization_table(results.get("quantization"))
    lines += _targets_table(results["targets"])
    return "\n".join(lines) + "\n"
