"""Assemble a BcQLM checkpoint from pretrained parts, ready for stage-2 training.

    python conversion/compose_bcqlm.py --language_model meta-llama/Llama-3.2-1B --breezeclip path/to/breezeclip \
        --output_dir bcqlm-init

`--language_model` is a Llama-family causal LM folder or Hub id with its tokenizer; `--breezeclip` is a BreezeCLIP
folder (a `BreezeCLIPModel`, its image processor and its text tokenizer, as `examples/distill_breezeclip.py` writes
it). The visual adapter and Q-GCAM are freshly initialised. `<image>` is added to the decoder's tokenizer; it needs no
row in the embedding table (placeholders are replaced before the lookup), and the table is resized only when a padding
token has to be added. The output folder holds the model, its processor (both tokenizers) and the generation config.
"""

import argparse
import logging
import sys

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from modeling_bcqlm import (
    BcQLMConfig,
    BcQLMForConditionalGeneration,
    BcQLMImageProcessor,
    BcQLMProcessor,
    BreezeCLIPModel,
)
from modeling_bcqlm.configuration_bcqlm import QUESTION_FEATURE_MODES, VISION_FEATURE_MODES


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

    generation_config = language_model.generation_config
    generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=generation_config.eos_token_id
        if generation_config.eos_token_id is not None
        else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation_config
    return model.eval(), processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--language_model", required=True, help="A Llama-family causal LM folder or Hub id.")
    parser.add_argument("--breezeclip", required=True, help="A BreezeCLIP folder (model, image processor, tokenizer).")
    parser.add_argument("--output_dir", required=True, help="Where the BcQLM folder is written.")
    parser.add_argument("--qgcam_heads", type=int, default=8, help="Attention heads of Q-GCAM.")
    parser.add_argument("--gate_type", choices=("token", "channel"), default="token", help="Q-GCAM's gate.")
    parser.add_argument("--question_pooling", choices=("cls", "mean"), default="cls", help="Q-GCAM's question vector.")
    parser.add_argument("--vision_feature_mode", choices=VISION_FEATURE_MODES, default="patch")
    parser.add_argument("--question_feature_mode", choices=QUESTION_FEATURE_MODES, default="tokens")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the adapter's and Q-GCAM's initialisation.")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(message)s", level=logging.INFO)

    model, processor = compose_bcqlm(
        args.language_model,
        args.breezeclip,
        qgcam_config={
            "num_attention_heads": args.qgcam_heads,
            "gate_type": args.gate_type,
            "question_pooling": args.question_pooling,
        },
        vision_feature_mode=args.vision_feature_mode,
        question_feature_mode=args.question_feature_mode,
        seed=args.seed,
    )
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    logger.info(f"Saved BcQLM ({model.num_parameters():,} parameters) to {args.output_dir}.")


if __name__ == "__main__":
    main(sys.argv[1:])
