"""The authors' released BcQLM checkpoints (github.com/thico0224/BcQLM) as BcQLM and BreezeCLIP models."""

import logging
import math
import pickle
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MobileViTConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from ..configuration_bcqlm import BreezeCLIPConfig
from ..image_processing_bcqlm import BcQLMImageProcessor
from ..modeling_bcqlm import BreezeCLIPModel
from .compose import build_bcqlm


logger = logging.getLogger(__name__)

# The released image transform: Resize(256) then CenterCrop(224) (scaled alike for other sizes), ImageNet statistics.
RELEASED_RESIZE_RATIO = 256 / 224
RELEASED_TEMPERATURE = 0.07
RELEASED_QGCAM_HEADS = 8
# transformers' MobileViT has a fixed layout: MobileNetV2 blocks per stage (stages 0-1), then a downsampling block and
# a MobileViT block whose transformer has this many layers (stages 2-4). timm's xxs, xs and s share it.
MOBILENET_BLOCKS = (1, 3)
TRANSFORMER_DEPTHS = (2, 4, 3)
BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class SourceTensors:
    """The tensors of one checkpoint part. Each may be taken once; `unused()` lists those never taken."""

    def __init__(self, tensors: dict, name: str):
        self.tensors = dict(tensors)
        self.name = name
        self.taken = set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise ValueError(f"{self.name} has no tensor {key!r}: it is not a checkpoint of the released BcQLM code.")
        if key in self.taken:
            raise RuntimeError(f"{self.name}: {key!r} was used twice.")
        self.taken.add(key)
        return self.tensors[key]

    def unused(self) -> list[str]:
        return [f"{self.name}: {key}" for key in self.tensors if key not in self.taken]


