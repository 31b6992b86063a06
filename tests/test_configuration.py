import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, LlamaConfig, MobileBertConfig, MobileViTConfig

from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration, BcQLMQGCAMConfig, BreezeCLIPConfig
from modeling_bcqlm.testing.tiny_models import tiny_bcqlm_config, tiny_breezeclip_config


def test_default_config_is_the_papers_model():
    config = BcQLMConfig()
    vision = config.breezeclip_config.vision_config
    question = config.breezeclip_config.text_config
    decoder = config.text_config

    assert isinstance(vision, MobileViTConfig)
    assert list(vision.hidden_sizes) == [144, 192, 240]  # MobileViT-S
    assert list(vision.neck_hidden_sizes)[-1] == 640
    assert vision.image_size == 224
    assert isinstance(question, MobileBertConfig)
    assert (question.hidden_size, question.num_hidden_layers, question.embedding_size) == (512, 24, 128)
    assert config.breezeclip_config.projection_dim == 512

    assert isinstance(decoder, LlamaConfig)
    assert decoder.hidden_size == 2048
    assert decoder.num_hidden_layers == 16
    assert decoder.num_attention_heads == 32
    assert decoder.num_key_value_heads == 8
    assert decoder.intermediate_size == 8192
    assert decoder.vocab_size == 128256
    assert decoder.rope_parameters["rope_type"] == "llama3"
    assert decoder.rope_parameters["rope_theta"] == 500000.0
    assert decoder.rope_parameters["factor"] == 32.0
    assert decoder.tie_word_embeddings and config.tie_word_embeddings

    assert config.qgcam_config.num_attention_heads == 8
    assert config.qgcam_config.gate_type == "token"
    assert config.image_seq_length == 7 * 7  # MobileViT's 7x7 map at 224 px
    assert config.get_text_config(decoder=True) is decoder


def test_default_model_size_on_meta_device():
    with torch.device("meta"):
        model = BcQLMForConditionalGeneration(BcQLMConfig())
    total = sum(p.numel() for p in model.parameters())
    assert 1.2e9 <= total <= 1.35e9
    vision = sum(p.numel() for p in model.model.breezeclip.vision_model.parameters())
    question = sum(p.numel() for p in model.model.breezeclip.text_model.parameters())
    assert 4.5e6 < vision < 5.5e6  # MobileViT-S without its classifier: 4.9M
    assert 24e6 < question < 25.5e6  # MobileBERT without its pooler
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_pooled_modes_give_one_visual_token():
    assert tiny_bcqlm_config(vision_feature_mode="pooled").image_seq_length == 1
    assert tiny_bcqlm_config().image_seq_length == 4  # 64 px -> 2x2 map


def test_output_stride_16_gives_a_finer_map():
    breezeclip_config = tiny_breezeclip_config()
    breezeclip_config.vision_config.output_stride = 16  # MobileViT's last stage dilated instead of strided
    config = tiny_bcqlm_config()
    config = BcQLMConfig(**{**config.to_dict(), "breezeclip_config": breezeclip_config.to_dict(), "image_seq_length": None})
    assert config.image_seq_length == 16  # 64 px -> 4x4 map
    model = BcQLMForConditionalGeneration(config).eval()
    with torch.no_grad():
        features = model.get_image_features(torch.randn(2, 3, 64, 64)).pooler_output
    assert features.shape == (2, 16, config.text_config.hidden_size)


def test_round_trip_through_dict_and_auto_config(tmp_path):
    config = tiny_bcqlm_config(qgcam_config={"num_attention_heads": 2, "gate_type": "channel"})
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, BcQLMConfig)
    assert isinstance(loaded.qgcam_config, BcQLMQGCAMConfig)
    assert isinstance(loaded.breezeclip_config, BreezeCLIPConfig)
    assert _without_path(loaded.to_dict()) == _without_path(config.to_dict())

    breezeclip = tiny_breezeclip_config()
    breezeclip.save_pretrained(tmp_path / "breezeclip")
    loaded = AutoConfig.from_pretrained(tmp_path / "breezeclip")
    assert _without_path(loaded.to_dict()) == _without_path(breezeclip.to_dict())


def _without_path(config_dict: dict) -> dict:
    return {key: value for key, value in config_dict.items() if key != "_name_or_path"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vision_feature_mode": "grid"}, "vision_feature_mode"),
        ({"question_feature_mode": "cls"}, "question_feature_mode"),
        ({"image_token_id": -1}, "image_token_id"),
        ({"image_token_id": "32000"}, "image_token_id"),
        ({"image_seq_length": 5}, "image_seq_length=5"),
        ({"image_seq_length": 0}, "image_seq_length"),
        ({"qgcam_config": {"num_attention_heads": 5}}, "divisible"),
        ({"qgcam_config": {"gate_type": "head"}}, "gate_type"),
        ({"qgcam_config": {"question_pooling": "max"}}, "question_pooling"),
        ({"qgcam_config": {"num_attention_heads": 4, "dropout": 1.5}}, "dropout"),
        ({"qgcam_config": {"num_attention_heads": 0}}, "num_attention_heads"),
    ],
)
def test_bad_values_are_refused_by_strict_validation(kwargs, message):
    # `@strict` configs, as transformers' own: type and `Literal` checks per field, then `validate_architecture`.
    with pytest.raises(StrictDataclassError, match=message):
        tiny_bcqlm_config(**kwargs)


def test_image_token_must_not_be_the_pad_token():
    with pytest.raises(StrictDataclassError, match="pad token"):
        tiny_bcqlm_config(image_token_id=2)  # the tiny decoder's pad id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"projection_dim": 0}, "projection_dim"),
        ({"logit_scale_init_value": float("nan")}, "logit_scale_init_value"),
        ({"vision_config": {"model_type": "mobilevit", "image_size": 100}}, "multiple of 32"),
    ],
)
def test_bad_breezeclip_values_are_refused_by_strict_validation(kwargs, message):
    with pytest.raises(StrictDataclassError, match=message):
        BreezeCLIPConfig(**kwargs)
