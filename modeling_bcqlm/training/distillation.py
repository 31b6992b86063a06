"""Stage 1: [`BreezeCLIPModel`] distilled from a frozen `transformers.CLIPModel` teacher with the `Trainer`
([`BreezeCLIPDistillationTrainer`] on a [`BreezeCLIPForDistillation`], batches made by
[`BreezeCLIPDistillationCollator`]).
"""

import hashlib
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from ..configuration_bcqlm import BreezeCLIPConfig
from ..data.images import cell_windows, object_windows, to_rgb_images
from ..modeling_bcqlm import BreezeCLIPModel, BreezeCLIPPreTrainedModel
from .fingerprints import model_fingerprint


FEATURE_DISTILLATION_LOSSES = ("mse", "cosine")


@dataclass
class BreezeCLIPDistillationOutput(ModelOutput):
    """
    Args:
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
            The student's scaled image-text cosine similarities.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The student's L2-normalised image embeddings.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The student's L2-normalised text embeddings.
        image_distillation_embeds (`torch.FloatTensor` of shape `(batch_size, teacher_projection_dim)`):
            The student's image embeddings in the teacher's space (through the learned projection when the sizes
            differ), L2-normalised.
        text_distillation_embeds (`torch.FloatTensor` of shape `(batch_size, teacher_projection_dim)`):
            Same for the text embeddings.
        patch_distillation_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches, teacher_patch_dim)`):
            The student's projected patch features (one per cell of its image tower's last feature map) mapped to the
            width of the teacher's patch tokens; only for a student built with `teacher_patch_dim`.
        crop_distillation_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches, teacher_projection_dim)`):
            The student's projected patch features in the teacher's embedding space (through the image distillation
            projection when the sizes differ), for the crop distillation loss.
    """

    logits_per_image: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_distillation_embeds: torch.FloatTensor | None = None
    text_distillation_embeds: torch.FloatTensor | None = None
    patch_distillation_embeds: torch.FloatTensor | None = None
    crop_distillation_embeds: torch.FloatTensor | None = None


