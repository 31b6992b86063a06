"""Training BcQLM with the `transformers` `Trainer`: BreezeCLIP distillation (stage 1) and VQA training (stage 2)."""

from .distillation import (
    BreezeCLIPDistillationArguments,
    BreezeCLIPDistillationCollator,
    BreezeCLIPDistillationOutput,
    BreezeCLIPDistillationTrainer,
    BreezeCLIPForDistillation,
    affinity_distillation_loss,
    crop_distillation_loss,
    feature_distillation_loss,
    patch_distillation_loss,
    pool_patch_tokens,
    precompute_teacher_embeddings,
)
from .vqa import BcQLMVQACollator, add_decoder_lora, freeze_for_stage2, precompute_vision_features, unfreeze


__all__ = [
    "BcQLMVQACollator",
    "BreezeCLIPDistillationArguments",
    "BreezeCLIPDistillationCollator",
    "BreezeCLIPDistillationOutput",
    "BreezeCLIPDistillationTrainer",
    "BreezeCLIPForDistillation",
    "add_decoder_lora",
    "affinity_distillation_loss",
    "crop_distillation_loss",
    "feature_distillation_loss",
    "freeze_for_stage2",
    "patch_distillation_loss",
    "pool_patch_tokens",
    "precompute_teacher_embeddings",
    "precompute_vision_features",
    "unfreeze",
]
