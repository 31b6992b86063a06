"""What a model's shape alone gives: parameter counts, weight bytes one decode step reads, KV-cache bytes per
position, and the FLOPs of one prefill (counted, not timed)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from .peers import Peer


def _unique_parameters(model: nn.Module, prefixes: str | tuple[str, ...]) -> list[nn.Parameter]:
    """The parameters of the submodules at `prefixes`, each once. `PreTrainedModel.num_parameters` cannot count
    these: a part can span several submodules, some plain `nn.Module`s, and the decoder's embedding table may also be
    the (tied) LM head's weight."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    unique = {id(p): p for prefix in prefixes for p in model.get_submodule(prefix).parameters()}
    return list(unique.values())


def parameter_counts(peer: Peer, model: PreTrainedModel) -> dict[str, int]:
    """Total, decoder (embedding, layers, norm and LM head, tied weights once), vision side (everything else), and
    one `part:<name>` entry per part of `peer.parts`."""
    counts = {
        "total": model.num_parameters(),  # `parameters()` yields a tied weight once
        "decoder": sum(p.numel() for p in _unique_parameters(model, (peer.decoder_prefix, "lm_head"))),
    }
    counts["vision"] = counts["total"] - counts["decoder"]
    for part, prefixes in peer.parts.items():
        counts[f"part:{part}"] = sum(p.numel() for p in _unique_parameters(model, prefixes))
    return counts


def decoder_bytes_per_token(peer: Peer, model: PreTrainedModel) -> int:
    """Weight bytes one decode step reads: the decoder's layers and final norm plus the LM head (the input embedding
    table is read one row per token, so it counts only when it is the LM head's weight)."""
    embedding = model.get_submodule(peer.decoder_prefix).get_input_embeddings().weight
    lm_head = model.get_output_embeddings().weight
    params = _unique_parameters(model, (peer.decoder_prefix, "lm_head"))
    return sum(p.numel() * p.element_size() for p in params if p is not embedding or p is lm_head)


def kv_bytes_per_position(model: PreTrainedModel) -> int:
    """Key/value cache bytes per sequence position (all layers)."""
    text_config = model.config.get_text_config(decoder=True)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    element_size = model.get_input_embeddings().weight.element_size()
    return 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * head_dim * element_size


def prefill_flops(peer: Peer, model: PreTrainedModel, inputs: dict) -> dict[str, int]:
    """FLOPs of one prefill forward (`logits_to_keep=1`, as `generate` runs it), counted by `FlopCounterMode`: the
    total, the decoder's share (its layers and the LM head) and the rest (vision side)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**inputs, logits_to_keep=1, use_cache=True)
    total = counter.get_total_flops()
    decoder = 0
    for module_name, ops in counter.get_flop_counts().items():
        # Keys are `<ClassName>.<dotted path>`: sum the decoder and the head, not their children twice.
        path = module_name.split(".", 1)[1] if "." in module_name else ""
        if path in (peer.decoder_prefix, "lm_head"):
            decoder += sum(ops.values())
    return {"total": int(total), "decoder": int(decoder), "vision": int(total - decoder)}
