"""BreezeCLIP and BcQLM model configurations."""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# Llama-3.2-1B's published shape: the decoder of the paper's model.
LLAMA_3_2_1B_KWARGS = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    },
}

# MobileViT-S at 224 px: 640 output channels on a 7x7 map.
MOBILEVIT_S_KWARGS = {"image_size": 224}

VISION_FEATURE_MODES = ("patch", "pooled")
QUESTION_FEATURE_MODES = ("tokens", "pooled")


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


@strict
class BreezeCLIPConfig(PreTrainedConfig):
    r"""
    Configuration of [`BreezeCLIPModel`], the compact dual encoder of BcQLM (stage 1).

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Image tower config; defaults to MobileViT-S at 224 px (`MobileViTConfig`).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Text tower config; defaults to MobileBERT (`MobileBertConfig`).
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the shared embedding space (a CLIP ViT-B teacher's embedding size).
        logit_scale_init_value (`float`, *optional*, defaults to `log(1 / 0.07)`):
            Initial value of the learned log inverse temperature of the contrastive loss.

    Example:

    ```python
    >>> from modeling_bcqlm import BreezeCLIPConfig, BreezeCLIPModel
    >>> model = BreezeCLIPModel(BreezeCLIPConfig())
    ```"""

    model_type = "breezeclip"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="mobilevit", init_kwargs=MOBILEVIT_S_KWARGS),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="mobilebert"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    initializer_range: float = 0.02

    def validate_architecture(self):
        """Part of `@strict`-powered validation."""
        _check_positive("projection_dim", self.projection_dim)
        if not math.isfinite(self.logit_scale_init_value):
            raise ValueError(f"`logit_scale_init_value` must be finite, got {self.logit_scale_init_value!r}.")
        if self.vision_config.model_type == "mobilevit" and self.vision_config.image_size % 32 != 0:
            raise ValueError(
                f"MobileViT downsamples by 32: `vision_config.image_size` must be a multiple of 32, "
                f"got {self.vision_config.image_size}."
            )

    @property
    def vision_hidden_size(self) -> int:
        """Channels of the image tower's last feature map."""
        if self.vision_config.model_type == "mobilevit":
            return self.vision_config.neck_hidden_sizes[-1]
        return self.vision_config.hidden_size


@strict
class BcQLMQGCAMConfig(PreTrainedConfig):
    r"""
    Configuration of the question-gated cross-modal attention module (Q-GCAM). Its width is the decoder's hidden size.

    Args:
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the cross-attention (image tokens attend to question tokens).
        gate_type (`str`, *optional*, defaults to `"token"`):
            `"token"`: the released code's gate, one scalar per image token from `[image token ; pooled question]`.
            `"channel"`: the paper's gate, one value per channel from the pooled question alone.
        question_pooling (`str`, *optional*, defaults to `"cls"`):
            How the gate's pooled question is made: `"cls"` uses BreezeCLIP's question embedding (the projected
            [CLS] state), `"mean"` the masked mean of the projected question tokens.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities and on the attended features.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the LayerNorm.
    """

    model_type = "bcqlm_qgcam"
    base_config_key = "qgcam_config"

    num_attention_heads: int = 8
    gate_type: Literal["token", "channel"] = "token"
    question_pooling: Literal["cls", "mean"] = "cls"
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5

    def validate_architecture(self):
        """Part of `@strict`-powered validation."""
        _check_positive("qgcam_config.num_attention_heads", self.num_attention_heads)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`qgcam_config.dropout` must be in [0, 1), got {self.dropout!r}.")


