"""The training and evaluation scripts of `examples/`, end to end on tiny models and generated data."""

import json
import re
import shutil
import socket
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from examples import distill_breezeclip, evaluate_vqa, train_vqa
from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor, BreezeCLIPModel
from modeling_bcqlm.evaluation.vqa_accuracy import exact_match_score, vqa_score
from modeling_bcqlm.testing.tiny_models import (
    make_breezeclip_processing,
    make_tiny_clip_teacher,
    tiny_breezeclip_config,
)

from .helpers import make_image, run_python


REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "blue", "green", "brown"]
COMMON = ["--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 images with captions and object boxes (captions.jsonl) and a question each (vqa.jsonl, with a type and 3 answers)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    captions, questions = [], []
    for index in range(12):
        make_image((40, 32), seed=index).save(root / "images" / f"{index}.png")
        colour = COLOURS[index % 4]
        caption = f"a {colour} car and {index % 3 + 1} dogs"
        boxes = [[2, 3, 14, 12]] if index % 3 else []
        captions.append({"image": f"images/{index}.png", "caption": caption, "boxes": boxes})
        questions.append(
            {
                "image": f"images/{index}.png",
                "question": "What colour is the car?" if index % 2 else "How many dogs are there?",
                "answer": colour if index % 2 else str(index % 3 + 1),
                "answers": [colour, colour, "red"] if index % 2 else [str(index % 3 + 1)] * 3,
                "question_type": "other" if index % 2 else "number",
            }
        )
    for name, rows in [("captions.jsonl", captions), ("vqa.jsonl", questions)]:
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def save_distillation_parts(folder):
    """A tiny CLIP teacher (`folder/teacher`), a student config (`student.json`) and tokenizer (`student_tokenizer`)."""
    for part in make_tiny_clip_teacher(projection_dim=20):
        part.save_pretrained(folder / "teacher")
    tiny_breezeclip_config().to_json_file(folder / "student.json")
    make_breezeclip_processing()[1].save_pretrained(folder / "student_tokenizer")


def test_distill_breezeclip_script_trains_saves_and_resumes(tmp_path, data):
    save_distillation_parts(tmp_path)
    output_dir = tmp_path / "breezeclip"
    args = [
        "--teacher_name_or_path", str(tmp_path / "teacher"),
        "--student_config", str(tmp_path / "student.json"),
        "--student_tokenizer", str(tmp_path / "student_tokenizer"),
        "--train_file", str(data / "captions.jsonl"),
        "--validation_file", str(data / "captions.jsonl"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-3",
        "--save_steps", "3",
        "--affinity_distillation_weight", "0.5",
        *COMMON,
    ]  # fmt: skip
    results = distill_breezeclip.main(args + ["--max_steps", "3"])
    assert results["eval_loss"] < results["initial_eval_loss"]
    assert json.loads((output_dir / "all_results.json").read_text())["eval_loss"] == results["eval_loss"]

    # The output folder is a BreezeCLIP with its processing classes; checkpoints hold the student only.
    student = AutoModel.from_pretrained(output_dir)
    assert isinstance(student, BreezeCLIPModel)
    checkpoint = load_file(output_dir / "checkpoint-3" / "model.safetensors")
    assert all(name.startswith(("breezeclip.", "image_distillation_projection.", "text_distillation_projection.")) for name in checkpoint)

    # Resume from the step-3 checkpoint to step 6, with the teacher's embeddings precomputed and cached.
    results = distill_breezeclip.main(
        args + ["--max_steps", "6", "--resume_from_checkpoint", str(output_dir / "checkpoint-3"), "--precompute_teacher_embeddings"]
    )
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert results["teacher_precompute_seconds"] > 0
    assert list((output_dir / "teacher_embeddings").glob("teacher_embeddings-*.arrow"))
    # Started from the same student folder, the script fine-tunes it.
    results = distill_breezeclip.main(
        [arg if arg != str(output_dir) else str(tmp_path / "again") for arg in args[4:]]
        + ["--teacher_name_or_path", str(tmp_path / "teacher"), "--student_name_or_path", str(output_dir), "--max_steps", "1"]
    )
    assert results["train_loss"] > 0


def fresh_student_args(tmp_path, data) -> list[str]:
    """`distill_breezeclip.py` arguments: two steps of a fresh tiny student on `data`'s captions, without contrast."""
    save_distillation_parts(tmp_path)
    return [
        "--teacher_name_or_path", str(tmp_path / "teacher"),
        "--student_config", str(tmp_path / "student.json"),
        "--student_tokenizer", str(tmp_path / "student_tokenizer"),
        "--train_file", str(data / "captions.jsonl"),
        "--output_dir", str(tmp_path / "breezeclip"),
        "--per_device_train_batch_size", "4",
        "--contrastive_weight", "0",
        "--max_steps", "2",
        *COMMON,
    ]  # fmt: skip


def test_distill_breezeclip_script_with_patch_distillation(tmp_path, data):
    args = [
        *fresh_student_args(tmp_path, data),
        "--save_steps", "2", "--patch_distillation_weight", "1.0", "--precompute_teacher_embeddings",
    ]  # fmt: skip
    results = distill_breezeclip.main(args)
    assert results["train_loss"] > 0
    # The patch map trains with the student and is dropped from the exported BreezeCLIP, like the other maps.
    checkpoint = load_file(tmp_path / "breezeclip" / "checkpoint-2" / "model.safetensors")
    assert any(name.startswith("patch_distillation_projection.") for name in checkpoint)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "breezeclip"), BreezeCLIPModel)