class BreezeCLIPForDistillation(BreezeCLIPPreTrainedModel):
    """
    The stage-1 student: a [`BreezeCLIPModel`] (`self.breezeclip`) and, when the teacher's embedding size differs from
    `config.projection_dim`, learned linear maps of the student's embeddings into the teacher's space for the feature
    distillation loss; with `teacher_patch_dim`, a learned linear map of the student's patch features to the width of
    the teacher's patch tokens for the patch distillation loss. The teacher is not part of it, so it is never saved.
    Checkpoints load back with `BreezeCLIPModel.from_pretrained` (the maps are dropped);
    `model.breezeclip.save_pretrained` exports the student.

    Args:
        config ([`BreezeCLIPConfig`]): the student's configuration.
        teacher_projection_dim (`int`, *optional*): the teacher's embedding size; defaults to `config.projection_dim`.
        teacher_patch_dim (`int`, *optional*): the width of the teacher's patch tokens (its vision tower's hidden
            size); without it the student has no patch map and cannot be trained with patch distillation.
    """

    def __init__(
        self, config: BreezeCLIPConfig, teacher_projection_dim: int | None = None, teacher_patch_dim: int | None = None
    ):
        super().__init__(config)
        self.breezeclip = BreezeCLIPModel(config)
        self.teacher_projection_dim = teacher_projection_dim or config.projection_dim
        if self.teacher_projection_dim != config.projection_dim:
            self.image_distillation_projection = nn.Linear(config.projection_dim, self.teacher_projection_dim)
            self.text_distillation_projection = nn.Linear(config.projection_dim, self.teacher_projection_dim)
        else:
            self.image_distillation_projection = self.text_distillation_projection = None
        self.patch_distillation_projection = (
            nn.Linear(config.projection_dim, teacher_patch_dim) if teacher_patch_dim else None
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> BreezeCLIPDistillationOutput:
        """
        Args:
            input_ids: `(batch_size, sequence_length)` captions, from the student's tokenizer.
            pixel_values: `(batch_size, 3, height, width)` images, from the student's image processor.
        """
        outputs = self.breezeclip(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        image_embeds, text_embeds = outputs.image_embeds, outputs.text_embeds
        if self.image_distillation_projection is not None:
            image_distillation_embeds = F.normalize(
                self.image_distillation_projection(outputs.vision_model_output.pooler_output), dim=-1
            )
            text_distillation_embeds = F.normalize(
                self.text_distillation_projection(outputs.text_model_output.pooler_output), dim=-1
            )
        else:
            image_distillation_embeds, text_distillation_embeds = image_embeds, text_embeds
        patch_features = outputs.vision_model_output.last_hidden_state
        patch_distillation_embeds = None
        if self.patch_distillation_projection is not None:
            patch_distillation_embeds = self.patch_distillation_projection(patch_features)
        crop_distillation_embeds = patch_features
        if self.image_distillation_projection is not None:
            crop_distillation_embeds = self.image_distillation_projection(patch_features)
        return BreezeCLIPDistillationOutput(
            logits_per_image=outputs.logits_per_image,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_distillation_embeds=image_distillation_embeds,
            text_distillation_embeds=text_distillation_embeds,
            patch_distillation_embeds=patch_distillation_embeds,
            crop_distillation_embeds=crop_distillation_embeds,
        )


def feature_distillation_loss(student_embeds: torch.Tensor, teacher_embeds: torch.Tensor, kind: str = "mse"):
    """
    Distance between L2-normalised student and teacher embeddings `(batch_size, dim)`: the mean squared error over
    all elements (`"mse"`, the released code's loss) or the mean of `1 - cosine similarity` (`"cosine"`).
    """
    if kind == "mse":
        return F.mse_loss(student_embeds, teacher_embeds)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student_embeds, teacher_embeds, dim=-1)).mean()
    raise ValueError(f"`feature_distillation_loss` must be one of {FEATURE_DISTILLATION_LOSSES}, got {kind!r}.")


