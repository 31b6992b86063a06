"""Small, offline building blocks for the tests: tokenizers, images, a processor and a matching model."""

import numpy as np
import torch
from PIL import Image

from examples.tiny_bcqlm import (
    BOS,
    CORPUS,
    EOS,
    PAD,
    make_decoder_tokenizer,
    make_processor,
    make_question_tokenizer,
    make_tiny_bcqlm,
)


__all__ = [
    "BOS",
    "CORPUS",
    "EOS",
    "PAD",
    "make_decoder_tokenizer",
    "make_image",
    "make_model_and_processor",
    "make_processor",
    "make_question_tokenizer",
]


def make_image(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A PIL image of random 8-bit pixels, `size` as (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def make_model_and_processor(seed: int = 0, std: float = 0.3, **config_kwargs):
    """A tiny BcQLM and its processor, the weights re-drawn with `std` so that greedy decoding varies."""
    torch.manual_seed(seed)
    model, processor = make_tiny_bcqlm(**config_kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, std)
        # Padding rows stay zero, as `padding_idx` keeps them in a real model.
        question_embeddings = model.model.breezeclip.text_model.embeddings.word_embeddings
        question_embeddings.weight[question_embeddings.padding_idx].zero_()
    return model, processor
