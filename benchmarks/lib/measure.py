"""One model measured end to end: `benchmark_model` builds it on the CPU (meant to run in its own process) and times
it with the machine's state alongside; `benchmark_storage` loads it in one storage on a device (a GPU) and times it."""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time

import torch
from transformers import PreTrainedModel

from .build import build_model
from .floors import floor_seconds, gemm_shapes, physical_floors
from .footprints import GPU_QUANTIZATION, load_quantized, quantized_linears, save_random_checkpoint
from .inputs import generate_exactly, make_inputs
from .peers import PEERS, Peer
from .profiling import profile_model
from .sizes import decoder_bytes_per_token, kv_bytes_per_position, parameter_counts, prefill_flops
from .system import CpuShare, max_rss_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes
from .timing import PartTimer, time_runs


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGES = ("bf16", *GPU_QUANTIZATION)


def check_finite(model: PreTrainedModel, inputs: dict, label: str) -> bool:
    """Two greedy tokens (the warm-up of `generate`), whose logits must be finite (random weights can overflow)."""
    output = generate_exactly(model, inputs, 2, return_dict_in_generate=True, output_logits=True)
    if not all(torch.isfinite(step).all() for step in output.logits):
        raise RuntimeError(f"{label}: non-finite logits with random weights")
    return True


def describe_prompt(peer: Peer, config, inputs: dict) -> dict:
    """The image's size and tokens, and the prompt's and the question encoder's lengths (None: no question encoder)."""
    question = inputs.get("question_input_ids")
    return {
        "image_size": peer.image_size(config),
        "image_tokens": peer.image_tokens(config),
        "prompt_tokens": inputs["input_ids"].shape[1],
        "question_encoder_tokens": None if question is None else question.shape[1],
    }


def describe_sizes(peer: Peer, model: PreTrainedModel, prompt_tokens: int) -> dict:
    """Parameter counts, weight bytes per decode step, KV-cache bytes per position, prefill MLP matmul shapes."""
    return {
        "parameters": parameter_counts(peer, model),
        "decoder_bytes_per_token": decoder_bytes_per_token(peer, model),
        "kv_bytes_per_position": kv_bytes_per_position(model),
        "gemm_shapes": gemm_shapes(peer, model.config, prompt_tokens),
    }


def time_cache(
    model: PreTrainedModel, inputs: dict, cache: str, new_tokens: int, repeats: int, parts: PartTimer
) -> dict:
    """TTFT and decode times with one cache implementation, with the machine's load meanwhile."""
    load_before = os.getloadavg()[0]
    with CpuShare() as contention:
        times = time_runs(model, inputs, new_tokens, repeats, cache=cache, parts=parts, clock_steps=True)
    return {
        **times.summary(),
        "ttft_min_s": min(times.ttft),
        # Share of the machine other processes used during these runs, and the 1-minute load before them.
        "others_cpu_share": contention.others,
        "load_1min_before": round(load_before, 2),
        # A check of decode_s_per_token: the median decode step timed inside the N-token runs.
        "decode_step_median_s": statistics.median(times.steps),
        "ttft_parts_s": times.part_medians(),
    }


