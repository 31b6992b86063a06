"""Clocks: the median time of a short repeated call, the decode steps inside one `generate`, the time spent in named
submodules, and the TTFT / N-token run loop both benchmarks use."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.benchmark import Timer
from transformers import PreTrainedModel

from .inputs import generate_exactly


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU), so that wall times cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds of one `fn()` call, by `Timer.blocked_autorange` (warm-up, calls grouped into blocks long
    enough for the clock's overhead, accelerator synchronised) over at least `min_run_time` seconds of calls, with
    the current number of torch threads."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


class StepClock:
    """A logits processor that only records when it is called: once per generated token, so the intervals between
    calls are the decode steps' times (the first call ends the prefill)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


class PartTimer:
    """Wall seconds spent in named parts, each one submodule path or several (forward pre/post hooks), accumulated
    over the calls while attached."""

    def __init__(self, model: torch.nn.Module, parts: dict[str, str | tuple[str, ...]]):
        self.times = dict.fromkeys(parts, 0.0)
        self._starts = {}
        self._handles = []
        for part, prefixes in parts.items():
            for prefix in (prefixes,) if isinstance(prefixes, str) else prefixes:
                module = model.get_submodule(prefix)
                self._handles.append(module.register_forward_pre_hook(self._pre(prefix)))
                self._handles.append(module.register_forward_hook(self._post(part, prefix)))

    def _pre(self, key):
        def hook(module, args):
            self._starts[key] = time.perf_counter()

        return hook

    def _post(self, part, key):
        def hook(module, args, output):
            self.times[part] += time.perf_counter() - self._starts.pop(key)

        return hook

    def reset(self):
        self.times = dict.fromkeys(self.times, 0.0)

    def remove(self):
        for handle in self._handles:
            handle.remove()


@dataclass
class RunTimes:
    """Seconds of each timed run: TTFT runs, N-token runs, and where asked the parts of each TTFT and the decode
    steps inside the N-token runs."""

    new_tokens: int
    ttft: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """Medians, and decode seconds per token = (median N-token time - median TTFT) / (N - 1)."""
        ttft, full = statistics.median(self.ttft), statistics.median(self.full)
        per_token = (full - ttft) / (self.new_tokens - 1)
        return {
            "ttft_s": ttft,
            "ttft_all_s": self.ttft,
            "full_s": full,
            "full_all_s": self.full,
            "decode_s_per_token": per_token,
            "decode_tokens_per_s": 1.0 / per_token if per_token > 0 else float("nan"),
        }

    def part_medians(self) -> dict[str, float]:
        return {part: statistics.median(run[part] for run in self.parts) for part in self.parts[0]}


def time_runs(
    model: PreTrainedModel,
    inputs: dict,
    new_tokens: int,
    repeats: int,
    device="cpu",
    cache: str | None = None,
    parts: PartTimer | None = None,
    clock_steps: bool = False,
) -> RunTimes:
    """
    `repeats` times: `generate` one token (TTFT: vision + prefill), then `new_tokens` tokens; wall seconds with the
    device synchronised around each run. Timed by hand rather than with `Timer`: the runs are long, the two kinds
    alternate, and `parts` and the decode steps are read between them.
    """
    times = RunTimes(new_tokens)

    def timed(tokens: int, **kwargs) -> float:
        synchronize(device)
        start = time.perf_counter()
        generate_exactly(model, inputs, tokens, cache_implementation=cache, **kwargs)
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(repeats):
        if parts is not None:
            parts.reset()
        times.ttft.append(timed(1))
        if parts is not None:
            times.parts.append(dict(parts.times))
        clock = StepClock()
        times.full.append(timed(new_tokens, **({"logits_processor": [clock]} if clock_steps else {})))
        times.steps.extend(clock.step_times())
    return times
