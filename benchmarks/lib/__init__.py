"""The pieces `benchmarks/compare_peers.py` (CPU) and `benchmarks/gpu_peers.py` (one GPU) are made of.

- `peers`: the three compared models, one `Peer` description each (configs, classes, prompt layout, parts).
- `build`: random-weight models, built fast (`build_model`).
- `sizes`: what a model's shape alone gives: parameter counts, bytes read per decode step, KV bytes, prefill FLOPs.
- `inputs`: processor-equivalent inputs without tokenizers, and `generate` with a forced token count.
- `timing`: median timers, per-step and per-submodule clocks, the TTFT / N-token run loop.
- `system`: /proc readings (RSS, CPU jiffies, other processes' share), machine facts, one process per model.
- `floors`: the machine's physical floors: measured matmul rate and memory bandwidth.
- `profiling`: torch.profiler tables of prefill and decode.
- `footprints`: bitsandbytes 8-bit and 4-bit loads and their memory footprints.
- `measure`: one model measured end to end (`benchmark_model` on the CPU, `benchmark_storage` on a device).
- `report`, `cpu_report`, `gpu_report`: derived floors, ratios and targets, Markdown tables, JSON and README writing.
"""
