"""Processor-equivalent inputs built without tokenizers, and `generate` with a forced number of new tokens."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .peers import Peer


TEMPLATE_TOKENS = 5  # "Question: " before the question and "\nAnswer:" after it


def make_image(seed: int = 0, height: int = 480, width: int = 640) -> torch.Tensor:
    """One random RGB image, (3, height, width) in [0, 1]; every model gets it resized to its own resolution."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float() / 255.0


def make_inputs(peer: Peer, config: PretrainedConfig, question_length: int = 12, seed: int = 0) -> dict:
    """
    Batch-size-1 inputs with the same image and text of the same length for every model: input_ids (1, positions) =
    BOS + the peer's image segment + "Question: <question_length tokens>\\nAnswer:", where text ids are random ids of
    the decoder's vocabulary; then the peer's image inputs (pixel values in [-1, 1] at its resolution).
    """
    size = peer.image_size(config)
    image = nn.functional.interpolate(make_image(seed)[None], size=(size, size), mode="bilinear", align_corners=False)
    pixel_values = (image - 0.5) / 0.5

    text_config = config.get_text_config(decoder=True)
    vocab_size = text_config.vocab_size
    generator = torch.Generator().manual_seed(seed + 1)
    # Ordinary ids: above the low special ids, and below the reserved ones at the top of a large vocabulary.
    low = min(256, vocab_size // 4)
    high = min(vocab_size - 1024, 100_000) if vocab_size > 4096 else vocab_size - 2
    text_ids = torch.randint(low, high, (question_length + TEMPLATE_TOKENS,), generator=generator)
    bos = torch.tensor([text_config.bos_token_id if text_config.bos_token_id is not None else 1])
    input_ids = torch.cat([bos, peer.image_segment(config), text_ids])[None]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    inputs.update(peer.vision_inputs(config, pixel_values, question_length, generator))
    return inputs


def generate_exactly(
    model: PreTrainedModel, inputs: dict, new_tokens: int, cache_implementation: str | None = None, **kwargs
):
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
