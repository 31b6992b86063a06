"""Per-part parameter counts of a BcQLM, built on the meta device (no memory is allocated): by default the paper's
model (`BcQLMConfig()`), with `--model` a saved one (e.g. `modeling_bcqlm.DEFAULT_MODEL`, the small shipped model).

    python -m benchmarks.count_parameters
    python -m benchmarks.count_parameters --model modeling_bcqlm/default_model
"""

import argparse

import torch

from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration


PARTS = {
    "BreezeCLIP image tower (MobileViT)": "model.breezeclip.vision_model",
    "BreezeCLIP question encoder (MobileBERT)": "model.breezeclip.text_model",
    "BreezeCLIP projection heads": ("model.breezeclip.visual_projection", "model.breezeclip.text_projection"),
    "Visual adapter": "model.visual_adapter",
    "Q-GCAM": "model.qgcam",
    "Decoder (Llama, tied LM head)": ("model.language_model", "lm_head"),
}


def count_parameters(config: BcQLMConfig | None = None) -> dict[str, int]:
    """Parameters per part of `PARTS` and in total of a BcQLM with `config` (default: the paper's), on the meta device."""
    with torch.device("meta"):
        model = BcQLMForConditionalGeneration(config or BcQLMConfig())
    counts = {}
    for part, prefixes in PARTS.items():
        # A part can span several submodules (some plain `nn.Module`s) and the decoder shares its embedding with the
        # tied LM head: their union, each parameter once, which `num_parameters` of one module cannot give.
        prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
        params = {id(p): p for prefix in prefixes for p in model.get_submodule(prefix).parameters()}
        counts[part] = sum(p.numel() for p in params.values())
    counts["Total"] = model.num_parameters()
    return counts


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A saved BcQLM folder (default: the paper's configuration).")
    args = parser.parse_args(argv)
    counts = count_parameters(BcQLMConfig.from_pretrained(args.model) if args.model else None)
    decimals = 1 if counts["Total"] >= 1e8 else 3
    print("| Part | Parameters |\n|---|---:|")
    for part, count in counts.items():
        print(f"| {part} | {count / 1e6:,.{decimals}f} M |")


if __name__ == "__main__":
    main()
