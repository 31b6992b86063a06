"""Train the small BcQLM shipped with the package, from nothing, with the package's own scripts.

    python examples/train_default_model.py --output_dir modeling_bcqlm/default_model

1. Data: synthetic shape scenes (`modeling_bcqlm.data.synthetic_shapes`): captions of 4,000 images for stage 1,
   questions for stage 2, and a test split that also holds shape-colour combinations never seen in training. Every
   training and captioned scene is drawn in a random style (background, shades, scale, anti-aliasing), so that the
   model does not depend on the generator's exact pixels; the test split keeps the plain style. The captioned scenes
   also hold shapes in five colours no question asks about (`EXTRA_COLOURS`): every shape comes in nine or ten colours
   there, so that the image tower learns shape apart from colour and reads the shape-colour combinations held out of
   training nearly as well as the seen ones.
2. Tokenizers, trained on the synthetic text: a byte-level BPE for the decoder, a WordPiece vocabulary for the
   question encoder, a CLIP BPE for the teacher. Each is learned the same from the same texts, so that the recipe
   trains the same weights from run to run on a machine (the teacher's and stage 1's initial weights move the
   result most: `benchmarks/README.md`, "The recipe made deterministic").
3. A small CLIP teacher (`transformers.CLIPModel`) trained contrastively on the captions with the `Trainer`.
4. Stage 1: `examples/distill_breezeclip.py` distils a small BreezeCLIP (MobileViT + MobileBERT) from it: its pooled
   image and text embeddings and, cell by cell, the teacher's patch tokens, which teach the image tower what each
   cell holds (pooled embeddings alone, or with the student's own contrastive and affinity losses, leave the cells
   blind to colour). The student sees 64 px images (output stride 16: the same 4 x 4 map at a third of the cost).
   The teacher also learns each shape's own caption from a window around it (`make_synthetic_region_captions`), and
   stage 1 distils its embedding of each shape, shown alone, into the cell holding the shape's centre, and of a blank
   window into the other cells (crop distillation with the shapes' boxes): what a CLIP teacher learns of shape sits in
   its pooled embedding, not in its patch tokens, and each shape's on one cell binds its attributes to one visual
   token (`--no-object_windows`: the window around every cell instead; `--no-region_distillation` leaves both out).
   Stage 1 runs 24 epochs: with 16, how well its cells read the held-out shape-colour combinations depended on the
   draw of initial weights (`benchmarks/README.md`, "A longer stage 1").
5. The decoder (a small `LlamaForCausalLM`) learns the language of the prompts and answers as a causal LM on the
   training questions and answers (text only).
6. `conversion/compose_bcqlm.py` assembles BcQLM from the two; stage 2 (`examples/train_vqa.py`) trains it on the VQA
   data with the recipe of `--recipe` (default `frozen_vision`: BreezeCLIP frozen as stage 1 left it, the rest trained;
   `full` trains BreezeCLIP too, and the question loss then wipes the colour out of its cells before the read-out learns
   to use it), at lr 7e-4 for 8,625 steps of 64 over 48,000 images, so that few images come back (with fewer images
   shown more often the read-out learns them by heart). The read-out learns from the questions it sees more than from
   the steps it takes: batches of 64 answer more questions a second than batches of 32 or 16. Each image's questions
   stay together in the shuffled training order, so that a batch runs the image tower once per image (`order_by_image`);
   with BreezeCLIP frozen, the tower runs once per image before training (`--precompute_vision_features`), and the steps
   train on its features, with the decoder's eager attention (`--attn_implementation eager`: the same function as sdpa,
   a few percent faster for these short prompts on a CPU).
7. `examples/evaluate_vqa.py` scores it on the test split, all of it and its held-out combinations apart, and the
   run reports which of the default model's accuracy targets (`TARGETS`) it met: its result depends on the CPU's
   kernels, so a run on another machine can miss one that the shipped checkpoint meets.

`--quick` runs every step on a few examples for a smoke test. `--work_dir` keeps the intermediate folders.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import (
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

import modeling_bcqlm
from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor, BreezeCLIPConfig
from modeling_bcqlm.data.synthetic_shapes import (
    make_synthetic_captions,
    make_synthetic_region_captions,
    make_synthetic_vqa,
)
from modeling_bcqlm.data.tokenizers import (
    EOS,
    train_clip_tokenizer,
    train_decoder_tokenizer,
    word_level_question_tokenizer,
)
from modeling_bcqlm.export import save_hub_folder


REPO = Path(__file__).resolve().parents[1]
PROMPT = "Question: {question}\nAnswer: {answer}"

# Sizes of the shipped model; `--quick` keeps them and shortens the training. Scenes are drawn at `IMAGE_SIZE` (the
# teacher's input); BreezeCLIP's image processor resizes them to `STUDENT_IMAGE_SIZE`.
IMAGE_SIZE = 128
STUDENT_IMAGE_SIZE = 64
PROJECTION_DIM = 64
# Side of the windows of `--region_distillation`, as a fraction of the image: two cells of the student's 4 x 4 grid, so
# that a window centred on a cell holds a large shape whose centre lies anywhere in it (or a large one whole).
CROP_WINDOW = 0.5
STUDENT_CONFIG = {
    "vision_config": {
        "model_type": "mobilevit",
        "image_size": STUDENT_IMAGE_SIZE,
        "output_stride": 16,
        "hidden_sizes": [48, 64, 80],
        "neck_hidden_sizes": [16, 16, 24, 48, 64, 80, 160],
        "num_attention_heads": 4,
        "expand_ratio": 2.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    "text_config": {
        "model_type": "mobilebert",
        "hidden_size": 128,
        "embedding_size": 64,
        "intra_bottleneck_size": 64,
        "true_hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "num_feedforward_networks": 1,
        "max_position_embeddings": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    "projection_dim": PROJECTION_DIM,
}
TEACHER_TEXT_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}
TEACHER_VISION_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "patch_size": 16,
}
DECODER_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}

# The default model's accuracy targets on the test split: the minimum accuracy overall and per question type, and the
# largest gap between the held-out shape-colour combinations and the seen ones.
TARGETS = {
    "overall": 0.90,
    "attribute": 0.95,
    "existence": 0.95,
    "counting": 0.95,
    "spatial": 0.80,
    "comparison": 0.80,
    "held-out gap": 0.03,
}


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)


def run_main(script: str, *args) -> None:
    """Run `main(argv)` of one of the repository's scripts in this process, with the arguments a user would type."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.main([str(arg) for arg in args])


