"""Stage 1: distil BreezeCLIP (MobileViT + MobileBERT) from a CLIP teacher with the `transformers` `Trainer`.

    python examples/distill_breezeclip.py \
        --teacher_name_or_path openai/clip-vit-base-patch32 \
        --student_tokenizer google/mobilebert-uncased \
        --train_file captions.jsonl --image_root images/ \
        --output_dir breezeclip --per_device_train_batch_size 64 --num_train_epochs 10 --learning_rate 1e-4

The data file (`.jsonl`, `.csv` or `.json`) holds an image path and a caption per row. The student starts from
`--student_name_or_path` (a BreezeCLIP folder) or is built fresh from `--student_config` (default: the paper's
BreezeCLIP). `--patch_distillation_weight` adds the distance between each cell of the student's image features and the
teacher's patch tokens pooled to it; `--crop_distillation_weight` the distance to the teacher's image embedding of a
window around the cell (`--crop_window` of the image side; needs `--precompute_teacher_embeddings`), or with
`--box_column` (each row's object boxes) of the object centred in the cell, shown alone. The output
folder holds the student (`BreezeCLIPModel`), its image processor and
tokenizer, the checkpoints (student only; never the teacher) and `all_results.json`. Runs under `accelerate launch` as
well.
"""

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoModel, AutoProcessor, AutoTokenizer, HfArgumentParser, set_seed

from modeling_bcqlm import BcQLMImageProcessor, BreezeCLIPConfig
from modeling_bcqlm.data.loaders import load_caption_file
from modeling_bcqlm.training import (
    BreezeCLIPDistillationArguments,
    BreezeCLIPDistillationCollator,
    BreezeCLIPDistillationTrainer,
    BreezeCLIPForDistillation,
    precompute_teacher_embeddings,
)
from modeling_bcqlm.training.launch import run_script


logger = logging.getLogger(__name__)


@dataclass
class DistillationScriptArguments:
    teacher_name_or_path: str = field(metadata={"help": "The teacher: a transformers `CLIPModel` folder or Hub id."})
    train_file: str = field(metadata={"help": "Image-caption pairs: a .jsonl, .csv or .json file."})
    validation_file: str | None = field(default=None, metadata={"help": "Held-out image-caption pairs."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the image paths are relative to (default: each data file's folder)."}
    )
    image_column: str = field(default="image", metadata={"help": "Column of the image paths."})
    caption_column: str = field(default="caption", metadata={"help": "Column of the captions."})
    box_column: str | None = field(
        default=None,
        metadata={
            "help": "Column of each image's object boxes ([[x0, y0, x1, y1], ...] in pixels): crop distillation then "
            "shows the teacher each object alone, on the cell holding its centre, and a blank window on the others."
        },
    )
    on_missing_image: str = field(
        default="raise", metadata={"help": "'raise' or 'skip' rows whose image is missing or unreadable."}
    )
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "A BreezeCLIP folder (weights, image processor, tokenizer) to start from."}
    )
    student_config: str | None = field(
        default=None, metadata={"help": "JSON file of a `BreezeCLIPConfig` for a fresh student (default: the paper's)."}
    )
    student_tokenizer: str | None = field(
        default=None, metadata={"help": "Text tokenizer of a fresh student (MobileBERT's, e.g. google/mobilebert-uncased)."}
    )
    precompute_teacher_embeddings: bool = field(
        default=False, metadata={"help": "Run the teacher once over the data (cached) instead of at every step."}
    )
    teacher_embeddings_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache of the precomputed embeddings (default: <output_dir>/teacher_embeddings)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N training pairs only."})


def load_student(script_args: DistillationScriptArguments, teacher_projection_dim: int, teacher_patch_dim: int | None):
    """The student model (with a patch map to `teacher_patch_dim` when given), its image processor and its tokenizer."""
    if script_args.student_name_or_path is not None:
        model = BreezeCLIPForDistillation.from_pretrained(
            script_args.student_name_or_path,
            teacher_projection_dim=teacher_projection_dim,
            teacher_patch_dim=teacher_patch_dim,
        )
        source = script_args.student_name_or_path
        image_processor = BcQLMImageProcessor.from_pretrained(source)
    else:
        if script_args.student_tokenizer is None:
            raise ValueError(
                "A fresh student needs a text tokenizer: pass --student_tokenizer (e.g. google/mobilebert-uncased), "
                "or start from a BreezeCLIP folder with --student_name_or_path."
            )
        config = (
            BreezeCLIPConfig.from_json_file(script_args.student_config) if script_args.student_config else BreezeCLIPConfig()
        )
        model = BreezeCLIPForDistillation(
            config, teacher_projection_dim=teacher_projection_dim, teacher_patch_dim=teacher_patch_dim
        )
        source = script_args.student_tokenizer
        size = config.vision_config.image_size
        image_processor = BcQLMImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = AutoTokenizer.from_pretrained(script_args.student_tokenizer or source)
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise ValueError(
            f"The student tokenizer has {len(tokenizer)} tokens but the text tower's vocabulary is "
            f"{model.config.text_config.vocab_size}: use the tokenizer the student was built for."
        )
    return model, image_processor, tokenizer


