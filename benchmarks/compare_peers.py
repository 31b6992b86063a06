"""Efficiency of the default BcQLM against a LLaVA-style peer and a SmolVLM-256M-shaped peer, on this machine's CPU.

    python benchmarks/compare_peers.py --output benchmarks/results/cpu_fp32.json --markdown
    python benchmarks/compare_peers.py --tiny --repeats 1 --new-tokens 4        # smoke run, seconds

Every model is built with random weights (no download) and measured in its own spawned process, so that the peak
resident memory is that model's alone:

- ``bcqlm``: ``BcQLMForConditionalGeneration(BcQLMConfig())`` (1.30 B parameters), 224 px image, 49 image tokens,
  prompt ``<image>Question: ...\\nAnswer:`` and the question alone for the question encoder.
- ``llava``: ``LlavaForConditionalGeneration`` with a CLIP ViT-L/14-336 vision tower (feature layer -2, CLS dropped,
  576 image tokens), the two-layer GELU projector, and the same Llama-3.2-1B-shaped decoder as BcQLM.
- ``smolvlm``: ``Idefics3ForConditionalGeneration`` in SmolVLM-256M's shape (SigLIP-B/16 at 512 px, pixel shuffle 4,
  64 image tokens for one 512 px tile; SmolLM2-135M decoder with a 49280 vocabulary, untied LM head).

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
import concurrent.futures
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/compare_peers.py` from a checkout that is not installed
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402


MODELS = ("bcqlm", "llava", "smolvlm")
LABELS = {
    "bcqlm": "BcQLM (ours, default config)",
    "llava": "LLaVA-style (CLIP ViT-L/14-336 + Llama-3.2-1B shape)",
    "smolvlm": "SmolVLM-256M shape (Idefics3)",
}

# CLIP ViT-L/14 at 336 px, as in llava-1.5 (openai/clip-vit-large-patch14-336).
CLIP_VIT_L_14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# HuggingFaceTB/SmolVLM-256M-Instruct's config.json (model_type idefics3): SigLIP base patch16-512 vision tower,
# scale_factor 4, SmolLM2-135M text model with the 49280-token vocabulary, lm_head not tied.
SMOLVLM_256M_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 512,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
SMOLVLM_256M_TEXT = {
    "model_type": "llama",
    "vocab_size": 49280,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "tie_word_embeddings": False,
}
SMOLVLM_256M_SCALE_FACTOR = 4
SMOLVLM_IMAGE_TOKEN_ID = 49190
SMOLVLM_FAKE_TOKEN_AROUND_IMAGE_ID = 49189
SMOLVLM_GLOBAL_IMAGE_TOKEN_ID = 49152

# The LLaVA peer shares BcQLM's decoder; `<image>` takes a reserved Llama-3 special token inside the vocabulary
# (LLaVA embeds the placeholder ids before replacing them, so the id must be in the table).
LLAVA_IMAGE_TOKEN_ID = 128255

# Tiny shapes for `--tiny` (smoke run and tests): every part one or two layers, hidden sizes <= 64.
TINY_DECODER = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}
TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,  # 4x4 = 16 image tokens
    "projection_dim": 32,
}
TINY_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 64,
    "patch_size": 8,  # 8x8 patches, pixel shuffle 2 -> 16 image tokens
}
TINY_SMOLLM = {
    "model_type": "llama",
    "vocab_size": 320,
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "tie_word_embeddings": False,
}
TINY_SMOLVLM_SCALE_FACTOR = 2

# Submodules of each model: the decoder (embedding table, layers, final norm) and its head; everything else is the
# vision side (image tower, projector or connector, and for BcQLM the question encoder, adapter and Q-GCAM).
DECODER_PREFIX = {"bcqlm": "model.language_model", "llava": "model.language_model", "smolvlm": "model.text_model"}
PARTS = {
    "bcqlm": {
        "image tower": "model.breezeclip.vision_model",
        "question encoder": "model.breezeclip.text_model",
        "projections+adapter": ("model.breezeclip.visual_projection", "model.breezeclip.text_projection", "model.visual_adapter"),
        "Q-GCAM": "model.qgcam",
        "decoder": "model.language_model",
        "lm_head": "lm_head",
    },
    "llava": {
        "image tower": "model.vision_tower",
        "projector": "model.multi_modal_projector",
        "decoder": "model.language_model",
        "lm_head": "lm_head",
    },
    "smolvlm": {
        "image tower": "model.vision_model",
        "connector": "model.connector",
        "decoder": "model.text_model",
        "lm_head": "lm_head",
    },
}

TARGETS = {
    "ttft_vs_llava": 0.15,  # TTFT(ours) / TTFT(LLaVA-style) <= 0.15
    "decode_vs_floor": 1.5,  # decode time per token (ours) / bandwidth floor <= 1.5
    "memory_vs_llava": 0.85,  # peak RSS(ours) / peak RSS(LLaVA-style) <= 0.85
    "int4_vs_fp32": 0.35,  # get_memory_footprint(4-bit nf4) / get_memory_footprint(fp32) <= 0.35
}

RESULTS_START = "<!-- results:start (written by benchmarks/compare_peers.py --markdown) -->"
RESULTS_END = "<!-- results:end -->"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------------------------------------------
# Configurations and models
# ------------------------------------------------------------------------------------------------------------------


def bcqlm_config(tiny: bool = False):
    from modeling_bcqlm import BcQLMConfig

    if not tiny:
        return BcQLMConfig()
    from modeling_bcqlm.testing.tiny_models import tiny_breezeclip_config

    breezeclip_config = tiny_breezeclip_config().to_dict()  # the tests' tiny towers: a 2x2 map, 4 image tokens
    return BcQLMConfig(
        breezeclip_config=breezeclip_config,
        qgcam_config={"num_attention_heads": 4},
        text_config=dict(TINY_DECODER),
        image_token_id=TINY_DECODER["vocab_size"],  # outside the table, as 128256 is for the default model
    )


def llava_config(tiny: bool = False):
    """LLaVA-1.5-style peer: CLIP ViT-L/14-336 (or a tiny CLIP) and BcQLM's own decoder config."""
    from transformers import LlavaConfig

    text_config = bcqlm_config(tiny).text_config.to_dict()
    vision_config = TINY_CLIP if tiny else CLIP_VIT_L_14_336
    image_seq_length = (vision_config["image_size"] // vision_config["patch_size"]) ** 2
    return LlavaConfig(
        vision_config=dict(vision_config),
        text_config=text_config,
        image_token_index=text_config["vocab_size"] - 1 if tiny else LLAVA_IMAGE_TOKEN_ID,
        image_seq_length=image_seq_length,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def smolvlm_config(tiny: bool = False):
    """SmolVLM-256M's shape as an `Idefics3Config` (or a tiny one with the same structure)."""
    from transformers import Idefics3Config

    text_config = TINY_SMOLLM if tiny else SMOLVLM_256M_TEXT
    vision_config = TINY_SIGLIP if tiny else SMOLVLM_256M_VISION
    return Idefics3Config(
        vision_config=dict(vision_config),
        text_config=dict(text_config),
        scale_factor=TINY_SMOLVLM_SCALE_FACTOR if tiny else SMOLVLM_256M_SCALE_FACTOR,
        image_token_id=text_config["vocab_size"] - 1 if tiny else SMOLVLM_IMAGE_TOKEN_ID,
        tie_word_embeddings=text_config["tie_word_embeddings"],
        pad_token_id=text_config["pad_token_id"],
    )


def model_config(name: str, tiny: bool = False):
    return {"bcqlm": bcqlm_config, "llava": llava_config, "smolvlm": smolvlm_config}[name](tiny)


def model_class(name: str):
    if name == "bcqlm":
        from modeling_bcqlm import BcQLMForConditionalGeneration

        return BcQLMForConditionalGeneration
    from transformers import Idefics3ForConditionalGeneration, LlavaForConditionalGeneration

    return {"llava": LlavaForConditionalGeneration, "smolvlm": Idefics3ForConditionalGeneration}[name]


def image_seq_length(name: str, config) -> int:
    """Image tokens one image takes in the decoder's prompt."""
    if name == "bcqlm":
        return config.image_seq_length
    if name == "llava":
        vision = config.vision_config
        return (vision.image_size // vision.patch_size) ** 2 + (1 if config.vision_feature_select_strategy == "full" else 0)
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def image_size(name: str, config) -> int:
    if name == "bcqlm":
        return config.breezeclip_config.vision_config.image_size
    return config.vision_config.image_size


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or "Norm" in type(module).__name__


@torch.no_grad()
def fast_random_init_(model: nn.Module, seed: int = 0, embedding_std: float = 0.02) -> nn.Module:
    """
    Fill every parameter with random values quickly (one `normal_` per tensor, no per-module init logic): norms get
    weight 1 and bias 0, other biases and scalars 0, embeddings N(0, `embedding_std`), linear weights N(0, 1/fan_in)
    and convolution weights N(0, 2/fan_in), so that activations keep their scale through the towers (random weights
    are fine for timing, but tiny activations would turn into denormals and slow the CPU down). Tied parameters are
    filled once.
    """
    torch.manual_seed(seed)
    seen = set()
    for module in model.modules():
        norm = _is_norm(module)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias" or param.dim() == 0:
                param.zero_()
            elif isinstance(module, nn.Embedding) or param.dim() == 1:
                param.normal_(0.0, embedding_std)
            else:
                fan_in = param[0].numel()
                gain = 2.0 if param.dim() > 2 else 1.0  # convolutions are followed by ReLU-like activations
                param.normal_(0.0, math.sqrt(gain / fan_in))
    return model


def build_model(name: str, tiny: bool = False, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """
    Build one of the three models with random weights. On the CPU the library's weight initialisation is skipped
    (`transformers.initialization.no_init_weights`) and replaced by `fast_random_init_`; tied weights stay tied.
    `device="meta"` builds without allocating (parameter counts only).
    """
    from transformers.initialization import no_init_weights

    config = model_config(name, tiny)
    cls = model_class(name)
    if device == "meta":
        with torch.device("meta"):
            model = cls(config)
        return model.eval()
    with no_init_weights():
        model = cls(config)
    model.tie_weights()
    fast_random_init_(model, seed=seed)
    if dtype != torch.float32:
        model.to(dtype)
        # Like `from_pretrained(..., dtype=...)`: modules the class keeps in fp32 (BcQLM's BreezeCLIP) stay in fp32.
        for prefix in getattr(model, "_keep_in_fp32_modules_strict", None) or ():
            try:
                model.get_submodule(prefix).float()
            except AttributeError:
                pass
    return model.eval()


def _unique_parameters(model: nn.Module, prefixes) -> dict[int, nn.Parameter]:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return {id(p): p for prefix in prefixes for p in model.get_submodule(prefix).parameters()}


def parameter_counts(name: str, model: nn.Module) -> dict[str, int]:
    """Total, decoder (embedding, layers, norm and LM head, tied weights once) and vision side (everything else)."""
    total = {id(p): p for p in model.parameters()}
    decoder = _unique_parameters(model, (DECODER_PREFIX[name], "lm_head"))
    counts = {
        "total": sum(p.numel() for p in total.values()),
        "decoder": sum(p.numel() for p in decoder.values()),
    }
    counts["vision"] = counts["total"] - counts["decoder"]
    for part, prefixes in PARTS[name].items():
        counts[f"part:{part}"] = sum(p.numel() for p in _unique_parameters(model, prefixes).values())
    return counts


def decoder_bytes_per_token(name: str, model: nn.Module) -> int:
    """Weight bytes one decode step reads: the decoder's layers and final norm plus the LM head (the input embedding
    table is read one row per token, so it counts only when it is the LM head's weight)."""
    decoder = model.get_submodule(DECODER_PREFIX[name])
    embedding = decoder.get_input_embeddings().weight
    params = _unique_parameters(model, (DECODER_PREFIX[name], "lm_head"))
    lm_head = model.get_output_embeddings().weight
    return sum(
        p.numel() * p.element_size() for p in params.values() if p is not embedding or p is lm_head
    )


def kv_bytes_per_position(model: nn.Module) -> int:
    """Key/value cache bytes per sequence position (all layers)."""
    text_config = model.config.get_text_config(decoder=True)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    element_size = model.get_input_embeddings().weight.element_size()
    return 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim * element_size


# ------------------------------------------------------------------------------------------------------------------
# Inputs and generation
# ------------------------------------------------------------------------------------------------------------------


def make_image(seed: int = 0, height: int = 480, width: int = 640) -> torch.Tensor:
    """One random RGB image, (3, height, width) in [0, 1]; every model gets it resized to its own resolution."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float() / 255.0


def make_inputs(name: str, config, question_length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """
    Processor-equivalent inputs, batch size 1, built without a tokenizer: the same image, and text of the same length
    for every model: BOS + image segment + "Question: <question_length tokens>\\nAnswer:" (5 template tokens).
    Text ids are random ids of the decoder's vocabulary; image positions hold the model's image token id.
    """
    size = image_size(name, config)
    image = nn.functional.interpolate(make_image(seed)[None], size=(size, size), mode="bilinear", align_corners=False)
    pixel_values = (image - 0.5) / 0.5

    text_config = config.get_text_config(decoder=True)
    vocab_size = text_config.vocab_size
    generator = torch.Generator().manual_seed(seed + 1)
    low, high = min(256, vocab_size // 4), min(vocab_size - 1024, 100_000) if vocab_size > 4096 else vocab_size - 2
    text_ids = torch.randint(low, high, (question_length + 5,), generator=generator)
    bos = torch.tensor([text_config.bos_token_id if text_config.bos_token_id is not None else 1])
    num_image_tokens = image_seq_length(name, config)

    if name == "bcqlm":
        image_ids = torch.full((num_image_tokens,), config.image_token_id)
    elif name == "llava":
        image_ids = torch.full((num_image_tokens,), config.image_token_id)
    else:
        # Idefics3/SmolVLM processor, one 512 px tile without splitting: <fake><global-img><image>*64<fake>.
        fake, global_img = (
            (SMOLVLM_FAKE_TOKEN_AROUND_IMAGE_ID, SMOLVLM_GLOBAL_IMAGE_TOKEN_ID) if vocab_size > 49190 else (vocab_size - 2, vocab_size - 3)
        )
        image_ids = torch.cat(
            [torch.tensor([fake, global_img]), torch.full((num_image_tokens,), config.image_token_id), torch.tensor([fake])]
        )
    input_ids = torch.cat([bos, image_ids, text_ids])[None]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    if name == "bcqlm":
        inputs["pixel_values"] = pixel_values
        question_vocab = config.breezeclip_config.text_config.vocab_size
        question = torch.randint(min(1000, question_vocab // 2), question_vocab, (question_length,), generator=generator)
        cls_id, sep_id = (101, 102) if question_vocab > 1000 else (2, 3)
        question_ids = torch.cat([torch.tensor([cls_id]), question, torch.tensor([sep_id])])[None]
        inputs["question_input_ids"] = question_ids
        inputs["question_attention_mask"] = torch.ones_like(question_ids)
    elif name == "llava":
        inputs["pixel_values"] = pixel_values
    else:
        inputs["pixel_values"] = pixel_values[:, None]  # (batch, num_images, 3, H, W)
        inputs["pixel_attention_mask"] = torch.ones((1, 1, size, size), dtype=torch.bool)
    return inputs


def generate_exactly(model, inputs: dict, new_tokens: int, cache_implementation: str | None = None, **kwargs):
    """Greedy `generate` with exactly `new_tokens` new tokens (`min_new_tokens = max_new_tokens`), checked."""
    text_config = model.config.get_text_config(decoder=True)
    eos = kwargs.pop("eos_token_id", text_config.eos_token_id)
    pad = text_config.pad_token_id if text_config.pad_token_id is not None else eos
    if cache_implementation not in (None, "dynamic"):
        kwargs["cache_implementation"] = cache_implementation
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
            **kwargs,
        )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    produced = sequences.shape[1] - inputs["input_ids"].shape[1]
    if produced != new_tokens:
        raise RuntimeError(f"generate produced {produced} new tokens, {new_tokens} were forced")
    return output


def prefill_flops(name: str, model, inputs: dict) -> dict[str, int]:
    """FLOPs of one prefill forward (`logits_to_keep=1`, as `generate` runs it), counted by `FlopCounterMode`; the
    decoder's share (its layers and the LM head) and the rest (vision side)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs, logits_to_keep=1, use_cache=True)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    decoder = 0
    for module_name, ops in counts.items():
        # Keys are `<ClassName>.<dotted path>`: sum the decoder and the head, not their children twice.
        path = module_name.split(".", 1)[1] if "." in module_name else ""
        if path in (DECODER_PREFIX[name], "lm_head"):
            decoder += sum(ops.values())
    return {"total": int(total), "decoder": int(decoder), "vision": int(total - decoder)}


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
    """Wall time spent in named submodules (forward pre/post hooks), accumulated over the calls while attached."""

    def __init__(self, model, parts: dict):
        self.times = {part: 0.0 for part in parts}
        self._starts = {}
        self._handles = []
        for part, prefixes in parts.items():
            for prefix in (prefixes,) if isinstance(prefixes, str) else prefixes:
                module = model.get_submodule(prefix)
                self._handles.append(module.register_forward_pre_hook(self._pre(part, prefix)))
                self._handles.append(module.register_forward_hook(self._post(part, prefix)))

    def _pre(self, part, key):
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


# ------------------------------------------------------------------------------------------------------------------
# Memory and machine
# ------------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    """How much of the machine other processes used while a block ran: (all CPUs' busy time - this process's CPU
    time) / (wall time x CPUs). Near 0 on an otherwise idle machine; 0.5 on 2 CPUs means one core was taken."""

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
    """Wait (at most `timeout` seconds) until other processes use less than `max_share` of the CPUs over a `window`.
    Returns the share last seen, the seconds waited and whether the machine was quiet."""
    start = time.perf_counter()
    while True:
        with CpuShare() as share:
            time.sleep(window)
        waited = time.perf_counter() - start
        quiet = share.others is not None and share.others < max_share
        if quiet or waited >= timeout or share.others is None:
            return {"others_cpu_share": share.others, "waited_s": round(waited, 1), "quiet": quiet}


def machine_info(threads: int) -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if match:
            cpu = match.group(1).strip()
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a no-op on the CPU), so that wall times cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, warmup: int = 1, device="cpu") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_matmul_rate(m: int, k: int, n: int, repeats: int = 5, dtype=torch.float32, device="cpu") -> float:
    """Measured GFLOP/s of `(m x k) @ (k x n)`."""
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    out = torch.empty(m, n, dtype=dtype, device=device)
    seconds = _median_time(lambda: torch.mm(a, b, out=out), repeats, device=device)
    return 2 * m * k * n / seconds / 1e9


def measure_bandwidth(rows: int, cols: int, repeats: int = 7, dtype=torch.float32, device="cpu") -> float:
    """Measured GB/s of a large matrix-vector product (the matrix is read once per product)."""
    matrix, vector = torch.randn(rows, cols, dtype=dtype, device=device), torch.randn(cols, dtype=dtype, device=device)
    out = torch.empty(rows, dtype=dtype, device=device)
    seconds = _median_time(lambda: torch.mv(matrix, vector, out=out), repeats, warmup=2, device=device)
    return matrix.numel() * matrix.element_size() / seconds / 1e9


def gemm_shapes(name: str, config, prompt_length: int) -> dict[str, tuple[int, int, int]]:
    """The MLP matmul shapes of the decoder's prefill and of the vision tower, (m, k, n)."""
    text = config.get_text_config(decoder=True)
    shapes = {"decoder": (prompt_length, text.hidden_size, text.intermediate_size)}
    if name != "bcqlm":  # BcQLM's vision side is convolutions and small encoders: rated at the decoder's shape
        vision = config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + (1 if name == "llava" else 0)
        shapes["vision"] = (tokens, vision.hidden_size, vision.intermediate_size)
    return shapes


# ------------------------------------------------------------------------------------------------------------------
# One model (runs in its own process)
# ------------------------------------------------------------------------------------------------------------------


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
    """Build `name`, then time it: TTFT, N-token generation, peak RSS, FLOPs and parameter counts."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    rss_before_build = _status_kib("VmRSS")
    model = build_model(name, tiny=tiny, dtype=DTYPES[dtype], seed=seed)
    build_seconds = time.perf_counter() - started
    gc.collect()
    config = model.config
    inputs = make_inputs(name, config, question_length=question_length, seed=seed)
    prompt_length = inputs["input_ids"].shape[1]

    result = {
        "name": name,
        "label": LABELS[name],
        "dtype": dtype,
        "build_seconds": round(build_seconds, 1),
        "image_size": image_size(name, config),
        "image_tokens": image_seq_length(name, config),
        "prompt_tokens": prompt_length,
        "question_encoder_tokens": inputs["question_input_ids"].shape[1] if "question_input_ids" in inputs else None,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "parameters": parameter_counts(name, model),
        "decoder_bytes_per_token": decoder_bytes_per_token(name, model),
        "kv_bytes_per_position": kv_bytes_per_position(model),
        "gemm_shapes": gemm_shapes(name, config, prompt_length),
        "rss_before_build_bytes": (rss_before_build or 0) * 1024,
        "rss_after_build_bytes": (_status_kib("VmRSS") or 0) * 1024,
    }

    # FLOPs of one prefill forward, counted; this forward also warms the kernels up.
    result["prefill_flops"] = prefill_flops(name, model, inputs)
    if local_floors:
        # This machine's floors measured right before this model's timings, under the same conditions.
        result["local_floors"] = physical_floors({name: result["gemm_shapes"]}, tiny, threads, repeats=5, square=False)
    gc.collect()
    can_reset = reset_peak_rss()
    # Warm-up of `generate`, and the check that random weights give finite logits.
    output = generate_exactly(model, inputs, 2, return_dict_in_generate=True, output_logits=True)
    result["finite_logits"] = bool(all(torch.isfinite(step).all() for step in output.logits))
    if not result["finite_logits"]:
        raise RuntimeError(f"{name}: non-finite logits with random weights")
    del output

    timer = PartTimer(model, PARTS[name])
    timings = {}
    for index, cache in enumerate(cache_implementations):
        if index > 0:
            generate_exactly(model, inputs, 2, cache_implementation=cache)  # warm-up of this cache layout
        ttfts, fulls, parts, steps = [], [], [], []
        load_before = os.getloadavg()[0]
        with CpuShare() as contention:
            for _ in range(repeats):
                timer.reset()
                start = time.perf_counter()
                generate_exactly(model, inputs, 1, cache_implementation=cache)
                ttfts.append(time.perf_counter() - start)
                parts.append(dict(timer.times))
                clock = StepClock()
                start = time.perf_counter()
                generate_exactly(model, inputs, new_tokens, cache_implementation=cache, logits_processor=[clock])
                fulls.append(time.perf_counter() - start)
                steps.extend(clock.step_times())
        ttft, full = statistics.median(ttfts), statistics.median(fulls)
        per_token = (full - ttft) / (new_tokens - 1)
        timings[cache] = {
            "ttft_s": ttft,
            "ttft_min_s": min(ttfts),
            "ttft_all_s": ttfts,
            "full_s": full,
            "full_all_s": fulls,
            # Share of the machine other processes used during these runs, and the 1-minute load before them.
            "others_cpu_share": contention.others,
            "load_1min_before": round(load_before, 2),
            # (time(N tokens) - TTFT) / (N - 1), medians of the two; and, as a check, the median decode step timed
            # inside the N-token runs (between successive logits-processor calls).
            "decode_s_per_token": per_token,
            "decode_tokens_per_s": 1.0 / per_token if per_token > 0 else float("nan"),
            "decode_step_median_s": statistics.median(steps),
            "ttft_parts_s": {part: statistics.median(p[part] for p in parts) for part in parts[0]},
        }
        if index == 0:
            # Peak RSS while generating with the first (default) cache layout, the weights included.
            result["peak_rss_bytes"] = peak_rss_bytes()
            result["peak_rss_reset"] = can_reset
    timer.remove()
    result["timings"] = timings
    result["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    if profile:
        result["profile"] = profile_model(model, inputs, new_tokens)
    return result


def profile_model(model, inputs: dict, new_tokens: int, row_limit: int = 15) -> dict:
    """torch.profiler tables (self CPU time) of one prefill and of the decode steps of an N-token generation."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own first-use cost, not recorded
        generate_exactly(model, inputs, 1)
    for label, tokens in (("prefill", 1), ("generate", new_tokens)):
        with CpuShare() as contention, profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            generate_exactly(model, inputs, tokens)
            wall = time.perf_counter() - start
        averages = prof.key_averages()
        total = sum(event.self_cpu_time_total for event in averages)
        rows = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)[:row_limit]
        tables[label] = {
            "wall_s": wall,
            "others_cpu_share": contention.others,
            "self_cpu_total_ms": total / 1e3,
            "top_ops": [
                {
                    "op": event.key,
                    "calls": event.count,
                    "self_cpu_ms": round(event.self_cpu_time_total / 1e3, 2),
                    "share": round(event.self_cpu_time_total / total, 4) if total else None,
                }
                for event in rows
            ],
        }
    return tables


# ------------------------------------------------------------------------------------------------------------------
# Quantized footprints of the default BcQLM (runs in its own process)
# ------------------------------------------------------------------------------------------------------------------


def quantized_state_bytes(model) -> int:
    """Bytes of bitsandbytes quantization statistics (absmax, nested absmax, code tables, SCB) that
    `get_memory_footprint()` does not count, because they are not parameters or buffers."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            for tensor in (state.absmax, state.code, getattr(state, "offset", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
            nested = getattr(state, "state2", None)
            if nested is not None:
                for tensor in (nested.absmax, nested.code):
                    total += tensor.numel() * tensor.element_size()
        scb = getattr(weight, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def quantization_footprints(tiny: bool = False, threads: int = 2, workdir: str | None = None, seed: int = 0) -> dict:
    """
    `get_memory_footprint()` of the default BcQLM in fp32, bitsandbytes 8-bit and 4-bit (nf4 with double
    quantization, as README recommends), and 4-bit with the parts that stay unquantized (tied embedding/LM head;
    BreezeCLIP is kept in fp32 by the class) stored in bfloat16. The random fp32 model is saved once (safetensors)
    and loaded back with each quantization config.
    """
    from transformers import BitsAndBytesConfig

    from modeling_bcqlm import BcQLMForConditionalGeneration

    torch.set_num_threads(threads)
    result = {"loads": {}}
    folder = tempfile.mkdtemp(prefix="bcqlm_quant_", dir=workdir)
    try:
        model = build_model("bcqlm", tiny=tiny, seed=seed)
        result["fp32_bytes"] = model.get_memory_footprint()
        embedding = model.get_input_embeddings().weight
        result["tied_embedding_fp32_bytes"] = embedding.numel() * embedding.element_size()
        result["breezeclip_fp32_bytes"] = sum(p.numel() * p.element_size() for p in model.model.breezeclip.parameters())
        disk = shutil.disk_usage(folder)
        needed = 1.1 * result["fp32_bytes"]
        if disk.free < needed:
            raise RuntimeError(f"{folder}: {disk.free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB needed")
        start = time.perf_counter()
        model.save_pretrained(folder)
        result["save_seconds"] = round(time.perf_counter() - start, 1)
        result["checkpoint_bytes"] = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        del model, embedding
        gc.collect()

        nf4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
        loads = {
            "int8": (BitsAndBytesConfig(load_in_8bit=True), None),
            "nf4": (BitsAndBytesConfig(**nf4), None),
            "nf4+bf16": (BitsAndBytesConfig(**nf4, bnb_4bit_compute_dtype=torch.bfloat16), torch.bfloat16),
        }
        for label, (quantization_config, dtype) in loads.items():
            start = time.perf_counter()
            kwargs = {"quantization_config": quantization_config}
            if dtype is not None:
                kwargs["dtype"] = dtype
            model = BcQLMForConditionalGeneration.from_pretrained(folder, **kwargs).eval()
            entry = {
                "load_seconds": round(time.perf_counter() - start, 1),
                "footprint_bytes": model.get_memory_footprint(),
                "quant_state_bytes": quantized_state_bytes(model),
                "embedding_dtype": str(model.get_input_embeddings().weight.dtype).replace("torch.", ""),
                "breezeclip_dtype": str(next(model.model.breezeclip.parameters()).dtype).replace("torch.", ""),
                "quantized_linears": sum(
                    type(module).__name__ in ("Linear8bitLt", "Linear4bit") for module in model.modules()
                ),
            }
            entry["ratio_to_fp32"] = entry["footprint_bytes"] / result["fp32_bytes"]
            result["loads"][label] = entry
            del model
            gc.collect()
        # What 16-bit storage of the unquantized tied embedding / LM head alone would give (BreezeCLIP stays fp32).
        nf4_bytes = result["loads"]["nf4"]["footprint_bytes"]
        result["nf4_with_16bit_embedding_bytes"] = nf4_bytes - result["tied_embedding_fp32_bytes"] // 2
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


# ------------------------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------------------------


def run_isolated(fn, *args, **kwargs):
    """Run `fn` in a fresh spawned process (its own peak RSS) and return its result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(fn, *args, **kwargs).result()


def physical_floors(models: dict, tiny: bool, threads: int, repeats: int, square: bool = True) -> dict:
    """Measured fp32 matmul rates at each model's GEMM shapes (and a large square one) and memory bandwidth."""
    torch.set_num_threads(threads)
    rates = {}
    with CpuShare() as contention:
        if square:
            size = 256 if tiny else 2048
            rates["square"] = measure_matmul_rate(size, size, size, repeats)
        for name, shapes in models.items():
            for part, shape in shapes.items():
                key = "x".join(map(str, shape))
                if key not in rates:
                    rates[key] = measure_matmul_rate(*shape, repeats=repeats)
        rows, cols = (4096, 1024) if tiny else (128256, 2048)  # the default decoder's LM head: 1.05 GB in fp32
        bandwidth = measure_bandwidth(rows, cols, repeats=max(repeats, 5))
    return {"matmul_gflops": rates, "bandwidth_gbs": bandwidth, "bandwidth_shape": [rows, cols], "others_cpu_share": contention.others}


def derive(results: dict) -> dict:
    """Floors, measured/floor ratios, ratios to ours and the targets' pass/fail."""
    for name, model in results["models"].items():
        # The floors measured in the model's own process right before its timings, else the run's common ones.
        floors = model.get("local_floors") or results["floors"]
        bandwidth = floors["bandwidth_gbs"] * 1e9
        rates = {part: floors["matmul_gflops"]["x".join(map(str, shape))] * 1e9 for part, shape in model["gemm_shapes"].items()}
        flops = model["prefill_flops"]
        prefill_floor = flops["decoder"] / rates["decoder"] + flops["vision"] / rates.get("vision", rates["decoder"])
        n = model["new_tokens"]
        mean_context = model["prompt_tokens"] + n / 2
        decode_bytes = model["decoder_bytes_per_token"] + model["kv_bytes_per_position"] * mean_context
        decode_floor = decode_bytes / bandwidth
        model["floors"] = {
            "source": "local" if model.get("local_floors") else "common",
            "bandwidth_gbs": floors["bandwidth_gbs"],
            "prefill_s": prefill_floor,
            "decode_s_per_token": decode_floor,
            "decode_tokens_per_s": 1.0 / decode_floor,
            "matmul_gflops_used": {part: rate / 1e9 for part, rate in rates.items()},
        }
        for cache, timing in model["timings"].items():
            timing["ttft_vs_floor"] = timing["ttft_s"] / prefill_floor
            timing["decode_vs_floor"] = timing["decode_s_per_token"] / decode_floor

    models = results["models"]
    ratios, targets = {}, {}
    if "bcqlm" in models:
        ours = models["bcqlm"]
        ours_t = ours["timings"]["dynamic"] if "dynamic" in ours["timings"] else next(iter(ours["timings"].values()))
        for name, peer in models.items():
            if name == "bcqlm":
                continue
            peer_t = peer["timings"]["dynamic"] if "dynamic" in peer["timings"] else next(iter(peer["timings"].values()))
            ratios[name] = {
                "ttft_ours_over_peer": ours_t["ttft_s"] / peer_t["ttft_s"],
                "decode_tokens_per_s_ours_over_peer": ours_t["decode_tokens_per_s"] / peer_t["decode_tokens_per_s"],
                "peak_rss_ours_over_peer": ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
                "params_ours_over_peer": ours["parameters"]["total"] / peer["parameters"]["total"],
                "prefill_flops_ours_over_peer": ours["prefill_flops"]["total"] / peer["prefill_flops"]["total"],
                "image_tokens_ours_over_peer": ours["image_tokens"] / peer["image_tokens"],
            }
        if "llava" in ratios:
            value = ratios["llava"]["ttft_ours_over_peer"]
            targets["TTFT ours <= 0.15x LLaVA-style"] = {"value": value, "limit": TARGETS["ttft_vs_llava"], "pass": value <= TARGETS["ttft_vs_llava"]}
        for cache, timing in ours["timings"].items():
            value = timing["decode_vs_floor"]
            targets[f"decode within 1.5x bandwidth floor ({cache} cache)"] = {
                "value": value, "limit": TARGETS["decode_vs_floor"], "pass": 0 < value <= TARGETS["decode_vs_floor"]
            }
        if "llava" in ratios:
            value = ratios["llava"]["peak_rss_ours_over_peer"]
            targets["peak RSS ours <= 0.85x LLaVA-style"] = {"value": value, "limit": TARGETS["memory_vs_llava"], "pass": value <= TARGETS["memory_vs_llava"]}
    quant = results.get("quantization")
    if quant and "nf4" in quant.get("loads", {}):
        value = quant["loads"]["nf4"]["ratio_to_fp32"]
        targets["4-bit footprint <= 0.35x fp32"] = {"value": value, "limit": TARGETS["int4_vs_fp32"], "pass": value <= TARGETS["int4_vs_fp32"]}
    results["ratios"] = ratios
    results["targets"] = targets
    return results


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _share(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f} M"


def render_markdown(results: dict) -> str:
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"Measured {machine['date']} on {machine['cpu']} ({machine['logical_cpus']} logical CPUs, "
        f"{machine.get('memory_gib', '?')} GiB, {machine['capability']}), `torch.set_num_threads({machine['torch_threads']})`, "
        f"torch {machine['torch']}, transformers {machine['transformers']}"
        + (f", bitsandbytes {machine['bitsandbytes']}" if "bitsandbytes" in machine else "")
        + f"; load average {results['load_average_before']} before, {results['load_average_after']} after "
        "(other processes may have been running).",
        "",
        f"Settings: {settings['dtype']}, random weights, batch size 1, greedy, {settings['new_tokens']} new tokens forced "
        f"(`min_new_tokens = max_new_tokens`), question of {settings['question_length']} tokens, medians of "
        f"{settings['repeats']} runs{' — TINY configs, not the real shapes' if settings['tiny'] else ''}.",
        "",
        "| | " + " | ".join(results["models"][name]["label"] for name in results["models"]) + " |",
        "|---|" + "---:|" * len(results["models"]),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(m) for m in results["models"].values()) + " |")

    row("parameters: total", lambda m: _m(m["parameters"]["total"]))
    row("parameters: vision side (tower, projector/connector; ours: + question encoder, Q-GCAM)", lambda m: _m(m["parameters"]["vision"]))
    row("parameters: decoder (incl. embedding / LM head)", lambda m: _m(m["parameters"]["decoder"]))
    row("image size / image tokens / prompt tokens", lambda m: f"{m['image_size']} px / {m['image_tokens']} / {m['prompt_tokens']}")
    row("prefill GFLOP (vision side + decoder)", lambda m: f"{m['prefill_flops']['total'] / 1e9:,.1f} ({m['prefill_flops']['vision'] / 1e9:,.1f} + {m['prefill_flops']['decoder'] / 1e9:,.1f})")
    caches = list(next(iter(results["models"].values()))["timings"])
    for cache in caches:
        row(f"TTFT, s ({cache} cache; median, min)", lambda m: f"{m['timings'][cache]['ttft_s']:.2f}, {m['timings'][cache]['ttft_min_s']:.2f}")
        row(f"TTFT / prefill floor ({cache})", lambda m: f"{m['timings'][cache]['ttft_vs_floor']:.2f}x")
        row(f"decode, tokens/s ({cache} cache)", lambda m: f"{m['timings'][cache]['decode_tokens_per_s']:.2f}")
        row(f"decode step, median inside the N-token runs, s ({cache})", lambda m: f"{m['timings'][cache]['decode_step_median_s']:.3f}")
        row(f"decode time / bandwidth floor ({cache})", lambda m: f"{m['timings'][cache]['decode_vs_floor']:.2f}x")
        row(f"other processes' CPU share during these runs ({cache})", lambda m: _share(m["timings"][cache].get("others_cpu_share")))
    row("fp32 matmul GFLOP/s at the decoder's (vision tower's) prefill MLP shape, measured in the model's process",
        lambda m: ", ".join(f"{part} {rate:.0f}" for part, rate in m["floors"]["matmul_gflops_used"].items()))
    row("fp32 matrix-vector bandwidth, GB/s, same", lambda m: f"{m['floors']['bandwidth_gbs']:.1f}")
    row("prefill floor, s", lambda m: f"{m['floors']['prefill_s']:.2f}")
    row("decode floor, tokens/s (weights + KV bytes / bandwidth)", lambda m: f"{m['floors']['decode_tokens_per_s']:.2f}")
    row("peak RSS while generating", lambda m: _gb(m["peak_rss_bytes"]))
    cache0 = caches[0]
    row(f"TTFT breakdown, s ({cache0})", lambda m: ", ".join(f"{k} {v:.2f}" for k, v in m["timings"][cache0]["ttft_parts_s"].items()))

    floors = results["floors"]
    lines += [
        "",
        f"Common floors (measured after the models, other processes' CPU share {_share(floors.get('others_cpu_share'))}): fp32 matmul "
        + ", ".join(f"{shape}: {rate:.0f} GFLOP/s" for shape, rate in floors["matmul_gflops"].items())
        + f"; fp32 matrix-vector bandwidth {floors['bandwidth_gbs']:.1f} GB/s ({floors['bandwidth_shape'][0]}x{floors['bandwidth_shape'][1]}). "
        "Each model's floors use the rates measured in its own process right before its timings: prefill floor = "
        "counted prefill FLOPs / the rate at the model's decoder (and vision-tower) MLP shape; decode floor = (decoder "
        "weight bytes read per token + mean KV-cache bytes) / bandwidth.",
    ]
    if results["ratios"]:
        lines += ["", "| ours / peer | " + " | ".join(results["ratios"]) + " |", "|---|" + "---:|" * len(results["ratios"])]
        keys = next(iter(results["ratios"].values())).keys()
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(f"{r[key]:.3f}" for r in results["ratios"].values()) + " |")
    quant = results.get("quantization")
    if quant:
        lines += ["", "`get_memory_footprint()` of the default BcQLM (random weights saved and reloaded):", "",
                  "| storage | footprint | / fp32 | + quant. statistics | load time |", "|---|---:|---:|---:|---:|",
                  f"| fp32 | {_gb(quant['fp32_bytes'])} | 1.000 | | |"]
        names = {"int8": "bnb 8-bit (LLM.int8)", "nf4": "bnb 4-bit nf4, double quant", "nf4+bf16": "bnb 4-bit nf4, unquantized parts bf16 (BreezeCLIP kept fp32)"}
        for label, entry in quant["loads"].items():
            lines.append(
                f"| {names.get(label, label)} | {_gb(entry['footprint_bytes'])} | {entry['ratio_to_fp32']:.3f} | "
                f"{entry['quant_state_bytes'] / 1e6:.1f} MB | {entry['load_seconds']:.0f} s |"
            )
        lines.append(
            f"| nf4 with the tied embedding / LM head ({_gb(quant['tied_embedding_fp32_bytes'])} in fp32) in 16-bit, computed | "
            f"{_gb(quant['nf4_with_16bit_embedding_bytes'])} | {quant['nf4_with_16bit_embedding_bytes'] / quant['fp32_bytes']:.3f} | | |"
        )
    if results["targets"]:
        lines += ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
        for target, entry in results["targets"].items():
            lines.append(f"| {target} | {entry['value']:.3f} | {entry['limit']} | {'pass' if entry['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def write_markdown(markdown: str, readme: Path, start: str = RESULTS_START, end: str = RESULTS_END) -> None:
    """Replace the results section of `readme` (between the markers `start` and `end`), or append one."""
    block = f"{start}\n{markdown}{end}"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of bcqlm,llava,smolvlm")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated, forced (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; medians (default 3)")
    parser.add_argument("--question-length", type=int, default=12, help="question tokens (default 12)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--cache", default="dynamic,static", help="cache implementations to time (default dynamic,static)")
    parser.add_argument("--quantization", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure bnb 8-bit / 4-bit footprints of the default BcQLM (saves a ~5 GB checkpoint)")
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
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    args.cache = tuple(c.strip() for c in args.cache.split(",") if c.strip())
    args.profile = {m.strip() for m in args.profile.split(",") if m.strip()}
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed needs one token after the first)")
    return args


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runner = (lambda fn, *a, **k: fn(*a, **k)) if args.in_process else run_isolated
    results = {
        "machine": machine_info(args.threads),
        "settings": {
            "models": args.models, "dtype": args.dtype, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "question_length": args.question_length, "cache": list(args.cache), "tiny": args.tiny,
            "peak_rss": "VmHWM reset after the model is built, read after the dynamic-cache runs (weights included)",
        },
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "models": {},
    }
    for name in args.models:
        quiet = wait_for_quiet_cpu(args.quiet_share, timeout=args.quiet_timeout) if args.quiet_timeout > 0 else None
        if quiet is not None:
            _log(f"other processes' CPU share {quiet['others_cpu_share']}, waited {quiet['waited_s']} s")
        _log(f"{name}: building and timing")
        results["models"][name] = runner(
            benchmark_model, name, tiny=args.tiny, dtype=args.dtype, new_tokens=args.new_tokens, repeats=args.repeats,
            question_length=args.question_length, threads=args.threads, cache_implementations=args.cache,
            profile=name in args.profile,
        )
        model = results["models"][name]
        model["quiet_check"] = quiet
        t = model["timings"][args.cache[0]]
        _log(f"{name}: TTFT {t['ttft_s']:.2f} s, decode {t['decode_tokens_per_s']:.2f} tok/s, peak RSS {_gb(model['peak_rss_bytes'])}")
    if args.quiet_timeout > 0:
        results["floors_quiet_check"] = wait_for_quiet_cpu(args.quiet_share, timeout=args.quiet_timeout)
    _log("measuring the machine's floors")
    results["floors"] = runner(
        physical_floors, {name: m["gemm_shapes"] for name, m in results["models"].items()}, args.tiny, args.threads,
        args.repeats if args.tiny else max(args.repeats, 5),
    )
    if args.quantization:
        _log("quantized footprints of the default BcQLM")
        try:
            results["quantization"] = runner(quantization_footprints, tiny=args.tiny, threads=args.threads, workdir=args.workdir)
        except Exception as error:  # report what happened rather than lose the timings
            results["quantization_error"] = f"{type(error).__name__}: {error}"
            _log(f"quantization failed: {results['quantization_error']}")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    derive(results)

    markdown = render_markdown(results)
    print(markdown)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
        _log(f"wrote {output}")
    if args.markdown:
        write_markdown(markdown, Path(args.readme))
        _log(f"wrote {args.readme}")
    return results


if __name__ == "__main__":
    main()