def pool_patch_tokens(patch_tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """
    Patch tokens `(batch_size, num_tokens, dim)` of a square grid, after any leading class or register tokens (those
    beyond the largest square are dropped), average-pooled to `grid` x `grid` cells: `(batch_size, grid * grid, dim)`,
    in row-major order as the student's feature map flattens.
    """
    side = math.isqrt(patch_tokens.shape[1])
    patches = patch_tokens[:, patch_tokens.shape[1] - side * side :]
    patches = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
    return F.adaptive_avg_pool2d(patches, grid).flatten(2).transpose(1, 2)


def patch_distillation_loss(
    student_patches: torch.Tensor, teacher_patches: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """
    Mean squared error between the student's patch features mapped to the teacher's width `(batch_size, num_patches,
    dim)` (a square grid) and the teacher's patch tokens `(batch_size, num_teacher_tokens, dim)`, average-pooled to the
    student's grid by [`pool_patch_tokens`] and standardised per dimension over the batch's cells (zero mean, unit
    variance), so that every dimension counts alike: low-variance ones too, where the teacher may keep what tells
    cells apart (a shape's colour, on the synthetic scenes), and which a per-token normalised distance learns last.
    """
    grid = math.isqrt(student_patches.shape[1])
    return _standardised_mse(student_patches, pool_patch_tokens(teacher_patches.to(student_patches.dtype), grid), eps)


def crop_distillation_loss(student_cells: torch.Tensor, teacher_crops: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """
    Mean squared error between the student's projected patch features `(batch_size, num_patches, dim)` and the
    teacher's image embeddings of the window around each cell `(batch_size, num_patches, dim)` (from
    [`precompute_teacher_embeddings`] with `crop_grid`), standardised per dimension over the batch's cells as in
    [`patch_distillation_loss`]. A CLIP teacher keeps what it knows of an object (its shape, say) in its pooled
    embedding rather than in its patch tokens; the pooled embedding of a window around each cell puts it cell by cell.
    """
    if student_cells.shape != teacher_crops.shape:
        raise ValueError(
            f"The teacher's window embeddings have shape {tuple(teacher_crops.shape)} and the student's cells "
            f"{tuple(student_cells.shape)}: precompute them with `crop_grid` set to the student's grid side."
        )
    return _standardised_mse(student_cells, teacher_crops.to(student_cells.dtype), eps)


def _standardised_mse(student: torch.Tensor, teacher: torch.Tensor, eps: float) -> torch.Tensor:
    """MSE between `student` and `teacher` `(batch_size, cells, dim)`, the teacher's standardised per dimension."""
    cells = teacher.flatten(0, 1)
    return F.mse_loss(student, (teacher - cells.mean(0)) / (cells.std(0) + eps))


def affinity_distillation_loss(
    student_image_embeds: torch.Tensor,
    student_text_embeds: torch.Tensor,
    teacher_image_embeds: torch.Tensor,
    teacher_text_embeds: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """
    KL(teacher || student) between the image-to-text similarity distributions (softmax over each row of
    `image_embeds @ text_embeds.T / temperature`) and between the text-to-image ones (over each column), averaged over
    the batch and over the two directions. All embeddings are L2-normalised, `(batch_size, dim)`.
    """
    student_logits = student_image_embeds @ student_text_embeds.t() / temperature
    teacher_logits = teacher_image_embeds @ teacher_text_embeds.t() / temperature
    image_to_text = F.kl_div(
        F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1), reduction="batchmean", log_target=True
    )
    text_to_image = F.kl_div(
        F.log_softmax(student_logits.t(), dim=1),
        F.log_softmax(teacher_logits.t(), dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (image_to_text + text_to_image) / 2


@dataclass
class BreezeCLIPDistillationArguments(TrainingArguments):
    """`TrainingArguments` with the weights of the stage-1 losses. The defaults are the paper's (alpha = beta = 1)."""

    contrastive_weight: float = field(
        default=1.0, metadata={"help": "alpha: weight of the student's symmetric InfoNCE loss."}
    )
    feature_distillation_weight: float = field(
        default=1.0,
        metadata={"help": "beta: weight of the distance to the teacher's normalised image and text embeddings."},
    )
    feature_distillation_loss: str = field(
        default="mse", metadata={"help": "Distance of the feature distillation: 'mse' (the paper's) or 'cosine'."}
    )
    affinity_distillation_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the KL between the teacher's and student's image-text similarity distributions."},
    )
    affinity_temperature: float = field(
        default=0.07, metadata={"help": "Temperature of the similarity distributions of the affinity loss."}
    )
    patch_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distance between the student's patch features and the teacher's patch tokens "
            "pooled to the student's grid: what teaches each cell of the image tower its own content (colour, shape)."
        },
    )
    crop_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distance between the student's patch features and the teacher's image embeddings "
            "of a window around each cell (precomputed): what the teacher knows of each object, cell by cell."
        },
    )
    crop_window: float = field(
        default=0.5, metadata={"help": "Side of the crop distillation's windows, as a fraction of the image side."}
    )
    # The collator reads the raw image and caption columns.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the raw columns: the collator makes the student's and teacher's inputs."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.feature_distillation_loss not in FEATURE_DISTILLATION_LOSSES:
            raise ValueError(
                f"`feature_distillation_loss` must be one of {FEATURE_DISTILLATION_LOSSES}, got "
                f"{self.feature_distillation_loss!r}."
            )
        if self.affinity_temperature <= 0:
            raise ValueError(f"`affinity_temperature` must be positive, got {self.affinity_temperature}.")
        if not 0 < self.crop_window <= 1:
            raise ValueError(f"`crop_window` is a fraction of the image side, in (0, 1]; got {self.crop_window}.")