def benchmark_model(
    name: str,
    tiny: bool = False,
    dtype: str = "float32",
    new_tokens: int = 32,
    repeats: int = 3,
    question_length: int = 12,
    threads: int = 2,
    cache_implementations: tuple[str, ...] = ("dynamic", "static"),
    profile: bool = False,
    local_floors: bool = True,
    seed: int = 0,
) -> dict:
    """Build `name`'s model on the CPU, then measure it: TTFT and decode per cache implementation, peak RSS while
    generating with the first one, prefill FLOPs, parameter counts, and (`local_floors`) this process's floors."""
    torch.set_num_threads(threads)
    peer = PEERS[name]
    rss_before_build, started = rss_bytes(), time.perf_counter()
    model = build_model(peer, tiny=tiny, dtype=DTYPES[dtype], seed=seed)
    build_seconds = round(time.perf_counter() - started, 1)
    result = {"name": name, "label": peer.label, "dtype": dtype, "build_seconds": build_seconds}
    gc.collect()
    inputs = make_inputs(peer, model.config, question_length=question_length, seed=seed)
    result.update(describe_prompt(peer, model.config, inputs), new_tokens=new_tokens, repeats=repeats)
    result.update(describe_sizes(peer, model, result["prompt_tokens"]))
    result.update(rss_before_build_bytes=rss_before_build, rss_after_build_bytes=rss_bytes())
    result["prefill_flops"] = prefill_flops(peer, model, inputs)  # this forward also warms the kernels up
    if local_floors:  # measured right before this model's timings, under the same conditions
        shapes = {name: result["gemm_shapes"]}
        result["local_floors"] = physical_floors(shapes, tiny, threads, floor_seconds(tiny), square=False)
    gc.collect()
    can_reset = reset_peak_rss()
    result["finite_logits"] = check_finite(model, inputs, name)
    parts, timings = PartTimer(model, peer.parts), {}
    for index, cache in enumerate(cache_implementations):
        if index > 0:
            generate_exactly(model, inputs, 2, cache_implementation=cache)  # warm-up of this cache layout
        timings[cache] = time_cache(model, inputs, cache, new_tokens, repeats, parts)
        if index == 0:  # peak RSS while generating with the first (default) cache layout, the weights included
            result.update(peak_rss_bytes=peak_rss_bytes(), peak_rss_reset=can_reset)
    parts.remove()
    result.update(timings=timings, ru_maxrss_bytes=max_rss_bytes())
    if profile:
        result["profile"] = profile_model(model, inputs, new_tokens)
    return result


def load_storage(peer: Peer, storage: str, device: str, tiny: bool, checkpoints: dict, workdir: str | None):
    """`peer`'s model in `storage` on `device`: bf16 is built directly; int8 and nf4 load the model's random fp32
    checkpoint (saved on first use into a folder recorded in `checkpoints[peer.name]`), the parts kept in bf16."""
    if storage == "bf16":
        return build_model(peer, tiny=tiny, dtype=torch.bfloat16).to(device)
    if peer.name not in checkpoints:
        checkpoints[peer.name] = tempfile.mkdtemp(prefix=f"{peer.name}_", dir=workdir)
        save_random_checkpoint(peer, tiny, checkpoints[peer.name])
    quantization_config = GPU_QUANTIZATION[storage]
    return load_quantized(
        peer, checkpoints[peer.name], quantization_config, dtype=torch.bfloat16, device_map={"": device}
    )


def memory_allocated(device) -> int | None:
    """Bytes the caching allocator hands out on a CUDA `device` (None on the CPU)."""
    return torch.cuda.memory_allocated(device) if torch.device(device).type == "cuda" else None


def benchmark_storage(
    name: str, storage: str, device: str, tiny: bool, new_tokens: int, repeats: int, checkpoints: dict, workdir
) -> dict:
    """Load `name` in `storage` on `device`, then measure its footprint, device memory and generation times."""
    peer, cuda = PEERS[name], torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    before = memory_allocated(device)
    model = load_storage(peer, storage, device, tiny, checkpoints, workdir)
    loaded = memory_allocated(device)
    inputs = {key: value.to(device) for key, value in make_inputs(peer, model.config).items()}
    result = {
        "footprint_bytes": model.get_memory_footprint(),
        "quantized_linears": quantized_linears(model),
        "prompt_tokens": inputs["input_ids"].shape[1],
        "decoder_bytes_per_token": decoder_bytes_per_token(peer, model),
        "kv_bytes_per_position": kv_bytes_per_position(model),
    }
    if storage == "bf16":  # bitsandbytes' kernels are invisible to the FLOP counter: count the unquantized model
        result["prefill_flops"] = prefill_flops(peer, model, inputs)
    check_finite(model, inputs, f"{name} ({storage})")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    result["timings"] = time_runs(model, inputs, new_tokens, repeats, device).summary()
    if before is not None:
        result["weights_on_device_bytes"] = loaded - before
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device) - before
    del model, inputs
    gc.collect()
    return result
