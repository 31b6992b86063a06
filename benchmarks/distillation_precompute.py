"""How much precomputing the teacher's embeddings speeds up BreezeCLIP's distillation.

    python -m benchmarks.distillation_precompute --output benchmarks/results/distillation_precompute.json

Builds, with random weights, the paper's student (BreezeCLIP: MobileViT-S + MobileBERT, 512-d) and a CLIP ViT-B/32
shaped teacher (`CLIPConfig()`), generates image-caption pairs, and times `BreezeCLIPDistillationTrainer` steps with
the teacher run at every step against steps on embeddings precomputed once by `precompute_teacher_embeddings` (whose
own time is reported too, with the number of epochs after which it has paid for itself). `--tiny` uses tiny models
for a quick check.
"""

import argparse
import json
import platform
import tempfile
import time

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from modeling_bcqlm import BcQLMImageProcessor, BreezeCLIPConfig
from modeling_bcqlm.data.tokenizers import train_clip_tokenizer, word_level_question_tokenizer
from modeling_bcqlm.training import (
    BreezeCLIPDistillationArguments,
    BreezeCLIPDistillationCollator,
    BreezeCLIPDistillationTrainer,
    BreezeCLIPForDistillation,
    precompute_teacher_embeddings,
)


WORDS = ["a", "an", "small", "large", "red", "green", "blue", "yellow", "circle", "square", "triangle", "and", "two"]


def make_data(num_pairs: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(num_pairs)]
    captions = [" ".join(rng.choice(WORDS, size=12)) for _ in range(num_pairs)]
    return datasets.Dataset.from_dict({"image": images, "caption": captions})


def make_teacher(tiny: bool) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP ViT-B/32-shaped teacher (`CLIPConfig()`) with a byte-level tokenizer (its ids lie in CLIP's vocabulary)."""
    size = 32 if tiny else 224
    config = CLIPConfig()
    if tiny:
        config = CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
            projection_dim=20,
        )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=train_clip_tokenizer(model_max_length=77),
    )
    return CLIPModel(config).eval(), processor


def make_student(tiny: bool, teacher_dim: int):
    if tiny:
        from modeling_bcqlm.testing.tiny_models import tiny_breezeclip_config

        config = tiny_breezeclip_config(text_vocab_size=64)
    else:
        config = BreezeCLIPConfig()
    size = config.vision_config.image_size
    image_processor = BcQLMImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return BreezeCLIPForDistillation(config, teacher_projection_dim=teacher_dim), image_processor, word_level_question_tokenizer(WORDS, vocab_size=config.text_config.vocab_size)


def seconds_per_step(make_trainer, steps: int) -> float:
    make_trainer(max_steps=1).train()  # warm-up: allocations, first-call overheads
    metrics = make_trainer(max_steps=steps).train().metrics
    return metrics["train_runtime"] / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="Timed training steps per mode.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="Tiny models, for a quick check.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher, teacher_processor = make_teacher(args.tiny)
    student, image_processor, tokenizer = make_student(args.tiny, teacher.config.projection_dim)
    initial_weights = {name: tensor.clone() for name, tensor in student.state_dict().items()}
    dataset = make_data(args.batch_size * (args.steps + 1))

    with tempfile.TemporaryDirectory() as output_dir:

        def trainer_factory(train_dataset, with_teacher: bool):
            def make_trainer(max_steps: int):
                student.load_state_dict(initial_weights)
                training_args = BreezeCLIPDistillationArguments(
                    output_dir=output_dir,
                    per_device_train_batch_size=args.batch_size,
                    max_steps=max_steps,
                    save_strategy="no",
                    report_to="none",
                    use_cpu=True,
                    disable_tqdm=True,
                    dataloader_num_workers=0,
                    affinity_distillation_weight=1.0,
                )
                collator = BreezeCLIPDistillationCollator(
                    image_processor, tokenizer, teacher_processor=teacher_processor if with_teacher else None
                )
                return BreezeCLIPDistillationTrainer(
                    model=student,
                    args=training_args,
                    teacher=teacher if with_teacher else None,
                    train_dataset=train_dataset,
                    data_collator=collator,
                )

            return make_trainer

        online = seconds_per_step(trainer_factory(dataset, with_teacher=True), args.steps)
        start = time.perf_counter()
        precomputed_dataset = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=args.batch_size)
        precompute_seconds = time.perf_counter() - start
        precomputed = seconds_per_step(trainer_factory(precomputed_dataset, with_teacher=False), args.steps)

    saved_per_epoch = (online - precomputed) * len(dataset) / args.batch_size
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "student": "tiny" if args.tiny else "BreezeCLIP (MobileViT-S + MobileBERT)",
        "teacher": "tiny" if args.tiny else "CLIP ViT-B/32 shape",
        "batch_size": args.batch_size,
        "seconds_per_step_with_teacher": round(online, 4),
        "seconds_per_step_precomputed": round(precomputed, 4),
        "speed_up": round(online / precomputed, 2),
        "precompute_seconds_per_example": round(precompute_seconds / len(dataset), 4),
        "epochs_to_pay_off": round(precompute_seconds / saved_per_epoch, 2) if saved_per_epoch > 0 else None,
    }
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
