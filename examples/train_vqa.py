"""Stage 2: train BcQLM on VQA data with the `transformers` `Trainer`.

    python examples/train_vqa.py \
        --model_name_or_path path/to/bcqlm \
        --train_data v2_OpenEnded_mscoco_train2014_questions.json \
        --annotations_file v2_mscoco_train2014_annotations.json --image_root train2014/ \
        --output_dir bcqlm-vqav2 --per_device_train_batch_size 16 --num_train_epochs 1 --learning_rate 1e-4

The model is a BcQLM folder or Hub id (e.g. one made by `conversion/compose_bcqlm.py`). By default it trains with the
paper's recipe: BreezeCLIP and the decoder frozen, the visual adapter and Q-GCAM trained (`--recipe frozen_vision`
trains the decoder too, `--recipe full` everything; `--lora` adds LoRA adapters to the decoder, merged into the saved
model; `--precompute_vision_features` runs the frozen image tower once per image before training). Data: the VQAv2, GQA
and VizWiz
files, a .jsonl/.csv/.json file with image, question and answer(s), a folder, or a Hub dataset id (see
`modeling_bcqlm.data.loaders.load_vqa_dataset`). The output folder holds the trained model and its processor (loadable
with `from_pretrained`), the checkpoints and `all_results.json`. Runs under `accelerate launch` as well.
"""

import logging
import sys
from dataclasses import dataclass, field

import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.loaders import load_vqa_dataset
from modeling_bcqlm.training import (
    BcQLMVQACollator,
    add_decoder_lora,
    freeze_for_stage2,
    precompute_vision_features,
)
from modeling_bcqlm.training.launch import run_script


logger = logging.getLogger(__name__)

# What trains: "stage2" the adapter and Q-GCAM (the paper's recipe); "frozen_vision" the decoder too; "full" everything.
RECIPES = ("stage2", "frozen_vision", "full")


@dataclass
class VQAScriptArguments:
    model_name_or_path: str = field(metadata={"help": "A BcQLM folder or Hub id."})
    train_data: str = field(metadata={"help": "Training data: a VQA file, a folder or a Hub dataset id."})
    validation_data: str | None = field(default=None, metadata={"help": "Validation data, as `train_data`."})
    image_root: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})
    annotations_file: str | None = field(default=None, metadata={"help": "VQAv2 annotations of `train_data`."})
    validation_annotations_file: str | None = field(default=None, metadata={"help": "VQAv2 annotations of `validation_data`."})
    train_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or saved DatasetDict."})
    validation_split: str = field(default="validation", metadata={"help": "Split of the validation data."})
    on_missing_image: str = field(default="raise", metadata={"help": "'raise' or 'skip' rows whose image is missing."})
    recipe: str = field(
        default="stage2",
        metadata={
            "help": "'stage2': BreezeCLIP and the decoder frozen, adapter and Q-GCAM trained (the paper's recipe); "
            "'frozen_vision': only BreezeCLIP frozen; 'full': everything trained."
        },
    )
    lora: bool = field(default=False, metadata={"help": "Add LoRA adapters to the decoder (with the stage-2 recipe)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    precompute_vision_features: bool = field(
        default=False,
        metadata={
            "help": "Run the frozen image tower once per image before training and train on its features (faster "
            "steps; not with --recipe full, which trains the tower)."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "The decoder's attention ('eager', 'sdpa', ...; default the model's). On a CPU 'eager' trains "
            "small decoders on short prompts a few percent faster than 'sdpa'."
        },
    )
    max_answer_tokens: int | None = field(default=None, metadata={"help": "Truncate answers to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N training examples only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N validation examples only."})


def load_split(script_args: VQAScriptArguments, data: str, split: str, annotations_file: str | None, max_samples):
    dataset = load_vqa_dataset(
        data,
        split=split,
        image_root=script_args.image_root,
        annotations_file=annotations_file,
        on_missing_image=script_args.on_missing_image,
    )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((VQAScriptArguments, TrainingArguments))
    # The collator reads the raw image, question and answer columns.
    parser.set_defaults(remove_unused_columns=False)
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.remove_unused_columns:
        raise ValueError("--remove_unused_columns must stay False: the collator reads the raw image and text columns.")
    if script_args.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {RECIPES}, got {script_args.recipe!r}.")
    if script_args.precompute_vision_features and script_args.recipe == "full":
        raise ValueError(
            "--precompute_vision_features computes the image tower's features once, but --recipe full trains the "
            "tower: use --recipe stage2 or frozen_vision with it, or leave it out."
        )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    processor = BcQLMProcessor.from_pretrained(script_args.model_name_or_path)
    attn_implementation = script_args.attn_implementation
    model = BcQLMForConditionalGeneration.from_pretrained(
        script_args.model_name_or_path,
        **({"attn_implementation": {"text_config": attn_implementation}} if attn_implementation else {}),
    )
    if script_args.lora:
        if script_args.recipe != "stage2":
            raise ValueError("--lora trains LoRA adapters on a frozen decoder: use it with --recipe stage2.")
        model = add_decoder_lora(model, script_args.lora_r, script_args.lora_alpha, script_args.lora_dropout)
    elif script_args.recipe == "stage2":
        freeze_for_stage2(model)
    elif script_args.recipe == "frozen_vision":
        freeze_for_stage2(model, decoder="trained")
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    logger.info(f"Training {trainable:,} of {sum(param.numel() for param in model.parameters()):,} parameters.")

    train_dataset = load_split(
        script_args,
        script_args.train_data,
        script_args.train_split,
        script_args.annotations_file,
        script_args.max_train_samples,
    )
    eval_dataset = None
    if script_args.validation_data is not None:
        eval_dataset = load_split(
            script_args,
            script_args.validation_data,
            script_args.validation_split,
            script_args.validation_annotations_file,
            script_args.max_eval_samples,
        )

    if script_args.precompute_vision_features:
        train_dataset = precompute_vision_features(train_dataset, model, processor)
        if eval_dataset is not None:
            eval_dataset = precompute_vision_features(eval_dataset, model, processor)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=BcQLMVQACollator(processor, max_answer_tokens=script_args.max_answer_tokens),
        processing_class=processor,
    )
    results = {"trainable_parameters": trainable}
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    results.update(train_result.metrics)
    if eval_dataset is not None:
        results.update(trainer.evaluate())

    if trainer.is_world_process_zero():
        final_model = trainer.accelerator.unwrap_model(trainer.model)
        if script_args.lora:
            final_model = final_model.merge_and_unload()
        final_model.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
        trainer.save_state()
    trainer.save_metrics("all", results, combined=False)
    return results


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
