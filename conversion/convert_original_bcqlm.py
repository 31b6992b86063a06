"""Convert checkpoints of the authors' released BcQLM code (github.com/thico0224/BcQLM) to a BcQLM folder.

    python conversion/convert_original_bcqlm.py \\
        --breezeclip_checkpoint checkpoints/distill_breezeclip/breezeclip_best.pth \\
        --text_backbone google/mobilebert-uncased \\
        --bcqlm_checkpoint checkpoints/bcqlm/bcqlm_epoch10.pth --language_model path/to/Llama-3.2-1B \\
        --output_dir bcqlm-converted

Inputs, as the released scripts write and read them:
- `--breezeclip_checkpoint`: stage 1's `breezeclip_best.pth`, `{"model": state_dict, "best_val", "epoch"}`: a timm
  MobileViT (`image_encoder.backbone.*`, xxs, xs or s), a transformers MobileBERT (`text_encoder.*`) and the two
  projection heads.
- `--text_backbone`: the MobileBERT folder or Hub id stage 1 started from (`text_backbone` of the released
  `distill.yaml`): its config and tokenizer; the weights come from the checkpoint.
- `--bcqlm_checkpoint`: stage 2's `bcqlm_epoch{N}.pth`, `{"adapter", "dgca", "llama", "loss", "epoch"}`.
- `--language_model`: the local LLaMA folder stage 2 started from: its config and tokenizer (the weights come from the
  checkpoint).

With both checkpoints the output is a BcQLM folder (model, processor, generation config). With the stage-1 checkpoint
alone it is a BreezeCLIP folder (model, image processor, question tokenizer), the input of `compose_bcqlm.py`.

The converted model reproduces the released code's shapes by default: one visual token (the pooled image embedding) and
the question embedding as Q-GCAM's only key, both L2-normalised, `"Question: {question}\\nAnswer:"` prompts, and the
released image transform (resize to 256, center crop 224, ImageNet mean and std). `--vision_feature_mode patch
--question_feature_mode tokens` gives the token-level form instead. Checkpoints are read with `torch.load(...,
weights_only=True)`; every tensor in them is either used exactly once or listed in a warning. Neither timm nor
torchvision is needed.
"""

import argparse
import logging
import sys

from modeling_bcqlm.configuration_bcqlm import QUESTION_FEATURE_MODES, VISION_FEATURE_MODES
from modeling_bcqlm.conversion import RELEASED_QGCAM_HEADS, convert_breezeclip, convert_original_bcqlm


logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--breezeclip_checkpoint", required=True, help="Stage 1's breezeclip_best.pth.")
    parser.add_argument("--text_backbone", required=True, help="The MobileBERT folder or Hub id stage 1 started from.")
    parser.add_argument(
        "--bcqlm_checkpoint", help="Stage 2's bcqlm_epoch{N}.pth; without it a BreezeCLIP folder is written."
    )
    parser.add_argument("--language_model", help="The LLaMA folder stage 2 started from (config and tokenizer).")
    parser.add_argument("--output_dir", required=True, help="Where the converted folder is written.")
    parser.add_argument(
        "--image_size", type=int, default=224, help="Image size stage 1 was trained at (released: 224)."
    )
    parser.add_argument("--qgcam_heads", type=int, default=RELEASED_QGCAM_HEADS, help="Q-GCAM's attention heads.")
    parser.add_argument("--vision_feature_mode", choices=VISION_FEATURE_MODES, default="pooled")
    parser.add_argument("--question_feature_mode", choices=QUESTION_FEATURE_MODES, default="pooled")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(message)s", level=logging.INFO)
    if (args.bcqlm_checkpoint is None) != (args.language_model is None):
        parser.error("--bcqlm_checkpoint and --language_model go together (the decoder's config and tokenizer).")

    try:
        if args.bcqlm_checkpoint is None:
            model, image_processor, question_tokenizer, unused = convert_breezeclip(
                args.breezeclip_checkpoint, args.text_backbone, args.image_size
            )
            saved = (model, image_processor, question_tokenizer)
        else:
            model, processor, unused = convert_original_bcqlm(
                args.breezeclip_checkpoint,
                args.text_backbone,
                args.bcqlm_checkpoint,
                args.language_model,
                image_size=args.image_size,
                qgcam_heads=args.qgcam_heads,
                vision_feature_mode=args.vision_feature_mode,
                question_feature_mode=args.question_feature_mode,
            )
            saved = (model, processor)
    except (OSError, ValueError) as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    if unused:
        logger.warning(f"{len(unused)} checkpoint tensors are not part of the converted model: " + ", ".join(unused))
    for part in saved:
        part.save_pretrained(args.output_dir)
    logger.info(
        f"Saved the converted {type(model).__name__} ({model.num_parameters():,} parameters) to {args.output_dir}."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