@strict
class BcQLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`BcQLMForConditionalGeneration`]. The defaults are the paper's 1.2B model: MobileViT-S and
    MobileBERT (BreezeCLIP), Q-GCAM, and a decoder of Llama-3.2-1B's shape.

    Args:
        breezeclip_config (`dict` or `BreezeCLIPConfig`, *optional*):
            The dual encoder: image tower, question encoder and projection heads.
        qgcam_config (`dict` or `BcQLMQGCAMConfig`, *optional*):
            The fusion module.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The decoder; defaults to Llama-3.2-1B's shape.
        image_token_id (`int`, *optional*, defaults to 128256):
            Id of the `<image>` placeholder token. It may lie outside the decoder's embedding table (128256 is the id
            `<image>` gets when added to Llama-3's tokenizer): placeholders are replaced by visual features and never
            looked up.
        vision_feature_mode (`str`, *optional*, defaults to `"patch"`):
            `"patch"`: one visual token per cell of the image tower's last feature map (49 at 224 px).
            `"pooled"`: a single visual token, the pooled image embedding (the released code's form).
        question_feature_mode (`str`, *optional*, defaults to `"tokens"`):
            `"tokens"`: Q-GCAM attends to every question token. `"pooled"`: to the question embedding alone (the
            released code's form).
        normalize_features (`bool`, *optional*, defaults to `False`):
            L2-normalise BreezeCLIP's image and question features (each token, and the pooled question) before the
            adapter and Q-GCAM, as the released code feeds them its normalised contrastive embeddings.
        image_seq_length (`int`, *optional*):
            Number of visual tokens per image; derived from the image tower when not given.

    Example:

    ```python
    >>> from modeling_bcqlm import BcQLMConfig
    >>> config = BcQLMConfig()
    >>> config.text_config.hidden_size, config.image_seq_length
    (2048, 49)
    ```"""

    model_type = "bcqlm"
    sub_configs_defaults = {
        "breezeclip_config": BreezeCLIPConfig,
        "qgcam_config": BcQLMQGCAMConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=LLAMA_3_2_1B_KWARGS),
    }

    breezeclip_config: dict | PreTrainedConfig | None = None
    qgcam_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 128256
    vision_feature_mode: Literal["patch", "pooled"] = "patch"
    question_feature_mode: Literal["tokens", "pooled"] = "tokens"
    normalize_features: bool = False
    image_seq_length: int | None = None
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = self.text_config.tie_word_embeddings
        if self.image_seq_length is None:
            self.image_seq_length = self._derive_image_seq_length()

    def validate_architecture(self):
        """Part of `@strict`-powered validation: the parts fit together."""
        if self.image_token_id < 0:
            raise ValueError(f"`image_token_id` must be a non-negative integer, got {self.image_token_id!r}.")
        pad_token_id = self.text_config.pad_token_id
        if pad_token_id is not None and pad_token_id == self.image_token_id:
            raise ValueError(f"`image_token_id` ({self.image_token_id}) must differ from the decoder's pad token id.")
        hidden_size, num_heads = self.text_config.hidden_size, self.qgcam_config.num_attention_heads
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"The decoder's hidden size ({hidden_size}) must be divisible by "
                f"`qgcam_config.num_attention_heads` ({num_heads})."
            )
        if self.image_seq_length is None:
            raise ValueError(
                f"Cannot derive the number of visual tokens for a `{self.breezeclip_config.vision_config.model_type}`"
                " image tower: pass `image_seq_length`."
            )
        _check_positive("image_seq_length", self.image_seq_length)
        expected = self._derive_image_seq_length()
        if expected is not None and self.image_seq_length != expected:
            raise ValueError(
                f"`image_seq_length={self.image_seq_length}` does not match the image tower, which gives {expected} "
                f"visual tokens with vision_feature_mode={self.vision_feature_mode!r}; leave it unset to derive it."
            )

    def _derive_image_seq_length(self) -> int | None:
        if self.vision_feature_mode == "pooled":
            return 1
        vision_config = self.breezeclip_config.vision_config
        if vision_config.model_type != "mobilevit":
            return None
        return (vision_config.image_size // vision_config.output_stride) ** 2


__all__ = ["BreezeCLIPConfig", "BcQLMQGCAMConfig", "BcQLMConfig"]