@torch.no_grad()
def patch_grid(model: BreezeCLIPForDistillation) -> int:
    """The side of the student's square grid of patch features, from one blank image through its tower in eval mode."""
    config, training = model.config.vision_config, model.training
    blank = torch.zeros(1, config.num_channels, config.image_size, config.image_size)
    features = model.eval().breezeclip.get_image_features(blank)
    model.train(training)
    return round(features.last_hidden_state.shape[1] ** 0.5)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((DistillationScriptArguments, BreezeCLIPDistillationArguments))
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    teacher = AutoModel.from_pretrained(script_args.teacher_name_or_path)
    teacher_processor = AutoProcessor.from_pretrained(script_args.teacher_name_or_path)
    distil_patches = training_args.patch_distillation_weight > 0
    distil_crops = training_args.crop_distillation_weight > 0
    if distil_crops and not script_args.precompute_teacher_embeddings:
        raise ValueError(
            "--crop_distillation_weight needs --precompute_teacher_embeddings: the teacher embeds a window around "
            "every cell of every image once, before training."
        )
    if script_args.box_column and not distil_crops:
        raise ValueError("--box_column places the windows of crop distillation: set --crop_distillation_weight too.")
    teacher_patch_dim = teacher.config.vision_config.hidden_size if distil_patches else None
    model, image_processor, tokenizer = load_student(script_args, teacher.config.projection_dim, teacher_patch_dim)

    def load(path):
        return load_caption_file(
            path,
            script_args.image_root,
            script_args.image_column,
            script_args.caption_column,
            on_missing_image=script_args.on_missing_image,
            box_column=script_args.box_column,
        )

    train_dataset = load(script_args.train_file)
    if script_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    eval_dataset = load(script_args.validation_file) if script_args.validation_file else None

    results = {}
    if script_args.precompute_teacher_embeddings:
        cache_dir = script_args.teacher_embeddings_cache_dir or os.path.join(training_args.output_dir, "teacher_embeddings")
        os.makedirs(cache_dir, exist_ok=True)
        teacher.to(training_args.device)
        start = time.perf_counter()
        # The main process computes and caches; the others then read its cache.
        with training_args.main_process_first(desc="teacher embeddings"):
            train_dataset, eval_dataset = [
                precompute_teacher_embeddings(
                    dataset,
                    teacher,
                    teacher_processor,
                    batch_size=training_args.per_device_eval_batch_size,
                    cache_dir=cache_dir,
                    patch_grid=patch_grid(model) if distil_patches else None,
                    crop_grid=patch_grid(model) if distil_crops else None,
                    crop_window=training_args.crop_window,
                    box_column="boxes" if script_args.box_column else None,
                )
                if dataset is not None
                else None
                for dataset in (train_dataset, eval_dataset)
            ]
        results["teacher_precompute_seconds"] = round(time.perf_counter() - start, 3)
        teacher = None  # not needed any more

    trainer = BreezeCLIPDistillationTrainer(
        model=model,
        args=training_args,
        teacher=teacher,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=BreezeCLIPDistillationCollator(
            image_processor,
            tokenizer,
            teacher_processor=None if script_args.precompute_teacher_embeddings else teacher_processor,
        ),
    )
    if eval_dataset is not None:
        results.update({f"initial_{key}": value for key, value in trainer.evaluate().items()})
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    results.update(train_result.metrics)
    if eval_dataset is not None:
        results.update(trainer.evaluate())

    if trainer.is_world_process_zero():
        # The student alone, as a `BreezeCLIPModel` folder with its processing classes.
        trainer.model.breezeclip.save_pretrained(training_args.output_dir)
        image_processor.save_pretrained(training_args.output_dir)
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.save_state()
    trainer.save_metrics("all", results, combined=False)
    return results


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