def write_caption_file(captions: datasets.Dataset, folder: Path) -> Path:
    """
    Save the images as PNG files beside a `captions.jsonl` naming them, with their captions and shapes' boxes: the
    input of `distill_breezeclip.py`.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = captions.cast_column("image", datasets.Image(decode=False))
    with open(folder / "captions.jsonl", "w") as f:
        for index, row in enumerate(rows):
            (folder / "images" / f"{index}.png").write_bytes(row["image"]["bytes"])
            line = {"image": f"images/{index}.png", "caption": row["caption"], "boxes": row["boxes"]}
            f.write(json.dumps(line) + "\n")
    return folder / "captions.jsonl"


def order_by_image(questions: datasets.Dataset, seed: int) -> datasets.Dataset:
    """Shuffle the images but keep each image's questions together, so that a batch runs the image tower once per image."""
    images = questions.cast_column("image", datasets.Image(decode=False))["image"]
    image_ids = {}  # image bytes -> rank of first appearance
    image_indices = [image_ids.setdefault(image["bytes"], len(image_ids)) for image in images]
    image_order = np.argsort(np.random.default_rng(seed).permutation(len(image_ids)))
    return questions.select(sorted(range(len(questions)), key=lambda row: (image_order[image_indices[row]], row)))


def link_package_code(folder: Path) -> None:
    """Make the code files of the model shipped in the package links to the package's own, so that they never drift."""
    for code_file in folder.glob("*.py"):
        code_file.unlink()
        code_file.symlink_to(os.path.relpath(Path(modeling_bcqlm.__file__).parent / code_file.name, folder))