def test_distill_breezeclip_script_with_crop_distillation(tmp_path, data):
    args = [
        *fresh_student_args(tmp_path, data),
        "--save_strategy", "no", "--crop_distillation_weight", "1.0", "--crop_window", "0.75",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--precompute_teacher_embeddings"):
        distill_breezeclip.main(args)
    results = distill_breezeclip.main([*args, "--precompute_teacher_embeddings"])
    assert results["train_loss"] > 0
    state = json.loads((tmp_path / "breezeclip" / "trainer_state.json").read_text())
    assert all(entry["crop_distillation_loss"] > 0 for entry in state["log_history"] if "loss" in entry)
    cached = datasets.Dataset.from_file(str(next((tmp_path / "breezeclip" / "teacher_embeddings").glob("*.arrow"))))
    grid = round(len(cached[0]["teacher_crop_embeds"]) ** 0.5)
    assert grid > 1 and len(cached[0]["teacher_crop_embeds"]) == grid * grid


def test_distill_breezeclip_script_with_object_windows(tmp_path, data):
    args = [*fresh_student_args(tmp_path, data), "--save_strategy", "no", "--box_column", "boxes"]
    with pytest.raises(ValueError, match="--crop_distillation_weight"):
        distill_breezeclip.main(args)
    results = distill_breezeclip.main([*args, "--crop_distillation_weight", "1.0", "--precompute_teacher_embeddings"])
    assert results["train_loss"] > 0
    cached = datasets.Dataset.from_file(str(next((tmp_path / "breezeclip" / "teacher_embeddings").glob("*.arrow"))))
    crops = [np.array(row["teacher_crop_embeds"]) for row in cached]
    # Unboxed images: every cell is the blank window's; boxed ones: one cell (the box's) differs from the others.
    assert len(crops[0]) > 1
    assert all(np.allclose(cells, cells[0], atol=1e-6) for cells in crops[::3])
    for cells in crops[1::3]:
        differs = ~np.isclose(cells, cells[-1], atol=1e-6).all(-1)
        assert differs.sum() == 1 and not differs[-1]


def test_train_and_evaluate_vqa_scripts(tmp_path, data, bcqlm_folder):
    output_dir = tmp_path / "vqa"
    args = [
        "--model_name_or_path", str(bcqlm_folder),
        "--train_data", str(data / "vqa.jsonl"),
        "--validation_data", str(data / "vqa.jsonl"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--learning_rate", "3e-3",
        "--max_steps", "6",
        "--save_steps", "3",
        *COMMON,
    ]  # fmt: skip
    before = BcQLMForConditionalGeneration.from_pretrained(bcqlm_folder).state_dict()
    results = train_vqa.main(args)
    trained = BcQLMForConditionalGeneration.from_pretrained(output_dir).state_dict()
    changed = {name for name in trained if not torch.equal(trained[name], before[name])}
    assert changed and all(name.startswith(("model.visual_adapter.", "model.qgcam.")) for name in changed)
    assert results["trainable_parameters"] == sum(
        tensor.numel() for name, tensor in before.items() if name.startswith(("model.visual_adapter.", "model.qgcam."))
    )
    assert (output_dir / "checkpoint-3" / "processor_config.json").exists() or (output_dir / "checkpoint-3" / "preprocessor_config.json").exists()
    BcQLMProcessor.from_pretrained(output_dir)

    # LoRA: merged into a plain BcQLM folder, decoder weights changed.
    lora_dir = tmp_path / "lora"
    train_vqa.main([arg if arg != str(output_dir) else str(lora_dir) for arg in args] + ["--lora", "--lora_r", "2"])
    merged = BcQLMForConditionalGeneration.from_pretrained(lora_dir).state_dict()
    assert set(merged) == set(before)
    assert not torch.equal(merged["model.language_model.layers.0.self_attn.q_proj.weight"], before["model.language_model.layers.0.self_attn.q_proj.weight"])

    # Only BreezeCLIP frozen: the decoder trains too.
    frozen_vision_dir = tmp_path / "frozen_vision"
    train_vqa.main([arg if arg != str(output_dir) else str(frozen_vision_dir) for arg in args] + ["--recipe", "frozen_vision", "--max_steps", "2"])
    trained = BcQLMForConditionalGeneration.from_pretrained(frozen_vision_dir).state_dict()
    changed = {name.removeprefix("model.").split(".")[0] for name in trained if not torch.equal(trained[name], before[name])}
    assert changed == {"visual_adapter", "qgcam", "language_model", "lm_head"}  # the head is tied to the embeddings
    # The tower's features computed once before training train the same weights.
    precomputed_dir = tmp_path / "precomputed"
    train_vqa.main([arg if arg != str(output_dir) else str(precomputed_dir) for arg in args] + ["--recipe", "frozen_vision", "--max_steps", "2", "--precompute_vision_features"])
    precomputed = BcQLMForConditionalGeneration.from_pretrained(precomputed_dir).state_dict()
    for name, tensor in precomputed.items():
        torch.testing.assert_close(tensor, trained[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="--recipe full trains the tower"):
        train_vqa.main(args + ["--recipe", "full", "--precompute_vision_features"])
    # The decoder's attention implementation: eager attention trains the same weights as the default.
    eager_dir = tmp_path / "eager"
    train_vqa.main([arg if arg != str(output_dir) else str(eager_dir) for arg in args] + ["--recipe", "frozen_vision", "--max_steps", "2", "--precompute_vision_features", "--attn_implementation", "eager"])
    for name, tensor in BcQLMForConditionalGeneration.from_pretrained(eager_dir).state_dict().items():
        torch.testing.assert_close(tensor, precomputed[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="no_such_attention"):
        train_vqa.main(args + ["--attn_implementation", "no_such_attention"])

    eval_dir = tmp_path / "eval"
    eval_args = [
        "--model_name_or_path", str(output_dir),
        "--data", str(data / "vqa.jsonl"),
        "--output_dir", str(eval_dir),
        "--batch_size", "5",
        "--max_new_tokens", "4",
    ]  # fmt: skip
    results = evaluate_vqa.main(eval_args)
    predictions = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12 and len({p["question_id"] for p in predictions}) == 12
    expected = sum(vqa_score(p["answer"], p["answers"]) for p in predictions) / 12
    assert results["accuracy"] == pytest.approx(expected)
    assert results["exact_match"] == pytest.approx(sum(exact_match_score(p["answer"], p["answers"]) for p in predictions) / 12)
    assert {name: metrics["count"] for name, metrics in results["per_type"].items()} == {"number": 6, "other": 6}
    assert json.loads((eval_dir / "results.json").read_text())["accuracy"] == results["accuracy"]

    # The answers are the model's greedy answers, batched.
    model, processor = BcQLMForConditionalGeneration.from_pretrained(output_dir), BcQLMProcessor.from_pretrained(output_dir)
    row = json.loads((data / "vqa.jsonl").read_text().splitlines()[7])
    inputs = processor(images=str(data / row["image"]), text=row["question"], return_tensors="pt")
    answer = processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=4)[:, inputs["input_ids"].shape[1] :])[0]
    assert predictions[7]["answer"] == answer

    # Resume: the kept predictions are not recomputed.
    (eval_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions[:10]))
    resumed = evaluate_vqa.main(eval_args + ["--resume"])
    assert resumed == results
    with pytest.raises(ValueError, match="--dtype"):
        evaluate_vqa.main(eval_args + ["--dtype", "float8"])
    with pytest.raises(ValueError, match="--quantization must be one of"):
        evaluate_vqa.main(eval_args + ["--quantization", "int9"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: str, *args: str, cwd: Path) -> None:
    """`accelerate launch` a script in two CPU processes (DDP over gloo)."""
    command = [
        "-m", "accelerate.commands.launch",
        # accelerate's `--cpu` launcher starts one process (several need mpirun); `--multi_gpu` starts them with
        # torchrun, and the scripts' `--use_cpu` (or a machine without GPUs) makes them CPU processes.
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(REPO / "examples" / script), *args,
    ]  # fmt: skip
    completed = run_python(*command, cwd=cwd, OMP_NUM_THREADS="1")
    assert completed.returncode == 0, completed.stderr[-4000:]


@pytest.mark.parametrize("fails", [False, True])
def test_run_script_leaves_the_process_group_the_launch_made(tmp_path, fails):
    from modeling_bcqlm.training.launch import run_script

    def main(argv):
        assert torch.distributed.is_initialized() and argv == ["--flag"]
        if fails:
            raise ValueError("bad argument")

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        if fails:
            with pytest.raises(ValueError, match="bad argument"):
                run_script(main, ["--flag"])
        else:
            run_script(main, ["--flag"])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_scripts_under_accelerate_launch_with_two_processes(tmp_path, data, bcqlm_folder):
    output_dir = tmp_path / "ddp"
    launch_two_processes(
        "train_vqa.py",
        "--model_name_or_path", str(bcqlm_folder),
        "--train_data", str(data / "vqa.jsonl"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "2",
        "--max_steps", "3",
        *COMMON,
        cwd=tmp_path,
    )  # fmt: skip
    state = json.loads((output_dir / "trainer_state.json").read_text())
    # 3 steps of 2 processes x 2 examples = 12 examples, one epoch of the 12 questions (half an epoch on one process).
    assert state["global_step"] == 3
    assert state["epoch"] == pytest.approx(1.0)
    BcQLMForConditionalGeneration.from_pretrained(output_dir)

    # Evaluation: each process answers half of the questions, the main process scores all of them once.
    launch_two_processes(
        "evaluate_vqa.py",
        "--model_name_or_path", str(output_dir),
        "--data", str(data / "vqa.jsonl"),
        "--output_dir", str(tmp_path / "eval"),
        "--batch_size", "4",
        "--max_new_tokens", "3",
        "--use_cpu",
        cwd=tmp_path,
    )  # fmt: skip
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["question_id"] for p in predictions) == sorted(str(index) for index in range(12))
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["count"] == 12


def test_readme_training_commands_run(tmp_path, data, bcqlm_folder):
    """README's training commands, with the Hub ids swapped for tiny local folders and a few steps."""
    readme = (REPO / "README.md").read_text()
    commands = [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)]
    # push_to_hub's command: test_push_to_hub.py; the bundled model's fine-tune recipe: test_fine_tune_recipe.py
    commands = [
        command
        for command in commands
        if re.match(r"python examples/(?!push_to_hub)", command) and "DEFAULT_MODEL" not in command
    ]
    assert [command.split()[1] for command in commands] == [
        "examples/distill_breezeclip.py",
        "examples/train_vqa.py",
        "examples/evaluate_vqa.py",
    ]
    save_distillation_parts(tmp_path)
    shutil.copytree(data, tmp_path / "work")
    replacements = {
        "openai/clip-vit-base-patch32": str(tmp_path / "teacher"),
        "google/mobilebert-uncased": str(tmp_path / "student_tokenizer"),
        "path/to/bcqlm": str(bcqlm_folder),
    }
    extra_args = {
        "examples/distill_breezeclip.py": ["--student_config", str(tmp_path / "student.json"), "--per_device_train_batch_size", "4", "--max_steps", "2", *COMMON],
        "examples/train_vqa.py": ["--per_device_train_batch_size", "4", "--max_steps", "2", *COMMON],
        "examples/evaluate_vqa.py": ["--batch_size", "6", "--max_new_tokens", "3"],
    }  # fmt: skip
    for command in commands:
        args = [replacements.get(arg, arg) for arg in command.split()[1:]]
        completed = run_python(REPO / args[0], *args[1:], *extra_args[args[0]], cwd=tmp_path / "work")
        assert completed.returncode == 0, f"{command}\n{completed.stderr[-3000:]}"
    assert isinstance(AutoModel.from_pretrained(tmp_path / "work" / "breezeclip"), BreezeCLIPModel)
    assert json.loads((tmp_path / "work" / "eval" / "results.json").read_text())["count"] == 12
