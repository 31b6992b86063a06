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

from modeling_bcqlm.configuration_bcqlm import QUESTION_FEATURE_MODES, VISION_FEATURE_MODES
from modeling_bcqlm.conversion import compose_bcqlm


logger = logging.getLogger(__name__)


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
