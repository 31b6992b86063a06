"""Facts about this process and machine: resident memory and CPU time from /proc, how much of the CPUs other
processes use, the machine's description, and running a function in a fresh process (its own peak memory)."""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import re
import resource
import time
from pathlib import Path

import torch
import transformers


def status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (e.g. VmRSS, VmHWM); None where unavailable."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int:
    """This process's resident memory now (0 where unavailable)."""
    return (status_kib("VmRSS") or 0) * 1024


def max_rss_bytes() -> int:
    """This process's peak resident memory since it started (`getrusage`; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (VmHWM), else since the process started."""
    hwm = status_kib("VmHWM")
    return hwm * 1024 if hwm is not None else max_rss_bytes()


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None where unavailable."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuShare:
    """How much of the machine other processes used while a block ran: `others` = (all CPUs' busy time - this
    process's CPU time) / (wall time x CPUs), None where /proc/stat is unreadable. Near 0 on an otherwise idle
    machine; 0.5 on 2 CPUs means one core was taken."""

    def __enter__(self):
        self.jiffies, self.own, self.wall = cpu_jiffies(), own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = cpu_jiffies()
        wall = time.perf_counter() - self.wall
        own = own_cpu_seconds() - self.own
        self.others = None
        if self.jiffies is not None and end is not None and wall > 0:
            busy = (end[0] - self.jiffies[0]) / os.sysconf("SC_CLK_TCK")
            cpus = (end[1] - self.jiffies[1]) / os.sysconf("SC_CLK_TCK") / wall
            self.others = max(0.0, (busy - own) / (wall * max(cpus, 1e-9)))
        return False


def wait_for_quiet_cpu(max_share: float = 0.15, window: float = 3.0, timeout: float = 0.0) -> dict:
    """Wait (at most `timeout` seconds) until other processes use less than `max_share` of the CPUs over a `window`
    of seconds. Returns the share last seen, the seconds waited and whether the machine was quiet."""
    start = time.perf_counter()
    while True:
        with CpuShare() as share:
            time.sleep(window)
        waited = time.perf_counter() - start
        quiet = share.others is not None and share.others < max_share
        if quiet or waited >= timeout or share.others is None:
            return {"others_cpu_share": share.others, "waited_s": round(waited, 1), "quiet": quiet}


def _cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def machine_info(threads: int) -> dict:
    """CPU, memory, torch threads and library versions, and the date (UTC), for a results file."""
    info = {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import bitsandbytes  # optional (the `quant` extra)

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def run_isolated(fn, *args, **kwargs):
    """Run `fn` (importable, with picklable arguments) in a fresh spawned process, its own peak RSS; its result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(fn, *args, **kwargs).result()


def run_here(fn, *args, **kwargs):
    """`run_isolated`'s stand-in that runs `fn` in this process."""
    return fn(*args, **kwargs)
