"""bitsandbytes 8-bit (LLM.int8) and 4-bit (nf4, double quantization) loads of random checkpoints, and their memory
footprints (`get_memory_footprint()`, plus the quantization statistics it leaves out)."""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from modeling_bcqlm.modeling_bcqlm import _fit_4bit_cpu_kernels

from .build import build_model
from .peers import PEERS, Peer
from .system import max_rss_bytes


NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
# The CPU footprints of the default BcQLM: label -> (quantization config, dtype of the parts left unquantized, None:
# the checkpoint's fp32). "nf4+bf16" stores the tied embedding / LM head in bf16 (the class keeps BreezeCLIP fp32).
CPU_LOADS = {
    "int8": (BitsAndBytesConfig(load_in_8bit=True), None),
    "nf4": (BitsAndBytesConfig(**NF4), None),
    "nf4+bf16": (BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.bfloat16), torch.bfloat16),
}
# The GPU runs: bf16 compute and bf16 for the parts left unquantized.
GPU_QUANTIZATION = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=torch.bfloat16),
}


def quantized_state_bytes(model: PreTrainedModel) -> int:
    """Bytes of bitsandbytes quantization statistics (absmax, nested absmax, code tables, SCB) that
    `get_memory_footprint()` does not count, because they are not parameters or buffers."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        tensors = [getattr(weight, "SCB", None)]
        if state is not None:
            tensors += [state.absmax, state.code, getattr(state, "offset", None)]
            nested = getattr(state, "state2", None)
            if nested is not None:
                tensors += [nested.absmax, nested.code]
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def quantized_linears(model: PreTrainedModel) -> int:
    """How many linear layers bitsandbytes replaced."""
    return sum(type(module).__name__ in ("Linear8bitLt", "Linear4bit") for module in model.modules())


def load_quantized(peer: Peer, folder: str, quantization_config: BitsAndBytesConfig, **kwargs) -> PreTrainedModel:
    """
    `peer`'s checkpoint in `folder` loaded with `quantization_config` (and `from_pretrained`'s `kwargs`); on CPUs with
    AVX512-BF16, the peers' 4-bit layers that bitsandbytes' packed kernel cannot take use its generic path, as BcQLM's.
    """
    model = peer.model_class.from_pretrained(folder, quantization_config=quantization_config, **kwargs).eval()
    _fit_4bit_cpu_kernels(model)
    return model


def save_random_checkpoint(peer: Peer, tiny: bool, folder: str, seed: int = 0) -> None:
    """`peer`'s random fp32 model saved (safetensors) into `folder`."""
    model = build_model(peer, tiny=tiny, seed=seed)
    model.save_pretrained(folder)
    del model
    gc.collect()


def _save_bcqlm(folder: str, tiny: bool, seed: int) -> dict:
    """Save the random fp32 BcQLM into `folder`; its footprint, the bytes of its tied embedding and of BreezeCLIP, the
    seconds the save took and the checkpoint's bytes."""
    model = build_model(PEERS["bcqlm"], tiny=tiny, seed=seed)
    embedding = model.get_input_embeddings().weight
    result = {
        "fp32_bytes": model.get_memory_footprint(),
        "tied_embedding_fp32_bytes": embedding.numel() * embedding.element_size(),
        "breezeclip_fp32_bytes": sum(p.numel() * p.element_size() for p in model.model.breezeclip.parameters()),
    }
    free, needed = shutil.disk_usage(folder).free, 1.1 * result["fp32_bytes"]
    if free < needed:
        raise RuntimeError(f"{folder}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed")
    start = time.perf_counter()
    model.save_pretrained(folder)
    result["save_seconds"] = round(time.perf_counter() - start, 1)
    result["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    del model, embedding
    gc.collect()
    return result


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _load_bcqlm(folder: str, quantization_config: BitsAndBytesConfig, dtype: torch.dtype | None) -> dict:
    """Load the saved BcQLM with `quantization_config` (and `dtype`); what it holds and how long loading took."""
    start = time.perf_counter()
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = load_quantized(PEERS["bcqlm"], folder, quantization_config, **kwargs)
    entry = {
        "load_seconds": round(time.perf_counter() - start, 1),
        "footprint_bytes": model.get_memory_footprint(),
        "quant_state_bytes": quantized_state_bytes(model),
        "embedding_dtype": _dtype_name(model.get_input_embeddings().weight),
        "breezeclip_dtype": _dtype_name(next(model.model.breezeclip.parameters())),
        "quantized_linears": quantized_linears(model),
    }
    del model
    gc.collect()
    return entry


def quantization_footprints(tiny: bool = False, threads: int = 2, workdir: str | None = None, seed: int = 0) -> dict:
    """
    `get_memory_footprint()` (bytes) of the default BcQLM in fp32 and loaded as each of `CPU_LOADS` from its random
    fp32 checkpoint, saved once into a temporary folder under `workdir`, with each load's ratio to fp32; and what
    16-bit storage of the unquantized tied embedding / LM head alone would give the nf4 load.
    """
    torch.set_num_threads(threads)
    folder = tempfile.mkdtemp(prefix="bcqlm_quant_", dir=workdir)
    try:
        result = {"loads": {}, **_save_bcqlm(folder, tiny, seed)}
        for label, (quantization_config, dtype) in CPU_LOADS.items():
            entry = _load_bcqlm(folder, quantization_config, dtype)
            entry["ratio_to_fp32"] = entry["footprint_bytes"] / result["fp32_bytes"]
            result["loads"][label] = entry
        nf4_bytes = result["loads"]["nf4"]["footprint_bytes"]
        result["nf4_with_16bit_embedding_bytes"] = nf4_bytes - result["tied_embedding_fp32_bytes"] // 2
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["ru_maxrss_bytes"] = max_rss_bytes()
    return result
