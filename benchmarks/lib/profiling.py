"""torch.profiler tables (self CPU time per op) of one prefill and of an N-token generation."""

from __future__ import annotations

import time

from torch.profiler import ProfilerActivity, profile
from transformers import PreTrainedModel

from .inputs import generate_exactly
from .system import CpuShare


def _top_ops(prof, row_limit: int) -> tuple[float, list[dict]]:
    """Total self CPU time (microseconds) and the `row_limit` ops with the most of it."""
    averages = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    rows = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:row_limit]
    return total, [
        {
            "op": event.key,
            "calls": event.count,
            "self_cpu_ms": round(event.self_cpu_time_total / 1e3, 2),
            "share": round(event.self_cpu_time_total / total, 4) if total else None,
        }
        for event in rows
    ]


def profile_model(model: PreTrainedModel, inputs: dict, new_tokens: int, row_limit: int = 15) -> dict:
    """{"prefill": table, "generate": table}: each the wall seconds, other processes' CPU share, the total self CPU
    time (ms) and the top ops, for `generate` with one token and with `new_tokens` tokens."""
    tables = {}
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own first-use cost, not recorded
        generate_exactly(model, inputs, 1)
    for label, tokens in (("prefill", 1), ("generate", new_tokens)):
        with CpuShare() as contention, profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            generate_exactly(model, inputs, tokens)
            wall = time.perf_counter() - start
        total, top_ops = _top_ops(prof, row_limit)
        tables[label] = {
            "wall_s": wall,
            "others_cpu_share": contention.others,
            "self_cpu_total_ms": total / 1e3,
            "top_ops": top_ops,
        }
    return tables