class BreezeCLIPDistillationTrainer(Trainer):
    """
    Distils a [`BreezeCLIPForDistillation`] student from a frozen `CLIPModel` teacher:

        loss = alpha * InfoNCE(student) + beta * (D(image) + D(text)) + gamma * affinity KL + delta * P(patches)
               + epsilon * C(cells)

    with D the feature distance of `args.feature_distillation_loss` between the student's and the teacher's normalised
    embeddings, P the [`patch_distillation_loss`] (`args.patch_distillation_weight`; the student needs
    `teacher_patch_dim`) and C the [`crop_distillation_loss`] (`args.crop_distillation_weight`). Each batch carries the
    teacher's inputs (`teacher_pixel_values`, `teacher_input_ids`, `teacher_attention_mask`, from
    [`BreezeCLIPDistillationCollator`]) or its precomputed embeddings (`teacher_image_embeds`, `teacher_text_embeds`,
    for P `teacher_patch_embeds` and for C `teacher_crop_embeds`, which only precomputation gives, from
    [`precompute_teacher_embeddings`]); with the latter no teacher is needed. The teacher stays on the trainer, not in
    the model, so checkpoints never hold it. The loss terms are logged beside the loss.

    Args:
        teacher (`CLIPModel`, *optional*): the teacher; frozen and put in eval mode here.
        All other arguments are the `Trainer`'s.
    """

    loss_is_scaled_for_ga = False  # `compute_loss` returns a per-batch mean

    def __init__(self, model=None, args: BreezeCLIPDistillationArguments | None = None, teacher=None, **kwargs):
        if args is not None and not isinstance(args, BreezeCLIPDistillationArguments):
            raise TypeError(
                f"`args` must be `BreezeCLIPDistillationArguments` (it holds the loss weights), got {type(args).__name__}."
            )
        super().__init__(model=model, args=args, **kwargs)
        if teacher is not None:
            teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.teacher = teacher
        self.can_return_loss = True  # evaluation computes the loss although there are no labels
        self._logged_loss_terms = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_inputs = {key: inputs.pop(key) for key in list(inputs) if key.startswith("teacher_")}
        outputs = model(**inputs)
        loss_terms = self._loss_terms(outputs, teacher_inputs)
        args = self.args
        weights = {
            "contrastive_loss": args.contrastive_weight,
            "feature_distillation_loss": args.feature_distillation_weight,
            "affinity_distillation_loss": args.affinity_distillation_weight,
            "patch_distillation_loss": args.patch_distillation_weight,
            "crop_distillation_loss": args.crop_distillation_weight,
        }
        if not loss_terms:
            raise ValueError("Every loss weight is zero: set a contrastive, feature, affinity, patch or crop weight.")
        loss = sum(weights[name] * value for name, value in loss_terms.items())

        if model.training:
            for name, value in loss_terms.items():
                self._logged_loss_terms[name].append(value.detach())
        return (loss, outputs) if return_outputs else loss

    def _loss_terms(self, outputs: BreezeCLIPDistillationOutput, teacher_inputs: dict) -> dict[str, torch.Tensor]:
        """The unweighted loss terms whose weights are not zero, by name."""
        teacher_image_embeds, teacher_text_embeds, teacher_patch_embeds = self._teacher_embeddings(teacher_inputs)
        args = self.args
        loss_terms = {}
        if args.contrastive_weight:
            loss_terms["contrastive_loss"] = image_text_contrastive_loss(outputs.logits_per_image)
        if args.feature_distillation_weight:
            teacher_dim, student_dim = teacher_image_embeds.shape[-1], outputs.image_distillation_embeds.shape[-1]
            if teacher_dim != student_dim:
                raise ValueError(
                    f"The teacher's embeddings have {teacher_dim} dimensions and the student's {student_dim}: build the "
                    f"student with `BreezeCLIPForDistillation(config, teacher_projection_dim={teacher_dim})`."
                )
            loss_terms["feature_distillation_loss"] = feature_distillation_loss(
                outputs.image_distillation_embeds, teacher_image_embeds, args.feature_distillation_loss
            ) + feature_distillation_loss(
                outputs.text_distillation_embeds, teacher_text_embeds, args.feature_distillation_loss
            )
        if args.affinity_distillation_weight:
            loss_terms["affinity_distillation_loss"] = affinity_distillation_loss(
                outputs.image_embeds,
                outputs.text_embeds,
                teacher_image_embeds,
                teacher_text_embeds,
                args.affinity_temperature,
            )
        if args.patch_distillation_weight:
            _check_patch_distillation(outputs.patch_distillation_embeds, teacher_patch_embeds)
            loss_terms["patch_distillation_loss"] = patch_distillation_loss(
                outputs.patch_distillation_embeds, teacher_patch_embeds
            )
        if args.crop_distillation_weight:
            if "teacher_crop_embeds" not in teacher_inputs:
                raise ValueError(
                    "Crop distillation needs the teacher's embeddings of each cell's window: precompute them with "
                    "`precompute_teacher_embeddings(..., crop_grid=<the student's grid side>)` (examples/"
                    "distill_breezeclip.py does so with --precompute_teacher_embeddings)."
                )
            loss_terms["crop_distillation_loss"] = crop_distillation_loss(
                outputs.crop_distillation_embeds, teacher_inputs["teacher_crop_embeds"].float()
            )
        return loss_terms

    @torch.no_grad()
    def _teacher_embeddings(self, teacher_inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        The teacher's L2-normalised image and text embeddings `(batch_size, teacher_dim)` and its patch tokens
        `(batch_size, num_tokens, teacher_patch_dim)` (None when precomputed without them).
        """
        if "teacher_image_embeds" in teacher_inputs:
            image_embeds, text_embeds = teacher_inputs["teacher_image_embeds"], teacher_inputs["teacher_text_embeds"]
            patch_embeds = teacher_inputs.get("teacher_patch_embeds")
        else:
            if self.teacher is None:
                raise ValueError(
                    "The batch holds the teacher's inputs but the trainer has no teacher: pass `teacher=` to the "
                    "trainer, or precompute the teacher's embeddings with `precompute_teacher_embeddings`."
                )
            if "teacher_pixel_values" not in teacher_inputs:
                raise ValueError(
                    "The batch holds neither the teacher's inputs nor its embeddings: build batches with "
                    "`BreezeCLIPDistillationCollator` (with `teacher_processor`, or on a dataset made by "
                    "`precompute_teacher_embeddings`)."
                )
            image_embeds, text_embeds, patch_embeds = _teacher_forward(
                self.teacher,
                teacher_inputs["teacher_pixel_values"],
                teacher_inputs["teacher_input_ids"],
                teacher_inputs.get("teacher_attention_mask"),
            )
        patch_embeds = None if patch_embeds is None else patch_embeds.float()
        return F.normalize(image_embeds.float(), dim=-1), F.normalize(text_embeds.float(), dim=-1), patch_embeds

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log to training logs."""
        if "loss" in logs and self._logged_loss_terms:
            for name, values in self._logged_loss_terms.items():
                mean = self.accelerator.gather(torch.stack(values).mean()[None]).mean()
                logs[name] = round(mean.item(), 4)
            self._logged_loss_terms.clear()
        super().log(logs, start_time)


def _check_patch_distillation(student_patches: torch.Tensor | None, teacher_patches: torch.Tensor | None) -> None:
    """Errors that say how to build the student or the batches when patch distillation lacks its inputs."""
    if student_patches is None:
        raise ValueError(
            "Patch distillation needs the student's patch map: build it with `BreezeCLIPForDistillation(config, "
            "teacher_patch_dim=teacher.config.vision_config.hidden_size)`."
        )
    if teacher_patches is None:
        raise ValueError(
            "Patch distillation needs the teacher's patch tokens: pass `patch_grid` to "
            "`precompute_teacher_embeddings`, or give the trainer the teacher itself."
        )
    if student_patches.shape[-1] != teacher_patches.shape[-1]:
        raise ValueError(
            f"The teacher's patch tokens have {teacher_patches.shape[-1]} dimensions and the student's patch map "
            f"{student_patches.shape[-1]}: build the student with `teacher_patch_dim={teacher_patches.shape[-1]}`."
        )


def _teacher_forward(teacher, pixel_values, input_ids, attention_mask=None) -> tuple[torch.Tensor, ...]:
    """
    A `CLIPModel`'s projected image and text embeddings `(batch_size, projection_dim)`, unnormalised, and the last
    hidden states of its vision tower `(batch_size, 1 + num_patches, hidden_size)` (class token first).
    """
    image_outputs = teacher.get_image_features(pixel_values=pixel_values.to(teacher.dtype))
    text_embeds = teacher.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return image_outputs.pooler_output, text_embeds, image_outputs.last_hidden_state


class BreezeCLIPDistillationCollator:
    """
    Makes stage-1 batches from rows holding an image (PIL image or path) and a caption: the student's inputs
    (`pixel_values`, `input_ids`, `attention_mask`) with the student's image processor and tokenizer, and the
    teacher's (`teacher_pixel_values`, `teacher_input_ids`, `teacher_attention_mask`) from the same raw image and
    caption with the teacher's processor. Rows that hold precomputed `teacher_image_embeds`/`teacher_text_embeds` (and
    `teacher_patch_embeds`) give those instead, and the teacher's processor is not needed.

    Args:
        image_processor: the student's image processor (a [`BcQLMImageProcessor`]).
        tokenizer: the student's text tokenizer (MobileBERT's).
        teacher_processor (*optional*): the teacher's `CLIPProcessor`.
        image_column (`str`, defaults to `"image"`), text_column (`str`, defaults to `"caption"`): the row keys.
    """

    def __init__(self, image_processor, tokenizer, teacher_processor=None, image_column="image", text_column="caption"):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.teacher_processor = teacher_processor
        self.image_column = image_column
        self.text_column = text_column

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        for key in (self.image_column, self.text_column):
            if key not in rows[0]:
                raise KeyError(
                    f"The rows have no {key!r} column (they have {sorted(rows[0])}): set `image_column`/`text_column`, "
                    "and keep the raw columns with `remove_unused_columns=False`."
                )
        images = to_rgb_images([row[self.image_column] for row in rows])
        captions = [row[self.text_column] for row in rows]
        text = self.tokenizer(
            captions, padding=True, truncation=True, return_token_type_ids=False, return_tensors="pt"
        )
        batch = {
            "pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
        }
        if "teacher_image_embeds" in rows[0]:
            for key in ("teacher_image_embeds", "teacher_text_embeds", "teacher_patch_embeds", "teacher_crop_embeds"):
                if key in rows[0]:
                    batch[key] = torch.tensor(np.array([row[key] for row in rows]), dtype=torch.float32)
        elif self.teacher_processor is not None:
            teacher = self.teacher_processor(
                images=images, text=captions, padding=True, truncation=True, return_tensors="pt"
            )
            batch["teacher_pixel_values"] = teacher["pixel_values"]
            batch["teacher_input_ids"] = teacher["input_ids"]
            batch["teacher_attention_mask"] = teacher["attention_mask"]
        else:
            raise ValueError(
                "The rows hold no precomputed teacher embeddings and no `teacher_processor` was given: pass the "
                "teacher's processor, or run `precompute_teacher_embeddings` on the dataset first."
            )
        return batch


@torch.no_grad()
def _window_embeddings(teacher, teacher_processor, images: list, grid: int, window: float, boxes=None) -> np.ndarray:
    """
    The teacher's projected image embeddings of each image's `cell_windows`, or with `boxes` (a list of boxes per
    image) its `object_windows`: `(num_images, grid * grid, dim)`.
    """
    if boxes is None:
        windows = [crop for image in images for crop in cell_windows(image, grid, window)]
    else:
        windows = [crop for image, box in zip(images, boxes) for crop in object_windows(image, box, grid, window)]
    pixel_values = teacher_processor(images=windows, return_tensors="pt")["pixel_values"].to(teacher.device)
    embeds = teacher.get_image_features(pixel_values=pixel_values.to(teacher.dtype)).pooler_output
    return embeds.float().view(len(images), grid * grid, -1).cpu().numpy()


def precompute_teacher_embeddings(
    dataset,
    teacher,
    teacher_processor,
    image_column: str = "image",
    text_column: str = "caption",
    batch_size: int = 64,
    cache_dir: str | None = None,
    patch_grid: int | None = None,
    crop_grid: int | None = None,
    crop_window: float = 0.5,
    box_column: str | None = None,
):
    """
    Run the teacher once over a `datasets.Dataset` and add its projected embeddings as the columns
    `teacher_image_embeds` and `teacher_text_embeds` (lists of floats, `teacher_dim` long), so that distillation does
    not run the teacher at every step. With `patch_grid` (the student's grid side), the teacher's patch tokens
    average-pooled to `patch_grid` x `patch_grid` cells are added too, as `teacher_patch_embeds` (`patch_grid ** 2`
    lists of `teacher_patch_dim` floats), for the patch distillation loss. With `crop_grid`, the teacher's projected
    image embedding of a window around each cell of a `crop_grid` x `crop_grid` grid (`crop_window` times the image's
    side; `modeling_bcqlm.data.images.cell_windows`) is added as `teacher_crop_embeds` (`crop_grid ** 2` lists of
    `teacher_dim` floats), for the crop distillation loss; with `box_column` (each image's object boxes `(x0, y0, x1,
    y1)` in pixels), the window of each cell is centred on the object whose box is centred in it and shows that object
    alone, and cells without one get a blank window (`modeling_bcqlm.data.images.object_windows`): each object's
    embedding on one cell, its neighbours' on none. The result is cached by `datasets` (in
    the dataset's cache folder when it was loaded from files, or in `cache_dir`), keyed by the dataset and by a hash
    of the teacher's weights, configuration and processor: a second call with the same teacher and data loads it
    instead of recomputing. Pass `cache_dir` to cache an in-memory dataset's embeddings (the file name holds that
    key).
    """
    if box_column is not None and box_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no {box_column!r} column of object boxes (it has {dataset.column_names}): load the "
            "caption file with `box_column`, or leave `box_column` unset for windows around every cell."
        )
    fingerprint = hashlib.sha256(
        f"{dataset._fingerprint}|{model_fingerprint(teacher, teacher_processor, image_column, text_column)}|"
        f"{patch_grid}|{crop_grid}|{crop_window}|{box_column}".encode()
    ).hexdigest()[:16]
    teacher = teacher.eval()

    def embed(batch):
        images = to_rgb_images(batch[image_column])
        inputs = teacher_processor(
            images=images,
            text=batch[text_column],
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(teacher.device)
        with torch.no_grad():
            image_embeds, text_embeds, patch_embeds = _teacher_forward(
                teacher, inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask")
            )
        embeddings = {
            "teacher_image_embeds": image_embeds.float().cpu().numpy(),
            "teacher_text_embeds": text_embeds.float().cpu().numpy(),
        }
        if patch_grid:
            embeddings["teacher_patch_embeds"] = pool_patch_tokens(patch_embeds.float(), patch_grid).cpu().numpy()
        if crop_grid:
            boxes = batch[box_column] if box_column else None
            embeddings["teacher_crop_embeds"] = _window_embeddings(
                teacher, teacher_processor, images, crop_grid, crop_window, boxes
            )
        return embeddings

    return dataset.map(
        embed,
        batched=True,
        batch_size=batch_size,
        new_fingerprint=fingerprint,
        cache_file_name=os.path.join(cache_dir, f"teacher_embeddings-{fingerprint}.arrow") if cache_dir else None,
        desc="Teacher embeddings",
    )


__all__ = [
    "BreezeCLIPDistillationArguments",
    "BreezeCLIPDistillationCollator",
    "BreezeCLIPDistillationOutput",
    "BreezeCLIPDistillationTrainer",
    "BreezeCLIPForDistillation",
    "affinity_distillation_loss",
    "crop_distillation_loss",
    "feature_distillation_loss",
    "patch_distillation_loss",
    "pool_patch_tokens",
    "precompute_teacher_embeddings",
]
