"""Random-weight models, built fast: the library's weight initialisation is skipped and every tensor is filled with
one `normal_` call (random weights are fine for timing)."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .peers import Peer


def _is_norm(module: nn.Module) -> bool:
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return isinstance(module, norms) or "Norm" in type(module).__name__


@torch.no_grad()
def fast_random_init_(model: nn.Module, seed: int = 0, embedding_std: float = 0.02) -> nn.Module:
    """
    Fill every parameter with random values quickly (one `normal_` per tensor, no per-module init logic): norms get
    weight 1 and bias 0, other biases and scalars 0, embeddings N(0, `embedding_std`), linear weights N(0, 1/fan_in)
    and convolution weights N(0, 2/fan_in), so that activations keep their scale through the towers (tiny activations
    would turn into denormals and slow the CPU down). Tied parameters are filled once.
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


def build_model(
    peer: Peer, tiny: bool = False, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0
) -> PreTrainedModel:
    """
    `peer`'s model with random weights, in eval mode. On the CPU the library's weight initialisation is skipped
    (`no_init_weights`) for `fast_random_init_`; tied weights stay tied. `device="meta"` builds without allocating
    (parameter counts only).
    """
    config = peer.make_config(tiny)
    if device == "meta":
        with torch.device("meta"):
            return peer.model_class(config).eval()
    with no_init_weights():
        model = peer.model_class(config)
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
