"""BcQLM from pretrained parts: a Llama-family causal LM and a BreezeCLIP, ready for stage-2 training."""


import logging

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from ..configuration_bcqlm import BcQLMConfig
from ..image_processing_bcqlm import BcQLMImageProcessor
from ..modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel
from ..processing_bcqlm import BcQLMProcessor


logger = logging.getLogger(__name__)

# Llama-3's tokenizer has no padding token; this reserved one is the usual choice.
LLAMA3_PAD_TOKEN = "<|finetune_right_pad_id|>"


def set_padding_token(tokenizer, language_model) -> None:
    """Give the decoder tokenizer a padding token: Llama-3's reserved one, else a new `<|pad|>` (rows added if needed)."""
    if tokenizer.pad_token is not None:
        return
    if LLAMA3_PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = LLAMA3_PAD_TOKEN
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    if tokenizer.pad_token_id >= language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(tokenizer.pad_token_id + 1)
    logger.info(f"Padding token: {tokenizer.pad_token} ({tokenizer.pad_token_id}).")


def compose_bcqlm(
    language_model_path: str,
    breezeclip_path: str,
    qgcam_config: dict | None = None,
    vision_feature_mode: str = "patch",
    question_feature_mode: str = "tokens",
    image_token: str = "<image>",
    seed: int = 0,
) -> tuple[BcQLMForConditionalGeneration, BcQLMProcessor]:
    """The composed model (decoder and BreezeCLIP loaded, adapter and Q-GCAM initialised) and its processor."""
    language_model = AutoModelForCausalLM.from_pretrained(language_model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(language_model_path)
    breezeclip = BreezeCLIPModel.from_pretrained(breezeclip_path, dtype=torch.float32)
    question_tokenizer = AutoTokenizer.from_pretrained(breezeclip_path)
    image_processor = BcQLMImageProcessor.from_pretrained(breezeclip_path)
    return build_bcqlm(
        language_model,
        tokenizer,
        breezeclip,
        question_tokenizer,
        image_processor,
        qgcam_config=qgcam_config,
        vision_feature_mode=vision_feature_mode,
        question_feature_mode=question_feature_mode,
        image_token=image_token,
        seed=seed,
    )


def take_tensors(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Give `target` (parameters on the meta device) the parameters and persistent buffers of `source`, floating-point
    ones in fp32. Tensors already in fp32 are shared, not copied."""
    state_dict = source.state_dict()
    target.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}, assign=True
    )


def assemble_model(config: BcQLMConfig, language_model, breezeclip: BreezeCLIPModel, seed: int):
    """The model of `config` holding the parts' tensors, with a fresh adapter and Q-GCAM (seeded by `seed`)."""
    # Parameters on the meta device (buffers, such as the rotary frequencies, are real): the loaded parts' tensors are
    # taken as they are, so a 1B decoder is neither initialised nor held twice; only the adapter and Q-GCAM are new.
    with init_empty_weights(include_buffers=False):
        model = BcQLMForConditionalGeneration(config)
    take_tensors(model.model.breezeclip, breezeclip)
    take_tensors(model.model.language_model, language_model.model)
    if config.tie_word_embeddings:
        model.tie_weights()
    else:
        take_tensors(model.lm_head, language_model.lm_head)
    torch.manual_seed(seed)
    for new_module in (model.model.visual_adapter, model.model.qgcam):
        new_module.to_empty(device="cpu")
        new_module.apply(model._init_weights)
    return model


def build_bcqlm(
    language_model,
    tokenizer,
    breezeclip: BreezeCLIPModel,
    question_tokenizer,
    image_processor: BcQLMImageProcessor,
    qgcam_config: dict | None = None,
    vision_feature_mode: str = "patch",
    question_feature_mode: str = "tokens",
    normalize_features: bool = False,
    image_token: str = "<image>",
    seed: int = 0,
) -> tuple[BcQLMForConditionalGeneration, BcQLMProcessor]:
    """
    BcQLM from loaded parts: the causal LM and its tokenizer (a padding token is set), BreezeCLIP with its question
    tokenizer and image processor; the adapter and Q-GCAM are freshly initialised (seeded by `seed`). The parts' fp32
    tensors are taken, not copied: the model shares them with `language_model` and `breezeclip`.
    """
    if not hasattr(language_model, "model") or not hasattr(language_model, "lm_head"):
        raise ValueError(
            f"The language model is a {type(language_model).__name__}; BcQLM needs a Llama-family causal LM "
            "(a `model` decoder and an `lm_head`)."
        )
    set_padding_token(tokenizer, language_model)

    # The processor adds `<image>` to the tokenizer; its id is the model's image token id.
    image_size = breezeclip.config.vision_config.image_size
    config = BcQLMConfig(
        breezeclip_config=breezeclip.config.to_dict(),
        qgcam_config=qgcam_config,
        text_config=language_model.config.to_dict(),
        image_token_id=len(tokenizer)
        if image_token not in tokenizer.get_vocab()
        else tokenizer.convert_tokens_to_ids(image_token),
        vision_feature_mode=vision_feature_mode,
        question_feature_mode=question_feature_mode,
        normalize_features=normalize_features,
    )
    processor = BcQLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        question_tokenizer=question_tokenizer,
        image_seq_length=config.image_seq_length,
        image_token=image_token,
    )
    if processor.image_token_id != config.image_token_id:
        raise RuntimeError(f"`{image_token}` got id {processor.image_token_id}, expected {config.image_token_id}.")
    if image_processor.crop_size["height"] != image_size:
        raise ValueError(
            f"The BreezeCLIP image processor crops to {image_processor.crop_size} but its image tower takes {image_size} px."
        )

    model = assemble_model(config, language_model, breezeclip, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=language_model.generation_config.eos_token_id
        if language_model.generation_config.eos_token_id is not None
        else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval(), processor