class CLIPCollator:
    """Batches of (image, caption) rows for `CLIPModel`'s contrastive loss."""

    def __init__(self, processor: CLIPProcessor):
        self.processor = processor

    def __call__(self, rows):
        inputs = self.processor(
            images=[row["image"] for row in rows],
            text=[row["caption"] for row in rows],
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        return {**inputs, "return_loss": True}


def stage_warmup(args, steps: int) -> int:
    """A stage's warm-up steps: none with `--quick`, whose stages take a step or two (a warm-up's first step has lr 0)."""
    return 0 if args.quick else steps


def training_arguments(
    output_dir: Path, epochs: float, batch_size: int, learning_rate: float, warmup_steps: int, **kwargs
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        logging_steps=50,
        remove_unused_columns=False,
        seed=0,
        **kwargs,
    )


def make_data(args, work: Path) -> tuple[datasets.DatasetDict, datasets.Dataset, Path]:
    """The VQA splits (saved under `work/vqa`), the captioned images and their caption file."""
    # The test split stays in the generator's plain style (`benchmarks/image_ablation.py` redraws it).
    splits = datasets.DatasetDict(
        {
            "train": make_synthetic_vqa(
                args.train_images, args.seed, args.questions_per_image, IMAGE_SIZE, "train", vary_style=args.vary_style
            ),
            "test": make_synthetic_vqa(args.test_images, args.seed, args.questions_per_image, IMAGE_SIZE, "test"),
        }
    )
    splits["train"] = order_by_image(splits["train"], args.seed)
    splits["test_held_out"] = splits["test"].filter(lambda row: row["held_out"])
    splits["test_seen"] = splits["test"].filter(lambda row: not row["held_out"])
    splits.save_to_disk(str(work / "vqa"))
    captions = make_synthetic_captions(
        args.caption_images,
        args.seed,
        image_size=IMAGE_SIZE,
        split="train",
        vary_style=args.vary_style,
        extra_colours=args.extra_colours,
    )
    return splits, captions, write_caption_file(captions, work / "captions")


def teacher_captions(args, captions: datasets.Dataset) -> datasets.Dataset:
    """The teacher's image-caption pairs: the scenes' captions and, with region distillation, each shape's own."""
    captions = captions.select_columns(["image", "caption"])
    if not args.region_distillation:
        return captions
    regions = make_synthetic_region_captions(
        args.caption_images,
        args.seed,
        IMAGE_SIZE,
        "train",
        window=CROP_WINDOW,
        vary_style=args.vary_style,
        extra_colours=args.extra_colours,
    )
    return datasets.concatenate_datasets([captions, regions])


def train_teacher(args, work: Path, captions: datasets.Dataset, tokenizer: CLIPTokenizer) -> None:
    """A small CLIP teacher trained contrastively on `captions`, saved under `work/teacher`."""
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
    )
    torch.manual_seed(args.seed)
    special_tokens = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    teacher = CLIPModel(
        CLIPConfig(
            text_config={"vocab_size": len(tokenizer), **TEACHER_TEXT_CONFIG, **special_tokens},
            vision_config={"image_size": IMAGE_SIZE, **TEACHER_VISION_CONFIG},
            projection_dim=PROJECTION_DIM,
        )
    )
    Trainer(
        model=teacher,
        args=training_arguments(
            work / "teacher_run", args.teacher_epochs, 64, 1e-3, stage_warmup(args, 20), weight_decay=0.1
        ),
        train_dataset=captions,
        data_collator=CLIPCollator(processor),
    ).train()
    teacher.save_pretrained(work / "teacher")
    processor.save_pretrained(work / "teacher")


def distill_breezeclip(args, work: Path, caption_file: Path, question_tokenizer: BertTokenizer) -> None:
    """Stage 1: `examples/distill_breezeclip.py` distils BreezeCLIP from the teacher into `work/breezeclip`."""
    text_config = {**STUDENT_CONFIG["text_config"], "vocab_size": len(question_tokenizer)}
    BreezeCLIPConfig(**{**STUDENT_CONFIG, "text_config": text_config}).to_json_file(work / "student.json")
    question_tokenizer.save_pretrained(work / "question_tokenizer")
    run_main(
        "examples/distill_breezeclip.py",
        "--teacher_name_or_path", work / "teacher",
        "--student_config", work / "student.json",
        "--student_tokenizer", work / "question_tokenizer",
        "--train_file", caption_file,
        "--output_dir", work / "breezeclip",
        "--precompute_teacher_embeddings",
        "--contrastive_weight", "0",
        "--patch_distillation_weight", "1.0",
        "--crop_distillation_weight", "1.0" if args.region_distillation else "0",
        "--crop_window", CROP_WINDOW,
        *(("--box_column", "boxes") if args.region_distillation and args.object_windows else ()),
        "--num_train_epochs", args.distillation_epochs,
        "--per_device_train_batch_size", "64",
        "--learning_rate", "2e-3",
        "--warmup_steps", stage_warmup(args, 20),
        "--lr_scheduler_type", "cosine",
        "--save_strategy", "no", "--logging_steps", "50", "--report_to", "none", "--use_cpu", "--seed", args.seed,
    )  # fmt: skip


