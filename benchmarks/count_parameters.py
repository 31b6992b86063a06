"""Per-part parameter counts of the default (paper) BcQLM, built on the meta device (no memory is allocated).

    python benchmarks/count_parameters.py
"""

import torch

from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration


PARTS = {
    "BreezeCLIP image tower (MobileViT-S)": "model.breezeclip.vision_model",
    "BreezeCLIP question encoder (MobileBERT)": "model.breezeclip.text_model",
    "BreezeCLIP projection heads": ("model.breezeclip.visual_projection", "model.breezeclip.text_projection"),
    "Visual adapter": "model.visual_adapter",
    "Q-GCAM": "model.qgcam",
    "Decoder (Llama-3.2-1B shape, tied LM head)": ("model.language_model", "lm_head"),
}


def count_parameters() -> dict[str, int]:
    with torch.device("meta"):
        model = BcQLMForConditionalGeneration(BcQLMConfig())
    counts = {}
    for part, prefixes in PARTS.items():
        prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
        params = {id(p): p for prefix in prefixes for p in model.get_submodule(prefix).parameters()}
        counts[part] = sum(p.numel() for p in params.values())
    counts["Total"] = sum(p.numel() for p in model.parameters())
    return counts


def main():
    print("| Part | Parameters |\n|---|---:|")
    for part, count in count_parameters().items():
        print(f"| {part} | {count / 1e6:,.1f} M |")


if __name__ == "__main__":
    main()
