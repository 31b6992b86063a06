"""The three compared models, full size and `--tiny`, and one `Peer` description each.

- ``bcqlm``: ``BcQLMForConditionalGeneration(BcQLMConfig())``, 224 px image, 49 image tokens, and the question alone
  for the question encoder.
- ``llava``: ``LlavaForConditionalGeneration`` with a CLIP ViT-L/14-336 vision tower (feature layer -2, CLS dropped,
  576 image tokens), the two-layer GELU projector and BcQLM's own Llama-3.2-1B-shaped decoder.
- ``smolvlm``: ``Idefics3ForConditionalGeneration`` in SmolVLM-256M's shape (SigLIP-B/16 at 512 px, pixel shuffle 4,
  64 image tokens for one 512 px tile; SmolLM2-135M decoder with a 49280 vocabulary, untied LM head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration
from modeling_bcqlm.testing.tiny_models import tiny_breezeclip_config


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


@dataclass(frozen=True)
class Peer:
    """One compared model. `parts` maps a part's name to the submodule path(s) it covers; the decoder is the submodule
    at `decoder_prefix` (embedding table, layers, final norm) plus `lm_head`, everything else is the vision side."""

    name: str
    label: str
    make_config: Callable[[bool], PretrainedConfig]  # tiny -> config
    model_class: type[PreTrainedModel]
    image_size: Callable[[PretrainedConfig], int]  # pixels per side of the model's input image
    image_tokens: Callable[[PretrainedConfig], int]  # decoder positions one image's features take
    image_segment: Callable[[PretrainedConfig], torch.Tensor]  # the image's prompt ids, (positions,)
    # (config, pixel_values (1, 3, H, W) in [-1, 1], question length, generator) -> the model's image inputs
    vision_inputs: Callable[[PretrainedConfig, torch.Tensor, int, torch.Generator], dict[str, torch.Tensor]]
    decoder_prefix: str
    parts: dict[str, str | tuple[str, ...]]
    # (tokens, hidden, intermediate) of the vision tower's MLP; None: no tower shaped like a transformer
    vision_mlp_shape: Callable[[PretrainedConfig], tuple[int, int, int]] | None = None


def bcqlm_config(tiny: bool = False) -> BcQLMConfig:
    """The paper's BcQLM, or a tiny one with the tests' 2x2-map towers (4 image tokens)."""
    if not tiny:
        return BcQLMConfig()
    return BcQLMConfig(
        breezeclip_config=tiny_breezeclip_config().to_dict(),
        qgcam_config={"num_attention_heads": 4},
        text_config=dict(TINY_DECODER),
        image_token_id=TINY_DECODER["vocab_size"],  # outside the table, as 128256 is for the default model
    )


def llava_config(tiny: bool = False) -> LlavaConfig:
    """LLaVA-1.5-style peer: CLIP ViT-L/14-336 (or a tiny CLIP) and BcQLM's own decoder config."""
    text_config = bcqlm_config(tiny).text_config.to_dict()
    vision_config = TINY_CLIP if tiny else CLIP_VIT_L_14_336
    return LlavaConfig(
        vision_config=dict(vision_config),
        text_config=text_config,
        image_token_index=text_config["vocab_size"] - 1 if tiny else LLAVA_IMAGE_TOKEN_ID,
        image_seq_length=_patches(vision_config["image_size"], vision_config["patch_size"]),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def smolvlm_config(tiny: bool = False) -> Idefics3Config:
    """SmolVLM-256M's shape as an `Idefics3Config` (or a tiny one with the same structure)."""
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


def _patches(image_size: int, patch_size: int) -> int:
    return (image_size // patch_size) ** 2


def _bcqlm_vision_inputs(config, pixel_values, question_length, generator) -> dict[str, torch.Tensor]:
    """The image and the question alone, `[CLS] question [SEP]`, for the question encoder (random ids)."""
    question_vocab = config.breezeclip_config.text_config.vocab_size
    question = torch.randint(min(1000, question_vocab // 2), question_vocab, (question_length,), generator=generator)
    cls_id, sep_id = (101, 102) if question_vocab > 1000 else (2, 3)
    question_ids = torch.cat([torch.tensor([cls_id]), question, torch.tensor([sep_id])])[None]
    return {
        "pixel_values": pixel_values,
        "question_input_ids": question_ids,
        "question_attention_mask": torch.ones_like(question_ids),
    }


def _smolvlm_image_segment(config) -> torch.Tensor:
    """Idefics3/SmolVLM processor, one 512 px tile without splitting: <fake><global-img><image>*64<fake>."""
    vocab_size = config.text_config.vocab_size
    full_size = vocab_size > SMOLVLM_IMAGE_TOKEN_ID
    fake = SMOLVLM_FAKE_TOKEN_AROUND_IMAGE_ID if full_size else vocab_size - 2
    global_image = SMOLVLM_GLOBAL_IMAGE_TOKEN_ID if full_size else vocab_size - 3
    images = torch.full((_smolvlm_image_tokens(config),), config.image_token_id)
    return torch.cat([torch.tensor([fake, global_image]), images, torch.tensor([fake])])


def _smolvlm_image_tokens(config) -> int:
    vision = config.vision_config
    return _patches(vision.image_size, vision.patch_size) // config.scale_factor**2


def _smolvlm_vision_inputs(config, pixel_values, question_length, generator) -> dict[str, torch.Tensor]:
    size = pixel_values.shape[-1]
    return {
        "pixel_values": pixel_values[:, None],  # (batch, num_images, 3, H, W)
        "pixel_attention_mask": torch.ones((1, 1, size, size), dtype=torch.bool),
    }


def _llava_image_tokens(config) -> int:
    vision = config.vision_config
    cls_kept = config.vision_feature_select_strategy == "full"
    return _patches(vision.image_size, vision.patch_size) + int(cls_kept)


def _image_ids(image_tokens: Callable[[PretrainedConfig], int]) -> Callable[[PretrainedConfig], torch.Tensor]:
    """A prompt segment of `image_tokens(config)` image token ids, nothing around them."""
    return lambda config: torch.full((image_tokens(config),), config.image_token_id)


def _vision_tower_mlp(extra_tokens: int) -> Callable[[PretrainedConfig], tuple[int, int, int]]:
    """The vision tower's MLP matmul shape: one row per patch (plus `extra_tokens`, e.g. CLIP's CLS)."""

    def shape(config) -> tuple[int, int, int]:
        vision = config.vision_config
        tokens = _patches(vision.image_size, vision.patch_size) + extra_tokens
        return tokens, vision.hidden_size, vision.intermediate_size

    return shape


PEERS = {
    "bcqlm": Peer(
        name="bcqlm",
        label="BcQLM (ours, default config)",
        make_config=bcqlm_config,
        model_class=BcQLMForConditionalGeneration,
        image_size=lambda config: config.breezeclip_config.vision_config.image_size,
        image_tokens=lambda config: config.image_seq_length,
        image_segment=_image_ids(lambda config: config.image_seq_length),
        vision_inputs=_bcqlm_vision_inputs,
        decoder_prefix="model.language_model",
        parts={
            "image tower": "model.breezeclip.vision_model",
            "question encoder": "model.breezeclip.text_model",
            "projections+adapter": (
                "model.breezeclip.visual_projection",
                "model.breezeclip.text_projection",
                "model.visual_adapter",
            ),
            "Q-GCAM": "model.qgcam",
            "decoder": "model.language_model",
            "lm_head": "lm_head",
        },
    ),
    "llava": Peer(
        name="llava",
        label="LLaVA-style (CLIP ViT-L/14-336 + Llama-3.2-1B shape)",
        make_config=llava_config,
        model_class=LlavaForConditionalGeneration,
        image_size=lambda config: config.vision_config.image_size,
        image_tokens=_llava_image_tokens,
        image_segment=_image_ids(_llava_image_tokens),
        vision_inputs=lambda config, pixel_values, question_length, generator: {"pixel_values": pixel_values},
        decoder_prefix="model.language_model",
        parts={
            "image tower": "model.vision_tower",
            "projector": "model.multi_modal_projector",
            "decoder": "model.language_model",
            "lm_head": "lm_head",
        },
        vision_mlp_shape=_vision_tower_mlp(extra_tokens=1),
    ),
    "smolvlm": Peer(
        name="smolvlm",
        label="SmolVLM-256M shape (Idefics3)",
        make_config=smolvlm_config,
        model_class=Idefics3ForConditionalGeneration,
        image_size=lambda config: config.vision_config.image_size,
        image_tokens=_smolvlm_image_tokens,
        image_segment=_smolvlm_image_segment,
        vision_inputs=_smolvlm_vision_inputs,
        decoder_prefix="model.text_model",
        parts={
            "image tower": "model.vision_model",
            "connector": "model.connector",
            "decoder": "model.text_model",
            "lm_head": "lm_head",
        },
        vision_mlp_shape=_vision_tower_mlp(extra_tokens=0),
    ),
}
MODELS = tuple(PEERS)
