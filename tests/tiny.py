"""Tiny BcQLM configurations for tests (hidden sizes <= 64, 1-2 layers per part)."""

from modeling_bcqlm.configuration_bcqlm import BcQLMConfig, BreezeCLIPConfig


TINY_IMAGE_SIZE = 64  # MobileViT downsamples by 32: a 2x2 map, 4 visual tokens


def tiny_breezeclip_config(text_vocab_size: int = 100, **kwargs) -> BreezeCLIPConfig:
    vision_config = {
        "model_type": "mobilevit",
        "image_size": TINY_IMAGE_SIZE,
        "hidden_sizes": [16, 16, 16],
        "neck_hidden_sizes": [8, 8, 16, 16, 16, 16, 32],
        "num_attention_heads": 2,
        "expand_ratio": 2.0,
        "mlp_ratio": 2.0,
    }
    text_config = {
        "model_type": "mobilebert",
        "vocab_size": text_vocab_size,
        "hidden_size": 32,
        "embedding_size": 16,
        "intra_bottleneck_size": 16,
        "true_hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_feedforward_networks": 1,
        "max_position_embeddings": 64,
    }
    return BreezeCLIPConfig(vision_config=vision_config, text_config=text_config, projection_dim=24, **kwargs)


def tiny_bcqlm_config(
    decoder_vocab_size: int = 120, question_vocab_size: int = 100, image_token_id: int = 119, **kwargs
) -> BcQLMConfig:
    text_config = {
        "model_type": "llama",
        "vocab_size": decoder_vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
        "tie_word_embeddings": True,
    }
    return BcQLMConfig(
        breezeclip_config=tiny_breezeclip_config(question_vocab_size),
        qgcam_config=kwargs.pop("qgcam_config", {"num_attention_heads": 4}),
        text_config=text_config,
        image_token_id=image_token_id,
        **kwargs,
    )