def load_released_checkpoint(path: str, required_keys: tuple[str, ...], what: str) -> dict:
    """A released checkpoint, read without unpickling arbitrary objects; a clear error for another kind of file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path!r} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path!r} holds objects other than tensors and plain containers, which are not unpickled "
            f"(weights_only=True): it is not a {what} of the released code ({err})."
        ) from err
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in required_keys):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path!r} is not a {what} of the released code: expected the keys {list(required_keys)}, got {found}."
        )
    return checkpoint


def _conv_norm(source: SourceTensors, timm_name: str, hf_name: str) -> dict[str, torch.Tensor]:
    """A timm `ConvNormAct` (`conv`, `bn`) as a transformers `MobileViTConvLayer` (`convolution`, `normalization`)."""
    tensors = {f"{hf_name}.convolution.weight": source.take(f"{timm_name}.conv.weight")}
    for tensor in BATCH_NORM_TENSORS:
        tensors[f"{hf_name}.normalization.{tensor}"] = source.take(f"{timm_name}.bn.{tensor}")
    return tensors


def _inverted_residual(source: SourceTensors, timm_name: str, hf_name: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for timm_conv, hf_conv in (("conv1_1x1", "expand_1x1"), ("conv2_kxk", "conv_3x3"), ("conv3_1x1", "reduce_1x1")):
        tensors.update(_conv_norm(source, f"{timm_name}.{timm_conv}", f"{hf_name}.{hf_conv}"))
    return tensors


def _weight_and_bias(source: SourceTensors, timm_name: str, hf_name: str) -> dict[str, torch.Tensor]:
    """A linear layer's or a LayerNorm's `weight` and `bias`, renamed."""
    return {f"{hf_name}.{tensor}": source.take(f"{timm_name}.{tensor}") for tensor in ("weight", "bias")}


def _transformer_layer(source: SourceTensors, timm_name: str, hf_name: str) -> dict[str, torch.Tensor]:
    tensors = {
        **_weight_and_bias(source, f"{timm_name}.norm1", f"{hf_name}.layernorm_before"),
        **_weight_and_bias(source, f"{timm_name}.attn.proj", f"{hf_name}.attention.output.dense"),
        **_weight_and_bias(source, f"{timm_name}.norm2", f"{hf_name}.layernorm_after"),
        **_weight_and_bias(source, f"{timm_name}.mlp.fc1", f"{hf_name}.intermediate.dense"),
        **_weight_and_bias(source, f"{timm_name}.mlp.fc2", f"{hf_name}.output.dense"),
    }
    # timm's fused qkv projection is [query; key; value] along the output dimension.
    for tensor in ("weight", "bias"):
        query, key, value = source.take(f"{timm_name}.attn.qkv.{tensor}").chunk(3, dim=0)
        for part, value_tensor in (("query", query), ("key", key), ("value", value)):
            tensors[f"{hf_name}.attention.attention.{part}.{tensor}"] = value_tensor
    return tensors


def _count_blocks(source: SourceTensors, prefix: str, marker: str) -> int:
    count = 0
    while f"{prefix}.{count}.{marker}" in source:
        count += 1
    return count


def convert_timm_mobilevit(source: SourceTensors, prefix: str, image_size: int) -> tuple[MobileViTConfig, dict]:
    """
    A timm MobileViT (v1: xxs, xs or s) under `prefix` as a transformers `MobileViTConfig` and `MobileViTModel` state
    dict. The sizes are read off the tensors; a backbone of another layout raises a `ValueError`.
    """
    if f"{prefix}stem.conv.weight" not in source or f"{prefix}stages.2.1.conv_1x1.weight" not in source:
        raise ValueError(
            f"{source.name}: the image encoder is not a timm MobileViT (no `{prefix}stem.conv.weight` or "
            f"`{prefix}stages.2.1.conv_1x1.weight`); only MobileViT v1 backbones (mobilevit_xxs, _xs, _s) convert."
        )
    mobilenet_blocks = tuple(_count_blocks(source, f"{prefix}stages.{i}", "conv1_1x1.conv.weight") for i in (0, 1))
    depths = tuple(_count_blocks(source, f"{prefix}stages.{i}.1.transformer", "norm1.weight") for i in (2, 3, 4))
    if mobilenet_blocks != MOBILENET_BLOCKS or depths != TRANSFORMER_DEPTHS:
        raise ValueError(
            f"{source.name}: the MobileViT has {mobilenet_blocks} MobileNetV2 blocks and transformer depths {depths}; "
            f"transformers' MobileViT (xxs, xs, s) has {MOBILENET_BLOCKS} and {TRANSFORMER_DEPTHS}."
        )

    def channels(key: str, dim: int = 0) -> int:
        return source.tensors[f"{prefix}{key}"].shape[dim]

    config = MobileViTConfig(
        image_size=image_size,
        hidden_sizes=[channels(f"stages.{i}.1.conv_1x1.weight") for i in (2, 3, 4)],
        neck_hidden_sizes=[
            channels("stem.conv.weight"),
            channels("stages.0.0.conv3_1x1.conv.weight"),
            channels("stages.1.2.conv3_1x1.conv.weight"),
            *[channels(f"stages.{i}.1.conv_fusion.conv.weight") for i in (2, 3, 4)],
            channels("final_conv.conv.weight"),
        ],
        expand_ratio=channels("stages.0.0.conv1_1x1.conv.weight") / channels("stages.0.0.conv1_1x1.conv.weight", 1),
        mlp_ratio=channels("stages.2.1.transformer.0.mlp.fc1.weight") / channels("stages.2.1.conv_1x1.weight"),
        conv_kernel_size=channels("stem.conv.weight", 2),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )

    tensors = _conv_norm(source, f"{prefix}stem", "conv_stem")
    for stage, num_blocks in enumerate(MOBILENET_BLOCKS):
        for block in range(num_blocks):
            tensors.update(
                _inverted_residual(source, f"{prefix}stages.{stage}.{block}", f"encoder.layer.{stage}.layer.{block}")
            )
    for stage, depth in zip((2, 3, 4), TRANSFORMER_DEPTHS):
        timm_stage, hf_stage = f"{prefix}stages.{stage}", f"encoder.layer.{stage}"
        tensors.update(_inverted_residual(source, f"{timm_stage}.0", f"{hf_stage}.downsampling_layer"))
        tensors.update(_conv_norm(source, f"{timm_stage}.1.conv_kxk", f"{hf_stage}.conv_kxk"))
        tensors[f"{hf_stage}.conv_1x1.convolution.weight"] = source.take(f"{timm_stage}.1.conv_1x1.weight")
        for layer in range(depth):
            tensors.update(
                _transformer_layer(
                    source, f"{timm_stage}.1.transformer.{layer}", f"{hf_stage}.transformer.layer.{layer}"
                )
            )
        tensors.update(_weight_and_bias(source, f"{timm_stage}.1.norm", f"{hf_stage}.layernorm"))
        tensors.update(_conv_norm(source, f"{timm_stage}.1.conv_proj", f"{hf_stage}.conv_projection"))
        tensors.update(_conv_norm(source, f"{timm_stage}.1.conv_fusion", f"{hf_stage}.fusion"))
    tensors.update(_conv_norm(source, f"{prefix}final_conv", "conv_1x1_exp"))
    return config, tensors


def load_checked(module: torch.nn.Module, tensors: dict, what: str, hint: str, assign: bool = False) -> None:
    """`load_state_dict(strict=True)` with an error that names what does not match and what to do."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{key}: {tuple(tensors[key].shape)} in the checkpoint, {tuple(expected[key].shape)} expected"
        for key in expected
        if key in tensors and tensors[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = (
            [f"missing {key}" for key in missing[:5]] + [f"unexpected {key}" for key in unexpected[:5]] + mismatched[:5]
        )
        raise ValueError(f"The {what} does not match {hint}: " + "; ".join(problems) + ".")
    module.load_state_dict(tensors, assign=assign)


def convert_breezeclip(
    checkpoint_path: str,
    text_backbone: str,
    image_size: int = 224,
    temperature: float = RELEASED_TEMPERATURE,
) -> tuple[BreezeCLIPModel, BcQLMImageProcessor, object, list[str]]:
    """
    Stage 1's checkpoint as a `BreezeCLIPModel`, with the released image transform as a `BcQLMImageProcessor` and the
    text backbone's tokenizer. Also returns the checkpoint tensors left unused (the MobileBERT pooler, which the
    released forward never calls).
    """
    checkpoint = load_released_checkpoint(
        checkpoint_path, ("model",), "stage-1 BreezeCLIP checkpoint (breezeclip_best.pth)"
    )
    source = SourceTensors(checkpoint["model"], Path(checkpoint_path).name)
    vision_config, vision_tensors = convert_timm_mobilevit(source, "image_encoder.backbone.", image_size)
    tensors = {f"vision_model.{key}": value for key, value in vision_tensors.items()}
    # The released forward reads MobileBERT's last [CLS] state, never its pooler: the pooler stays unused.
    text_keys = [
        key for key in source.tensors if key.startswith("text_encoder.") and not key.startswith("text_encoder.pooler.")
    ]
    tensors.update({f"text_model.{key[len('text_encoder.') :]}": source.take(key) for key in text_keys})
    tensors.update(_weight_and_bias(source, "image_proj", "visual_projection"))
    tensors.update(_weight_and_bias(source, "text_proj", "text_projection"))
    config = BreezeCLIPConfig(
        vision_config=vision_config.to_dict(),
        text_config=AutoConfig.from_pretrained(text_backbone).to_dict(),
        projection_dim=tensors["visual_projection.weight"].shape[0],
        logit_scale_init_value=math.log(1 / temperature),
    )

    model = BreezeCLIPModel(config).eval()
    tensors["logit_scale"] = model.logit_scale.detach().clone()  # the released code's fixed temperature
    load_checked(
        model,
        tensors,
        f"stage-1 checkpoint {checkpoint_path!r}",
        f"a BreezeCLIP built from --text_backbone {text_backbone!r}",
    )

    image_processor = BcQLMImageProcessor(
        size={"shortest_edge": round(image_size * RELEASED_RESIZE_RATIO)},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BILINEAR,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )
    question_tokenizer = AutoTokenizer.from_pretrained(text_backbone)
    return model, image_processor, question_tokenizer, source.unused()


def convert_qgcam(source: SourceTensors, hidden_size: int) -> dict[str, torch.Tensor]:
    """The released `DynamicGatedCrossAttention` tensors as `BcQLMQGCAM` ones (its text projections are identities
    when the shared size equals the decoder width)."""
    tensors = {}
    for released, ours in (("text_proj", "question_proj"), ("text_global_proj", "question_global_proj")):
        if f"{released}.weight" in source:
            tensors.update(_weight_and_bias(source, released, ours))
        else:
            tensors[f"{ours}.weight"] = torch.eye(hidden_size)
            tensors[f"{ours}.bias"] = torch.zeros(hidden_size)
    for tensor in ("weight", "bias"):
        query, key, value = source.take(f"cross_attn.in_proj_{tensor}").chunk(3, dim=0)
        tensors.update({f"q_proj.{tensor}": query, f"k_proj.{tensor}": key, f"v_proj.{tensor}": value})
    for released, ours in (
        ("cross_attn.out_proj", "out_proj"),
        ("gate_mlp.0", "gate_fc1"),
        ("gate_mlp.2", "gate_fc2"),
        ("norm", "norm"),
        ("ffn.0", "ffn_fc1"),
        ("ffn.2", "ffn_fc2"),
    ):
        tensors.update(_weight_and_bias(source, released, ours))
    return tensors


def convert_language_model(source: SourceTensors, language_model_path: str):
    """
    The checkpoint's `LlamaForCausalLM` state dict in a model built from the LLaMA folder's config. The model is built
    on the meta device and takes the checkpoint's tensors as they are (no copy, no random initialisation of 1B
    parameters); it only serves as the source of `build_bcqlm`.
    """
    config = AutoConfig.from_pretrained(language_model_path)
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    expected = language_model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    # Tensors the model does not hold (e.g. rotary frequencies saved by old transformers versions) stay unused.
    tensors = {
        key: source.take(key)
        for key in list(source.tensors)
        if key in expected and not (tied and key == "lm_head.weight")
    }
    if tied and "model.embed_tokens.weight" in tensors:
        if "lm_head.weight" in source and not torch.equal(
            source.take("lm_head.weight"), tensors["model.embed_tokens.weight"]
        ):
            raise ValueError(
                f"{source.name}: `lm_head.weight` differs from `model.embed_tokens.weight`, but the config of "
                f"{language_model_path!r} ties them; use the LLaMA folder stage 2 started from."
            )
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    load_checked(
        language_model,
        tensors,
        f"decoder in {source.name}",
        f"the config of --language_model {language_model_path!r}",
        assign=True,
    )
    return language_model.eval()


def convert_original_bcqlm(
    breezeclip_checkpoint: str,
    text_backbone: str,
    bcqlm_checkpoint: str,
    language_model_path: str,
    image_size: int = 224,
    qgcam_heads: int = RELEASED_QGCAM_HEADS,
    vision_feature_mode: str = "pooled",
    question_feature_mode: str = "pooled",
):
    """Both released checkpoints as a `BcQLMForConditionalGeneration` and its processor, and the unused tensors."""
    breezeclip, image_processor, question_tokenizer, unused = convert_breezeclip(
        breezeclip_checkpoint, text_backbone, image_size
    )
    checkpoint = load_released_checkpoint(
        bcqlm_checkpoint, ("adapter", "dgca", "llama"), "stage-2 BcQLM checkpoint (bcqlm_epoch{N}.pth)"
    )
    name = Path(bcqlm_checkpoint).name
    llama = SourceTensors(checkpoint["llama"], f"{name} [llama]")
    language_model = convert_language_model(llama, language_model_path)
    model, processor = build_bcqlm(
        language_model,
        AutoTokenizer.from_pretrained(language_model_path),
        breezeclip,
        question_tokenizer,
        image_processor,
        qgcam_config={"num_attention_heads": qgcam_heads, "gate_type": "token", "question_pooling": "cls"},
        vision_feature_mode=vision_feature_mode,
        question_feature_mode=question_feature_mode,
        normalize_features=True,
    )
    adapter = SourceTensors(checkpoint["adapter"], f"{name} [adapter]")
    load_checked(
        model.model.visual_adapter,
        {tensor: adapter.take(f"mapper.{tensor}") for tensor in ("weight", "bias")},
        f"adapter in {name}",
        "the decoder width and BreezeCLIP's shared size",
    )
    dgca = SourceTensors(checkpoint["dgca"], f"{name} [dgca]")
    load_checked(
        model.model.qgcam,
        convert_qgcam(dgca, model.config.text_config.hidden_size),
        f"Q-GCAM (dgca) in {name}",
        "the decoder width and BreezeCLIP's shared size",
    )
    return model, processor, unused + llama.unused() + adapter.unused() + dgca.unused()