def train_decoder(args, work: Path, texts: list[str], tokenizer: PreTrainedTokenizerFast) -> None:
    """The decoder learns the prompts' and answers' language as a causal LM, saved under `work/decoder`."""
    torch.manual_seed(args.seed)
    special_tokens = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    decoder = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **special_tokens, **DECODER_CONFIG))
    texts = datasets.Dataset.from_dict({"text": [text + EOS for text in texts]})
    tokenized = texts.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    Trainer(
        model=decoder,
        args=training_arguments(work / "decoder_run", args.decoder_epochs, 64, 2e-3, stage_warmup(args, 20)),
        train_dataset=tokenized,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    ).train()
    decoder.save_pretrained(work / "decoder")
    tokenizer.save_pretrained(work / "decoder")


def train_bcqlm(args, work: Path) -> None:
    """Stage 2: BcQLM composed from BreezeCLIP and the decoder, trained on the questions into `work/vqa_run`."""
    run_main(
        "conversion/compose_bcqlm.py",
        "--language_model", work / "decoder",
        "--breezeclip", work / "breezeclip",
        "--output_dir", work / "composed",
        "--qgcam_heads", "4",
        "--seed", args.seed,
    )  # fmt: skip
    run_main(
        "examples/train_vqa.py",
        "--model_name_or_path", work / "composed",
        "--train_data", work / "vqa", "--train_split", "train",
        "--output_dir", work / "vqa_run",
        "--recipe", args.recipe,
        *(["--precompute_vision_features"] if args.recipe != "full" else []),
        "--attn_implementation", "eager",
        "--train_sampling_strategy", "sequential",  # the order of `order_by_image`
        "--num_train_epochs", args.vqa_epochs,
        "--per_device_train_batch_size", "64",
        "--learning_rate", "7e-4",
        "--warmup_steps", stage_warmup(args, 100),
        "--lr_scheduler_type", "cosine",
        "--save_strategy", "no", "--logging_steps", "50", "--report_to", "none", "--use_cpu", "--seed", args.seed,
    )  # fmt: skip


