"""Stage 2: [`BcQLMForConditionalGeneration`] trained with the plain `Trainer`. [`freeze_for_stage2`] applies the
recipe, [`BcQLMVQACollator`] builds the prompts and masks the labels so that only the answer counts,
[`precompute_vision_features`] runs the frozen image tower once per image, [`add_decoder_lora`] adds LoRA adapters to
the decoder.
"""

import hashlib
import os
import types
import warnings

import numpy as np
import torch
from torch import nn

from ..data.images import to_rgb_images
from .fingerprints import model_fingerprint


STAGE2_DECODER_RECIPES = ("frozen", "adapters", "trained")
# The column of `precompute_vision_features`, which `BcQLMVQACollator` batches in place of the images.
VISION_FEATURES_COLUMN = "vision_features"


def _train_in_eval_mode(module: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a frozen module: it stays in eval mode."""
    return nn.Module.train(module, False)


def freeze_for_stage2(model, decoder: str = "frozen") -> None:
    """
    Stage-2 recipe on a [`BcQLMForConditionalGeneration`]: BreezeCLIP frozen and kept in eval mode under
    `model.train()` (so MobileViT's batch-norm statistics and the towers' dropout do not change); the visual adapter
    and Q-GCAM train. The decoder (with its head) is, by `decoder`:

    - `"frozen"`: frozen and kept in eval mode, the paper's recipe;
    - `"adapters"`: frozen but following `train()`, for adapters such as LoRA added to it, whose dropout must run;
    - `"trained"`: trained.

    A frozen module keeps eval mode through its own `train`, replaced on the instance (as BLIP-2's original code does
    for its frozen image encoder); [`unfreeze`] undoes it all.
    """
    if decoder not in STAGE2_DECODER_RECIPES:
        raise ValueError(f"`decoder` must be 'frozen', 'adapters' or 'trained', got {decoder!r}.")
    unfreeze(model)
    model.model.breezeclip.requires_grad_(False)
    for module in (model.model.language_model, model.lm_head):
        module.requires_grad_(decoder == "trained")
    frozen = [model.model.breezeclip] + ([model.model.language_model] if decoder == "frozen" else [])
    for module in frozen:
        module.train = types.MethodType(_train_in_eval_mode, module)
        module.train()


def unfreeze(model) -> None:
    """Undo [`freeze_for_stage2`]: every parameter trainable, every module following `model.train()` again."""
    model.requires_grad_(True)
    for module in model.modules():
        if "train" in vars(module):
            del module.train
    model.train(model.training)


class BcQLMVQACollator:
    """
    Makes stage-2 batches for [`BcQLMForConditionalGeneration`] from rows holding an image, a question and an answer.
    Each sequence is the processor's prompt (`<image>` expanded, `"Question: {question}\nAnswer:"`), then `" " +
    answer` and the end-of-text token; `labels` are -100 everywhere but on the answer's tokens and the end-of-text
    token, so only the answer counts. Sequences are right-padded (positions match generation's left-padded prompts,
    which take their positions from the attention mask). Each distinct image is in `pixel_values` once, with
    `image_indices` giving each sequence's row: several questions about one image run the image tower once. Rows
    holding `vision_features` ([`precompute_vision_features`]) give `vision_features` instead of `pixel_values`.

    Args:
        processor ([`BcQLMProcessor`]): the model's processor.
        image_column, question_column, answer_column (`str`): the row keys (`"image"`, `"question"`, `"answer"`).
        max_answer_tokens (`int`, *optional*): answers are truncated to this many tokens (before end-of-text).
        deduplicate_images (`bool`, *optional*, defaults to `True`): `False` gives one `pixel_values` row per sequence
            and no `image_indices`.
    """

    def __init__(
        self,
        processor,
        image_column: str = "image",
        question_column: str = "question",
        answer_column: str = "answer",
        max_answer_tokens: int | None = None,
        deduplicate_images: bool = True,
    ):
        tokenizer = processor.tokenizer
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError(
                "The decoder tokenizer needs an end-of-text and a padding token for training: set "
                "`tokenizer.eos_token` and `tokenizer.pad_token` (Llama-3 has no pad token: e.g. add '<|pad|>' or "
                "use a reserved special token)."
            )
        self.processor = processor
        self.image_column = image_column
        self.question_column = question_column
        self.answer_column = answer_column
        self.max_answer_tokens = max_answer_tokens
        self.deduplicate_images = deduplicate_images

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        image_column = VISION_FEATURES_COLUMN if VISION_FEATURES_COLUMN in rows[0] else self.image_column
        for key in (image_column, self.question_column, self.answer_column):
            if key not in rows[0]:
                raise KeyError(
                    f"The rows have no {key!r} column (they have {sorted(rows[0])}): set the collator's column names, "
                    "and keep the raw columns with `remove_unused_columns=False`."
                )
        tokenizer = self.processor.tokenizer
        questions = [row[self.question_column] for row in rows]
        if image_column == VISION_FEATURES_COLUMN:
            prompts, images = self._prompts_for_features([row[image_column] for row in rows], questions)
        else:
            prompts, images = self._prompts_for_images([row[image_column] for row in rows], questions)
        answers = tokenizer(
            [" " + str(row[self.answer_column]).strip() for row in rows], add_special_tokens=False
        )["input_ids"]
        answers = [ids[: self.max_answer_tokens] + [tokenizer.eos_token_id] for ids in answers]
        prompt_ids = [list(ids) for ids in prompts["input_ids"]]
        # The tokenizer pads on the left, for generation; training batches are right-padded (see the class docstring).
        batch = tokenizer.pad(
            {"input_ids": [prompt + answer for prompt, answer in zip(prompt_ids, answers)]},
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )
        # Labels padded with -100 on the same side, as `DataCollatorForSeq2Seq` pads them.
        width = batch["input_ids"].shape[1]
        labels = [[-100] * len(prompt) + answer for prompt, answer in zip(prompt_ids, answers)]
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([label + [-100] * (width - len(label)) for label in labels]),
            "question_input_ids": torch.tensor(prompts["question_input_ids"]),
            "question_attention_mask": torch.tensor(prompts["question_attention_mask"]),
            **images,
        }

    def _prompts_for_images(self, images: list, questions: list[str]) -> tuple[dict, dict[str, torch.Tensor]]:
        images, image_indices = _distinct_images(to_rgb_images(images))
        # The processor processes an image object passed for several prompts once.
        prompts = self.processor(
            images=[images[index] for index in image_indices], text=questions, padding=False, return_tensors=None
        )
        return prompts, self._images("pixel_values", prompts["pixel_values"], image_indices)

    def _prompts_for_features(self, features: list, questions: list[str]) -> tuple[dict, dict[str, torch.Tensor]]:
        """The processor's prompts for rows whose image is already `vision_features`."""
        prompts = self.processor(text=questions, vision_features=features, padding=False, return_tensors=None)
        distinct, image_indices = {}, []
        for feature in prompts["vision_features"]:
            image_indices.append(distinct.setdefault(feature.tobytes(), len(distinct)))
        return prompts, self._images(VISION_FEATURES_COLUMN, prompts["vision_features"], image_indices)

    def _images(self, key: str, images: list[np.ndarray], image_indices: list[int]) -> dict[str, torch.Tensor]:
        """`key` (`pixel_values` or `vision_features`) for each distinct image, and `image_indices`."""
        if not self.deduplicate_images:
            return {key: torch.as_tensor(np.array(images))}
        first_rows = [image_indices.index(index) for index in range(max(image_indices) + 1)]
        distinct = np.array([images[row] for row in first_rows])
        return {key: torch.as_tensor(distinct), "image_indices": torch.tensor(image_indices)}


def _distinct_images(images: list) -> tuple[list, list[int]]:
    """The distinct images of a list of RGB PIL images (equal pixels), and the index among them of each image."""
    indices, distinct, image_indices = {}, [], []
    for image in images:
        key = (image.size, image.tobytes())
        if key not in indices:
            indices[key] = len(distinct)
            distinct.append(image)
        image_indices.append(indices[key])
    return distinct, image_indices


@torch.no_grad()
def precompute_vision_features(
    dataset, model, processor, image_column: str = "image", batch_size: int = 256, cache_dir: str | None = None
):
    """
    Run BcQLM's frozen image tower once per distinct image of a `datasets.Dataset` (equal images in one map batch run
    once) and replace `image_column` by a `vision_features` column (`model.model.get_vision_features`,
    `(image_seq_length, projection_dim)` floats per row). [`BcQLMVQACollator`] then batches the features instead of
    processing images, and the model adapts them without running BreezeCLIP: for stage 2 with BreezeCLIP frozen only
    ([`freeze_for_stage2`]).
    Cached by `datasets` as [`~modeling_bcqlm.training.precompute_teacher_embeddings`] is, keyed by the dataset and by
    a hash of BreezeCLIP's weights, the model's configuration and the image processor.
    """
    if image_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no {image_column!r} column (it has {dataset.column_names}): pass the column of the "
            "images."
        )
    inner = model.model
    settings = (model.config.to_json_string(), image_column)
    fingerprint = f"{dataset._fingerprint}-{model_fingerprint(inner.breezeclip, processor.image_processor, *settings)}"
    fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    dtype = next(inner.breezeclip.parameters()).dtype

    def add_features(batch):
        images, image_indices = _distinct_images(to_rgb_images(batch[image_column]))
        pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        features = inner.get_vision_features(pixel_values.to(inner.device, dtype)).float().cpu().numpy()
        return {VISION_FEATURES_COLUMN: features[image_indices]}

    was_training = inner.breezeclip.training
    inner.breezeclip.eval()
    try:
        return dataset.map(
            add_features,
            batched=True,
            batch_size=batch_size,
            remove_columns=[image_column],
            new_fingerprint=fingerprint,
            cache_file_name=os.path.join(cache_dir, f"vision_features-{fingerprint}.arrow") if cache_dir else None,
            desc="Vision features",
        )
    finally:
        inner.breezeclip.train(was_training)


DECODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_decoder_lora(model, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.05, target_modules=None):
    """
    Wrap a [`BcQLMForConditionalGeneration`] in a `peft` LoRA model: LoRA on the decoder's linear layers only (Q-GCAM's
    projections share some names, so the targets are matched under `model.language_model`), with the visual adapter
    and Q-GCAM fully trained (`modules_to_save`), BreezeCLIP and the decoder's own weights frozen. After training,
    `merge_and_unload()` gives back a plain `BcQLMForConditionalGeneration`.
    """
    from peft import LoraConfig, get_peft_model

    freeze_for_stage2(model, decoder="adapters")
    targets = "|".join(target_modules or DECODER_LORA_TARGETS)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=rf".*\.language_model\..*\.({targets})",
        modules_to_save=["visual_adapter", "qgcam"],
    )
    with warnings.catch_warnings():
        # peft reads `is_gradient_checkpointing`, which transformers 5.24 deprecates: not the user's to act on.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


__all__ = ["BcQLMVQACollator", "add_decoder_lora", "freeze_for_stage2", "precompute_vision_features", "unfreeze"]
