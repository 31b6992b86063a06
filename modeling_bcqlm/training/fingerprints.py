"""Names for the `datasets` cache files of features computed once by a frozen model."""

import hashlib
import json

import torch
from torch import nn


def model_fingerprint(model: nn.Module, processor, *settings) -> str:
    """A hash of a model's weights and configuration, of its processor and of `settings` (16 hex digits)."""
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string().encode())
    digest.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    digest.update("|".join(map(str, settings)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