def ship(work: Path, output_dir: Path) -> None:
    """The trained model, its processor and generation config, as a Hub-ready folder without training records."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    model = BcQLMForConditionalGeneration.from_pretrained(work / "vqa_run")
    save_hub_folder(model, BcQLMProcessor.from_pretrained(work / "vqa_run"), output_dir)
    if output_dir.resolve() == Path(modeling_bcqlm.DEFAULT_MODEL).resolve():
        link_package_code(output_dir)


def evaluate(work: Path, output_dir: Path) -> dict:
    """Scores on the test split, and on its held-out shape-colour combinations and the rest apart."""
    results = {}
    for split in ("test", "test_held_out", "test_seen"):
        run_main(
            "examples/evaluate_vqa.py",
            "--model_name_or_path", output_dir,
            "--data", work / "vqa", "--split", split,
            "--output_dir", work / f"eval_{split}",
            "--batch_size", "64",
            "--max_new_tokens", "4",
        )  # fmt: skip
        results[split] = json.loads((work / f"eval_{split}" / "results.json").read_text())
    return results


def check_targets(results: dict) -> dict[str, dict]:
    """Each of `TARGETS` with the value `evaluate`'s results reach and whether it is met."""
    test = results["test"]
    values = {"overall": test["accuracy"], **{name: scores["accuracy"] for name, scores in test["per_type"].items()}}
    values["held-out gap"] = abs(results["test_seen"]["accuracy"] - results["test_held_out"]["accuracy"])
    checks = {}
    for name, target in TARGETS.items():
        value = values.get(name)
        met = value is not None and (value <= target if name == "held-out gap" else value >= target)
        checks[name] = {"value": value, "target": target, "met": met}
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Where the trained model and its processor are written.")
    parser.add_argument("--work_dir", help="Folder of the intermediate data and models (default: a temporary one).")
    parser.add_argument("--train_images", type=int, default=48000, help="Images of stage 2's questions.")
    parser.add_argument(
        "--caption_images", type=int, default=4000, help="Images of the teacher's and stage 1's captions."
    )
    parser.add_argument("--test_images", type=int, default=400)
    parser.add_argument("--questions_per_image", type=int, default=5)
    parser.add_argument(
        "--teacher_epochs", type=float, help="Epochs over the teacher's captions (default 8; 4 without region ones)."
    )
    parser.add_argument(
        "--distillation_epochs", type=float, help="Epochs of stage 1 (default 24; 8 without region distillation)."
    )
    parser.add_argument("--decoder_epochs", type=float, default=0.25)
    parser.add_argument("--vqa_epochs", type=float, default=2.3, help="Epochs of stage 2 (8,625 steps of 64).")
    parser.add_argument(
        "--recipe", choices=("stage2", "frozen_vision", "full"), default="frozen_vision", help="What stage 2 trains."
    )
    parser.add_argument(
        "--vary_style",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Draw the training and captioned scenes in random styles: background, shades, scale, anti-aliasing "
        "(default; --no-vary_style: every scene in the generator's one style).",
    )
    parser.add_argument(
        "--extra_colours",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="The captioned scenes (teacher and stage 1) also hold shapes in five colours no question asks about "
        "(`EXTRA_COLOURS`), so that the image tower learns shape apart from colour (default; --no-extra_colours: the "
        "questions' five colours only).",
    )
    parser.add_argument(
        "--region_distillation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Train the teacher on each shape's own caption too, and distil its embedding of a window around each cell "
        "(default; --no-region_distillation: the patch tokens only, the previous recipe).",
    )
    parser.add_argument(
        "--object_windows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Region distillation's window of each cell shows the shape centred in it alone, a blank one where none "
        "is (default; --no-object_windows: the window around every cell, neighbours included).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="A few examples and steps: a smoke test of every step.")
    args = parser.parse_args(argv)
    if args.teacher_epochs is None:
        args.teacher_epochs = 8 if args.region_distillation else 4
    if args.distillation_epochs is None:
        args.distillation_epochs = 24 if args.region_distillation else 8
    if args.quick:
        args.train_images, args.caption_images, args.test_images, args.questions_per_image = 16, 16, 6, 3
        args.teacher_epochs = args.distillation_epochs = args.decoder_epochs = args.vqa_epochs = 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bcqlm-default-"))
    output_dir = Path(args.output_dir)

    splits, captions, caption_file = make_data(args, work)
    train = splits["train"]
    log(f"data: {len(captions)} captioned images, {len(train)} training, {len(splits['test'])} test questions", start)
    qa_texts = [PROMPT.format(question=q, answer=a) for q, a in zip(train["question"], train["answer"])]
    caption_texts = list(captions["caption"])
    decoder_tokenizer = train_decoder_tokenizer(qa_texts + caption_texts, vocab_size=512, model_max_length=IMAGE_SIZE)
    question_tokenizer = word_level_question_tokenizer(list(train["question"]))
    teacher_data = teacher_captions(args, captions)
    train_teacher(args, work, teacher_data, train_clip_tokenizer(list(teacher_data["caption"])))
    log("teacher trained", start)
    distill_breezeclip(args, work, caption_file, question_tokenizer)
    log("BreezeCLIP distilled", start)
    train_decoder(args, work, qa_texts, decoder_tokenizer)
    log("decoder trained", start)
    train_bcqlm(args, work)
    log("VQA trained", start)
    ship(work, output_dir)
    results = evaluate(work, output_dir)
    log(f"evaluated: accuracy {results['test']['accuracy']:.4f}", start)
    targets = check_targets(results)
    missed = [
        f"{name} {check['value']} (target {check['target']})" for name, check in targets.items() if not check["met"]
    ]
    log(f"targets missed: {', '.join(missed)}" if missed else "every target met", start)
    summary = {
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "arguments": vars(args),
        "results": results,
        "targets": targets,
    }
    (output_dir / "training_results.json").write_text(json.dumps(summary, indent=2))
    log(f"saved to {output_dir}", start)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
