"""The machine's physical floors: measured matmul rates at the models' MLP shapes and memory bandwidth, from which
`report` derives the fastest a prefill (FLOPs / rate) and a decode step (bytes read / bandwidth) could run."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from .peers import Peer
from .system import CpuShare
from .timing import median_seconds


def floor_seconds(tiny: bool) -> float:
    """Seconds of repeated products each measured rate is the median of (short for the tiny smoke runs)."""
    return 0.05 if tiny else 1.0


def measure_matmul_rate(m: int, k: int, n: int, min_run_time: float = 1.0, dtype=torch.float32, device="cpu") -> float:
    """Measured GFLOP/s of `(m x k) @ (k x n)` (median over at least `min_run_time` seconds of products)."""
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    out = torch.empty(m, n, dtype=dtype, device=device)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), min_run_time)
    return 2 * m * k * n / seconds / 1e9


def measure_bandwidth(rows: int, cols: int, min_run_time: float = 1.0, dtype=torch.float32, device="cpu") -> float:
    """Measured GB/s of a large (rows x cols) matrix-vector product (the matrix is read once per product)."""
    matrix, vector = torch.randn(rows, cols, dtype=dtype, device=device), torch.randn(cols, dtype=dtype, device=device)
    out = torch.empty(rows, dtype=dtype, device=device)
    seconds = median_seconds(lambda: torch.mv(matrix, vector, out=out), min_run_time)
    return matrix.numel() * matrix.element_size() / seconds / 1e9


def bandwidth_shape(tiny: bool) -> tuple[int, int]:
    """The matrix of the bandwidth measurement: the default decoder's LM head (1.05 GB in fp32), or a small one."""
    return (4096, 1024) if tiny else (128256, 2048)


def shape_key(shape: tuple[int, int, int]) -> str:
    """`m x k x n` as the results' key of a matmul rate, e.g. "67x2048x8192"."""
    return "x".join(map(str, shape))


def gemm_shapes(peer: Peer, config: PretrainedConfig, prompt_length: int) -> dict[str, tuple[int, int, int]]:
    """The MLP matmul shapes (m, k, n) of the decoder's prefill and of the vision tower (BcQLM's vision side is
    convolutions and small encoders: rated at the decoder's shape)."""
    text = config.get_text_config(decoder=True)
    shapes = {"decoder": (prompt_length, text.hidden_size, text.intermediate_size)}
    if peer.vision_mlp_shape is not None:
        shapes["vision"] = peer.vision_mlp_shape(config)
    return shapes


def physical_floors(shapes: dict, tiny: bool, threads: int, min_run_time: float, square: bool = True) -> dict:
    """fp32 matmul GFLOP/s at every shape of `shapes` ({model: {part: (m, k, n)}}) and, with `square`, a large square
    one; fp32 matrix-vector bandwidth in GB/s; and other processes' CPU share meanwhile."""
    torch.set_num_threads(threads)
    rates = {}
    with CpuShare() as contention:
        if square:
            size = 256 if tiny else 2048
            rates["square"] = measure_matmul_rate(size, size, size, min_run_time)
        for model_shapes in shapes.values():
            for shape in model_shapes.values():
                if shape_key(shape) not in rates:
                    rates[shape_key(shape)] = measure_matmul_rate(*shape, min_run_time=min_run_time)
        rows, cols = bandwidth_shape(tiny)
        bandwidth = measure_bandwidth(rows, cols, min_run_time)
    return {
        "matmul_gflops": rates,
        "bandwidth_gbs": bandwidth,
        "bandwidth_shape": [rows, cols],
        "others_cpu_share": contention.others,
    }


def bf16_floors(device: str, tiny: bool, shapes: dict[str, tuple[int, int, int]], min_run_time: float) -> dict:
    """On `device`: bf16 matmul GFLOP/s at each shape of `shapes` ({model: (m, k, n)}) and the GB/s of a bf16
    matrix-vector product."""
    rates = {
        shape_key(shape): measure_matmul_rate(*shape, min_run_time, dtype=torch.bfloat16, device=device)
        for shape in shapes.values()
    }
    rows, cols = bandwidth_shape(tiny)
    bandwidth = measure_bandwidth(rows, cols, min_run_time, dtype=torch.bfloat16, device=device)
    return {"matmul_gflops": rates, "bandwidth_gbs": bandwidth, "bandwidth_shape": [rows, cols]}
