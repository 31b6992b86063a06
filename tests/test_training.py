"""Stage-1 distillation and stage-2 VQA training through the `transformers` `Trainer`, on tiny models and data."""

import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_bcqlm import BreezeCLIPModel
from modeling_bcqlm.data.images import cell_windows, crop_window, object_windows
from modeling_bcqlm.testing.tiny_models import (
    make_breezeclip_processing,
    make_tiny_clip_teacher,
    tiny_breezeclip_config,
)
from modeling_bcqlm.training import (
    BcQLMVQACollator,
    BreezeCLIPDistillationArguments,
    BreezeCLIPDistillationCollator,
    BreezeCLIPDistillationTrainer,
    BreezeCLIPForDistillation,
    add_decoder_lora,
    affinity_distillation_loss,
    crop_distillation_loss,
    feature_distillation_loss,
    freeze_for_stage2,
    patch_distillation_loss,
    pool_patch_tokens,
    precompute_teacher_embeddings,
    precompute_vision_features,
    unfreeze,
)

from .helpers import make_image, make_model_and_processor


COLOURS = ["red", "blue", "green", "brown"]


def make_caption_dataset(size: int = 8) -> datasets.Dataset:
    images = [make_image((40, 32), seed=index) for index in range(size)]
    captions = [f"a {COLOURS[index % 4]} car and {index % 3 + 1} dogs" for index in range(size)]
    return datasets.Dataset.from_dict({"image": images, "caption": captions})


def make_vqa_dataset(size: int = 8) -> datasets.Dataset:
    images = [make_image((40, 32), seed=index) for index in range(size)]
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "question": ["What colour is the car?"] * size,
            "answer": [f"The car is {COLOURS[index % 4]}." for index in range(size)],
        }
    )


def distillation_args(tmp_path: Path, **kwargs) -> BreezeCLIPDistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        max_steps=6,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    return BreezeCLIPDistillationArguments(**{**defaults, **kwargs})


def make_student(teacher_projection_dim: int | None = None, seed: int = 0) -> BreezeCLIPForDistillation:
    torch.manual_seed(seed)
    return BreezeCLIPForDistillation(tiny_breezeclip_config(), teacher_projection_dim=teacher_projection_dim)


@pytest.fixture(scope="module")
def teacher_and_processor():
    torch.manual_seed(1)
    return make_tiny_clip_teacher(projection_dim=20)


@pytest.fixture(scope="module")
def student_collator(teacher_and_processor):
    image_processor, tokenizer = make_breezeclip_processing()
    return BreezeCLIPDistillationCollator(image_processor, tokenizer, teacher_processor=teacher_and_processor[1])


# Losses on hand-computable cases.


def test_feature_distillation_loss_by_hand():
    student, teacher = torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # MSE over the 4 elements: (0.4^2 + 0.8^2 + 0 + 0) / 4 = 0.2; cosine: mean(1 - 0.6, 1 - 1) = 0.2.
    assert feature_distillation_loss(student, teacher, "mse").item() == pytest.approx(0.2)
    assert feature_distillation_loss(student, teacher, "cosine").item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="'mse'"):
        feature_distillation_loss(student, teacher, "l1")


def test_affinity_distillation_loss_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # Student: every image is e1, every text e2, so all similarities are 0 and each distribution is uniform.
    student_images, student_texts = torch.stack([e1, e1]), torch.stack([e2, e2])
    # Teacher with images = texts = (e1, e2): similarities I, so each row and column is softmax([1, 0]) at T = 1.
    p = math.e / (1 + math.e)
    kl_to_uniform = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))  # ~ 0.1109
    teacher = torch.stack([e1, e2])
    loss = affinity_distillation_loss(student_images, student_texts, teacher, teacher, temperature=1.0)
    assert loss.item() == pytest.approx(kl_to_uniform, rel=1e-5)

    # Teacher images (e1, e1), texts (e1, e2): rows are softmax([1, 0]); columns are [1, 1] and [0, 0], uniform, so the
    # text-to-image direction adds 0 and the mean of the two directions is half the image-to-text KL.
    loss = affinity_distillation_loss(
        student_images, student_texts, torch.stack([e1, e1]), torch.stack([e1, e2]), temperature=1.0
    )
    assert loss.item() == pytest.approx(kl_to_uniform / 2, rel=1e-5)

    # A sharper temperature: rows softmax([10, 0]).
    q = 1 / (1 + math.exp(-10))
    loss = affinity_distillation_loss(student_images, student_texts, teacher, teacher, temperature=0.1)
    assert loss.item() == pytest.approx(q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q)), rel=1e-5)
    assert affinity_distillation_loss(teacher, teacher, teacher, teacher, 0.07).item() == pytest.approx(0.0, abs=1e-6)


def test_total_loss_weights_each_term(tmp_path, teacher_and_processor, student_collator):
    teacher, _ = teacher_and_processor
    batch = student_collator([make_caption_dataset()[index] for index in range(4)])
    student = make_student(teacher_projection_dim=20).eval()
    with torch.no_grad():
        outputs = student(
            input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
        )
        teacher_images = F.normalize(teacher.get_image_features(pixel_values=batch["teacher_pixel_values"]).pooler_output)
        teacher_texts = F.normalize(
            teacher.get_text_features(
                input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
            ).pooler_output
        )
    logits = outputs.logits_per_image
    targets = torch.arange(4)
    contrastive = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    feature = ((outputs.image_distillation_embeds - teacher_images) ** 2).mean() + (
        (outputs.text_distillation_embeds - teacher_texts) ** 2
    ).mean()
    affinity = affinity_distillation_loss(outputs.image_embeds, outputs.text_embeds, teacher_images, teacher_texts, 0.5)

    for weights, expected in [((2.0, 0.0, 0.0), 2 * contrastive), ((0.0, 3.0, 0.0), 3 * feature), ((1.0, 1.0, 0.5), contrastive + feature + 0.5 * affinity)]:
        args = distillation_args(
            tmp_path,
            contrastive_weight=weights[0],
            feature_distillation_weight=weights[1],
            affinity_distillation_weight=weights[2],
            affinity_temperature=0.5,
        )
        trainer = BreezeCLIPDistillationTrainer(model=student, args=args, teacher=teacher, data_collator=student_collator)
        with torch.no_grad():
            loss = trainer.compute_loss(student, dict(batch))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_student_and_teacher_sizes(tmp_path, teacher_and_processor, student_collator):
    student = make_student(teacher_projection_dim=20)
    assert student.image_distillation_projection.weight.shape == (20, 24)
    assert make_student().image_distillation_projection is None  # same size: no projection
    batch = student_collator([make_caption_dataset()[index] for index in range(2)])
    trainer = BreezeCLIPDistillationTrainer(
        model=make_student(), args=distillation_args(tmp_path), teacher=teacher_and_processor[0]
    )
    with pytest.raises(ValueError, match="teacher_projection_dim=20"):
        trainer.compute_loss(trainer.model, dict(batch))
    with pytest.raises(TypeError, match="BreezeCLIPDistillationArguments"):
        BreezeCLIPDistillationTrainer(model=student, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    with pytest.raises(ValueError, match="'cosine'"):
        distillation_args(tmp_path, feature_distillation_loss="l2")


def test_collator_errors(student_collator):
    rows = [make_caption_dataset()[0]]
    image_processor, tokenizer = make_breezeclip_processing()
    with pytest.raises(ValueError, match="precompute_teacher_embeddings"):
        BreezeCLIPDistillationCollator(image_processor, tokenizer)(rows)
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        student_collator([{"image": rows[0]["image"], "text": "a car"}])


# Training.


def test_distillation_lowers_the_loss_and_never_saves_the_teacher(tmp_path, teacher_and_processor, student_collator):
    teacher, _ = teacher_and_processor
    dataset = make_caption_dataset()
    args = distillation_args(
        tmp_path, max_steps=12, save_strategy="steps", save_steps=12, affinity_distillation_weight=1.0
    )
    student = make_student(teacher_projection_dim=20)
    trainer = BreezeCLIPDistillationTrainer(
        model=student,
        args=args,
        teacher=teacher,
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=student_collator,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"contrastive_loss", "feature_distillation_loss", "affinity_distillation_loss"} <= set(logged[-1])

    checkpoint = Path(args.output_dir) / "checkpoint-12"
    saved = load_file(checkpoint / "model.safetensors")
    assert set(saved) == set(student.state_dict())  # the student and its projections only
    assert not any(name.startswith("teacher") or "text_model.encoder.layers" in name for name in saved)
    # The checkpoint loads as a plain BreezeCLIP, the projections dropped.
    loaded = BreezeCLIPModel.from_pretrained(checkpoint)
    for name, tensor in student.breezeclip.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_precomputed_teacher_embeddings_train_like_the_online_teacher(
    tmp_path, teacher_and_processor, student_collator
):
    teacher, teacher_processor = teacher_and_processor
    dataset = make_caption_dataset()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    precomputed = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=3, cache_dir=str(cache_dir))
    with torch.no_grad():
        inputs = teacher_processor(images=list(dataset["image"]), text=list(dataset["caption"]), padding=True, return_tensors="pt")
        expected = teacher.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(torch.tensor(precomputed["teacher_image_embeds"]), expected, rtol=1e-5, atol=1e-5)

    # A second call reads the cache instead of running the teacher; other teacher weights miss it.
    calls = []
    hook = teacher.vision_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        again = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=3, cache_dir=str(cache_dir))
        assert not calls
        assert again["teacher_text_embeds"] == precomputed["teacher_text_embeds"]
        other_teacher, _ = make_tiny_clip_teacher(projection_dim=20)
        other_teacher.vision_model.register_forward_hook(lambda *_: calls.append(1))
        precompute_teacher_embeddings(dataset, other_teacher, teacher_processor, batch_size=3, cache_dir=str(cache_dir))
        assert calls
    finally:
        hook.remove()

    image_processor, tokenizer = make_breezeclip_processing()
    offline_collator = BreezeCLIPDistillationCollator(image_processor, tokenizer)
    weights = []
    for train_dataset, collator, trainer_teacher in [
        (dataset, student_collator, teacher),
        (precomputed, offline_collator, None),
    ]:
        student = make_student(teacher_projection_dim=20)
        trainer = BreezeCLIPDistillationTrainer(
            model=student,
            # SGD: Adam's first steps are sign-like and would blow float rounding up on near-zero gradients.
            args=distillation_args(tmp_path, affinity_distillation_weight=1.0, optim="sgd", learning_rate=0.05),
            teacher=trainer_teacher,
            train_dataset=train_dataset,
            data_collator=collator,
        )
        trainer.train()
        weights.append(student.state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5)


class StopAtStep(TrainerCallback):
    """Stops training after `step` optimizer steps, as if the run were killed right after its checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def assert_resumed_run_matches(make_trainer, tmp_path: Path):
    """Train 6 steps; then train with a stop at step 3 (its checkpoint saved), resume it, and compare weights."""
    uninterrupted = make_trainer(tmp_path / "uninterrupted")
    uninterrupted.train()

    killed = make_trainer(tmp_path / "resumed")
    killed.add_callback(StopAtStep(3))
    killed.train()
    assert killed.state.global_step == 3
    resumed = make_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6

    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-6, atol=1e-6, msg=f"{name} differs")


def test_distillation_resumes_to_the_same_weights(tmp_path, teacher_and_processor, student_collator):
    teacher, _ = teacher_and_processor
    dataset = make_caption_dataset(12)

    def make_trainer(output_dir):
        args = distillation_args(
            tmp_path, output_dir=str(output_dir), save_strategy="steps", save_steps=3, num_train_epochs=2, max_steps=-1
        )
        return BreezeCLIPDistillationTrainer(
            model=make_student(teacher_projection_dim=20),
            args=args,
            teacher=teacher,
            train_dataset=dataset,
            data_collator=student_collator,
        )

    assert_resumed_run_matches(make_trainer, tmp_path)


# Stage 2.


def test_vqa_collator_masks_everything_but_the_answer():
    model, processor = make_model_and_processor()
    collator = BcQLMVQACollator(processor)
    rows = [
        {"image": make_image(), "question": "What colour is the car?", "answer": "The car is red."},
        {"image": make_image(seed=1), "question": "Is it raining?", "answer": "Yes"},
    ]
    batch = collator(rows)
    tokenizer = processor.tokenizer
    assert tokenizer.padding_side == "left"  # for generation: the collator pads on the right all the same
    assert list(batch) == [
        "input_ids", "attention_mask", "labels", "question_input_ids", "question_attention_mask", "pixel_values",
        "image_indices",
    ]  # fmt: skip
    assert all(batch[key].dtype == torch.long for key in batch if key != "pixel_values")
    for index, row in enumerate(rows):
        prompt_ids = processor(images=row["image"], text=row["question"], return_tensors="pt")["input_ids"][0]
        length = int(batch["attention_mask"][index].sum())
        ids = batch["input_ids"][index]
        assert batch["attention_mask"][index, :length].all()  # right-padded
        assert (ids[length:] == tokenizer.pad_token_id).all()
        assert ids[: len(prompt_ids)].tolist() == prompt_ids.tolist()
        answer_positions = batch["labels"][index] != -100
        assert answer_positions.nonzero().min() == len(prompt_ids)
        assert tokenizer.decode(batch["labels"][index][answer_positions]) == " " + row["answer"] + tokenizer.eos_token
        assert (batch["labels"][index][answer_positions] == ids[answer_positions]).all()
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["image_indices"].tolist() in ([0, 1], [1, 0])
    expected = processor(images=[row["image"] for row in rows], text=[row["question"] for row in rows], return_tensors="pt")
    assert torch.equal(batch["question_input_ids"], expected["question_input_ids"])
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])

    # The loss on the right-padded batch is the loss of each example alone.
    with torch.no_grad():
        batch_loss = model(**batch).loss
        single = [collator([row]) for row in rows]
        per_example = [model(**example).loss * (example["labels"] != -100).sum() for example in single]
    num_answer_tokens = (batch["labels"] != -100).sum()
    torch.testing.assert_close(batch_loss, sum(per_example) / num_answer_tokens, rtol=1e-5, atol=1e-6)


def vqa_args(output_dir, **kwargs) -> TrainingArguments:
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        max_steps=8,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    return TrainingArguments(**{**defaults, **kwargs})


def test_freeze_for_stage2_trains_only_adapter_and_qgcam():
    model, processor = make_model_and_processor()
    freeze_for_stage2(model)
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"visual_adapter", "qgcam"}

    model.train()
    assert model.model.qgcam.training
    assert not model.model.breezeclip.training and not model.model.language_model.training
    batch_norm = next(m for m in model.model.breezeclip.modules() if isinstance(m, nn.BatchNorm2d))
    stats = batch_norm.running_mean.clone()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = processor(images=[make_image(), make_image(seed=1)], text=["What is it?", "Is it red?"], return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    model(**inputs, labels=labels).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {name.split(".")[1] for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"visual_adapter", "qgcam"}
    assert torch.equal(batch_norm.running_mean, stats)

    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert model.model.breezeclip.training


@pytest.mark.parametrize("decoder", ["adapters", "trained"])
def test_freeze_for_stage2_decoder_options(decoder):
    model, processor = make_model_and_processor()
    freeze_for_stage2(model, decoder=decoder)
    trainable = {name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad}  # the head is tied
    assert trainable == {"visual_adapter", "qgcam"} | ({"language_model"} if decoder == "trained" else set())
    model.train()
    assert model.model.language_model.training and not model.model.breezeclip.training
    with pytest.raises(ValueError, match="'frozen', 'adapters' or 'trained'"):
        freeze_for_stage2(model, decoder="lora")


def test_vqa_collator_holds_each_image_once_with_the_same_loss_and_gradients(monkeypatch):
    model, processor = make_model_and_processor()
    model.eval()  # the tower's batch-norm statistics are then the same whatever else the batch holds
    # Equal images, not the same objects: a dataset decodes each row's image anew.
    questions = [(0, "What colour is it?"), (1, "Is it red?"), (0, "How many are there?"), (1, "What shape is it?")]
    rows = [{"image": make_image(seed=seed), "question": question, "answer": "red"} for seed, question in questions]
    processed = []
    process_image = type(processor.image_processor).process_image
    monkeypatch.setattr(
        type(processor.image_processor),
        "process_image",
        lambda self, image, *args, **kwargs: processed.append(image) or process_image(self, image, *args, **kwargs),
    )
    shared = BcQLMVQACollator(processor)(rows)
    assert len(processed) == 2  # each distinct image processed once
    separate = BcQLMVQACollator(processor, deduplicate_images=False)(rows)
    assert len(shared["pixel_values"]) == 2 and len(separate["pixel_values"]) == 4 and "image_indices" not in separate
    assert shared["image_indices"].tolist() == [0, 1, 0, 1]
    assert torch.equal(shared["pixel_values"][shared["image_indices"]], separate["pixel_values"])

    tower = model.model.breezeclip.vision_model
    tower_batch_sizes = []
    tower.conv_stem.register_forward_hook(lambda module, args, output: tower_batch_sizes.append(len(args[0])))

    def loss_and_tower_gradients(batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), torch.cat([parameter.grad.flatten() for parameter in tower.parameters()])

    shared_loss, shared_gradients = loss_and_tower_gradients(shared)
    separate_loss, separate_gradients = loss_and_tower_gradients(separate)
    assert tower_batch_sizes == [2, 4]
    torch.testing.assert_close(shared_loss, separate_loss)
    # The copies' gradients add up in the one tower pass, as if each copy had run on its own.
    torch.testing.assert_close(shared_gradients, separate_gradients, atol=1e-5, rtol=1e-4)


def test_precomputed_vision_features_run_the_tower_once_per_image_and_train_as_the_images(tmp_path):
    model, processor = make_model_and_processor()
    freeze_for_stage2(model, decoder="trained")
    # Four images, two questions each, as the rows of a VQA dataset; equal images decoded anew from each row.
    dataset = datasets.Dataset.from_dict(
        {
            "image": [make_image(seed=index // 2) for index in range(8)],
            "question": ["What colour is the car?", "Is it red?"] * 4,
            "answer": [COLOURS[index % 4] for index in range(8)],
        }
    )
    tower_batch_sizes = []
    hook = model.model.breezeclip.vision_model.conv_stem.register_forward_hook(
        lambda module, args, output: tower_batch_sizes.append(len(args[0]))
    )
    precomputed = precompute_vision_features(dataset, model, processor, batch_size=8)
    hook.remove()
    assert tower_batch_sizes == [4] and "image" not in precomputed.column_names
    pixel_values = processor.image_processor(make_image(seed=3), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.model.get_vision_features(pixel_values)[0]
    torch.testing.assert_close(torch.tensor(precomputed[7]["vision_features"]), expected, atol=1e-5, rtol=1e-4)

    collator = BcQLMVQACollator(processor)
    from_images, from_features = collator([dataset[i] for i in range(6)]), collator([precomputed[i] for i in range(6)])
    assert "pixel_values" not in from_features and len(from_features["vision_features"]) == 3
    for key in ("input_ids", "attention_mask", "labels", "question_input_ids", "question_attention_mask", "image_indices"):
        assert torch.equal(from_features[key], from_images[key]), key

    def trained_weights(train_dataset, output_dir):
        torch.manual_seed(0)
        trained, _ = make_model_and_processor()
        freeze_for_stage2(trained, decoder="trained")
        Trainer(model=trained, args=vqa_args(output_dir), train_dataset=train_dataset, data_collator=collator).train()
        return trained.state_dict()

    with_images, with_features = trained_weights(dataset, tmp_path / "a"), trained_weights(precomputed, tmp_path / "b")
    assert not torch.equal(with_images["model.visual_adapter.weight"], model.state_dict()["model.visual_adapter.weight"])
    for name, tensor in with_features.items():
        torch.testing.assert_close(tensor, with_images[name], atol=1e-5, rtol=1e-4, msg=name)


def test_vision_features_answer_as_the_pixels_and_input_errors():
    model, processor = make_model_and_processor()
    inputs = processor(images=make_image(), text="What is it?", return_tensors="pt")
    vision_features = model.model.get_vision_features(inputs["pixel_values"])
    feature_inputs = processor(vision_features=vision_features, text="What is it?", return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        answer = model.generate(**feature_inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(answer, expected)
    with pytest.raises(ValueError, match="one of `pixel_values`, `vision_features` or `image_features`"):
        model(**inputs, vision_features=vision_features)
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match=r"`vision_features` must have shape \(num_images, "):
        model(**inputs, vision_features=vision_features[:, :-1])
    with pytest.raises(ValueError, match="no 'picture' column"):
        precompute_vision_features(make_vqa_dataset(2), model, processor, image_column="picture")


def test_stage2_trains_only_the_adapter_and_qgcam(tmp_path):
    model, processor = make_model_and_processor(std=0.05)
    freeze_for_stage2(model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    dataset = make_vqa_dataset()
    collator = BcQLMVQACollator(processor)
    trainer = Trainer(
        model=model, args=vqa_args(tmp_path), train_dataset=dataset, eval_dataset=dataset, data_collator=collator
    )
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < loss_before
    for name, tensor in model.state_dict().items():
        trained = name.startswith(("model.visual_adapter.", "model.qgcam."))
        assert torch.equal(tensor, before[name]) != trained, name


def test_lora_trains_the_decoder_adapters_and_merges(tmp_path):
    model, processor = make_model_and_processor(std=0.05)
    base_decoder = {name: tensor.clone() for name, tensor in model.model.language_model.state_dict().items()}
    peft_model = add_decoder_lora(model, r=4, lora_alpha=8)
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    assert any("lora_" in name and "language_model" in name for name in trainable)
    assert not any("lora_" in name and "qgcam" in name for name in trainable)  # Q-GCAM trains fully, no LoRA in it
    assert not any("breezeclip" in name for name in trainable)
    assert any("qgcam" in name for name in trainable) and any("visual_adapter" in name for name in trainable)

    dataset = make_vqa_dataset()
    trainer = Trainer(
        model=peft_model,
        args=vqa_args(tmp_path),
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=BcQLMVQACollator(processor),
    )
    loss_before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < loss_before

    batch = BcQLMVQACollator(processor)([dataset[0], dataset[1]])
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        assert type(merged).__name__ == "BcQLMForConditionalGeneration"
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)
    changed = [name for name, tensor in merged.model.language_model.state_dict().items() if not torch.equal(tensor, base_decoder[name])]
    assert changed and all(name.endswith("proj.weight") for name in changed)


def test_vqa_training_resumes_to_the_same_weights(tmp_path):
    dataset = make_vqa_dataset(12)

    def make_trainer(output_dir):
        model, processor = make_model_and_processor(std=0.05)
        freeze_for_stage2(model)
        args = vqa_args(output_dir, max_steps=-1, num_train_epochs=2, save_strategy="steps", save_steps=3)
        return Trainer(model=model, args=args, train_dataset=dataset, data_collator=BcQLMVQACollator(processor))

    assert_resumed_run_matches(make_trainer, tmp_path)


# Patch distillation: the teacher's patch tokens, pooled to the student's grid, teach each cell of the tower.


def make_patch_student(seed: int = 0) -> BreezeCLIPForDistillation:
    torch.manual_seed(seed)
    return BreezeCLIPForDistillation(tiny_breezeclip_config(), teacher_projection_dim=20, teacher_patch_dim=32)


def test_pool_patch_tokens_drops_the_class_token_and_averages_cells():
    patches = torch.arange(16.0).reshape(1, 16, 1)  # a 4 x 4 grid, row-major
    tokens = torch.cat([torch.full((1, 1, 1), -100.0), patches], dim=1)  # class token first
    pooled = pool_patch_tokens(tokens, 2)
    assert pooled.shape == (1, 4, 1)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    torch.testing.assert_close(pool_patch_tokens(patches, 4), patches)


def test_patch_distillation_loss_by_hand():
    teacher = torch.tensor([[[1.0, 0.0]], [[5.0, 0.0]]])  # two images of one cell (a 1 x 1 grid), two dimensions
    # Standardised over the batch's cells: dimension 0 (1, 5) -> (-2, 2) / std; the constant dimension 1 -> 0.
    std = torch.tensor([1.0, 5.0]).std()
    target = torch.tensor([[[-2.0 / std, 0.0]], [[2.0 / std, 0.0]]])
    assert patch_distillation_loss(torch.zeros(2, 1, 2), teacher).item() == pytest.approx(target.square().mean().item())
    assert patch_distillation_loss(target, teacher).item() == pytest.approx(0.0, abs=1e-8)


def test_student_patch_map_and_total_loss(tmp_path, teacher_and_processor, student_collator):
    teacher, _ = teacher_and_processor
    batch = student_collator([make_caption_dataset()[index] for index in range(4)])
    student = make_patch_student().eval()
    with torch.no_grad():
        outputs = student(
            input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
        )
        teacher_tokens = teacher.get_image_features(pixel_values=batch["teacher_pixel_values"]).last_hidden_state
    grid = int(outputs.patch_distillation_embeds.shape[1] ** 0.5)
    assert outputs.patch_distillation_embeds.shape == (4, grid * grid, 32)
    expected = 2.0 * patch_distillation_loss(outputs.patch_distillation_embeds, teacher_tokens)
    args = distillation_args(
        tmp_path, contrastive_weight=0.0, feature_distillation_weight=0.0, patch_distillation_weight=2.0
    )
    trainer = BreezeCLIPDistillationTrainer(model=student, args=args, teacher=teacher, data_collator=student_collator)
    with torch.no_grad():
        assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)
    trainer = BreezeCLIPDistillationTrainer(
        model=BreezeCLIPForDistillation(tiny_breezeclip_config(), teacher_projection_dim=20), args=args, teacher=teacher
    )
    with pytest.raises(ValueError, match="teacher_patch_dim"):
        trainer.compute_loss(trainer.model, dict(batch))


def test_precomputed_patch_tokens_train_like_the_online_teacher(tmp_path, teacher_and_processor, student_collator):
    teacher, teacher_processor = teacher_and_processor
    dataset = make_caption_dataset()
    student_inputs = {key: value for key, value in student_collator([dataset[0]]).items() if "teacher" not in key}
    with torch.no_grad():
        grid = int(make_patch_student().eval()(**student_inputs).patch_distillation_embeds.shape[1] ** 0.5)
    precomputed = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=3, patch_grid=grid)
    assert torch.tensor(precomputed["teacher_patch_embeds"]).shape == (len(dataset), grid * grid, 32)
    without = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=3)
    assert "teacher_patch_embeds" not in without.column_names

    image_processor, tokenizer = make_breezeclip_processing()
    offline_collator = BreezeCLIPDistillationCollator(image_processor, tokenizer)
    args = dict(contrastive_weight=0.0, patch_distillation_weight=1.0, optim="sgd", learning_rate=0.05)
    weights = []
    runs = [(dataset, student_collator, teacher), (precomputed, offline_collator, None)]
    for train_dataset, collator, trainer_teacher in runs:
        model = make_patch_student()
        trainer = BreezeCLIPDistillationTrainer(
            model=model,
            args=distillation_args(tmp_path, **args),
            teacher=trainer_teacher,
            train_dataset=train_dataset,
            data_collator=collator,
        )
        trainer.train()
        assert "patch_distillation_loss" in [entry for entry in trainer.state.log_history if "loss" in entry][-1]
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5)
    trainer = BreezeCLIPDistillationTrainer(model=make_patch_student(), args=distillation_args(tmp_path, **args))
    with pytest.raises(ValueError, match="patch_grid"):
        trainer.compute_loss(trainer.model, offline_collator([without[index] for index in range(2)]))


def test_crop_window_pads_with_the_border_colour_and_cell_windows_tile_the_image():
    pixels = np.full((16, 16, 3), 100, dtype=np.uint8)
    pixels[0:2, 0:2] = (255, 0, 0)  # a red block in the top-left corner
    image = Image.fromarray(pixels)
    window = np.asarray(crop_window(image, (1, 1), 6))  # columns and rows -2..3: two of each outside the image
    assert window.shape == (6, 6, 3)
    assert (window[2:4, 2:4] == (255, 0, 0)).all()
    assert (window[:2] == 100).all() and (window[:, :2] == 100).all() and (window[4:, 4:] == 100).all()

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    windows = cell_windows(image, 2, 0.5)  # 2 x 2 cells of 4 px, windows of 4 px: the cells themselves
    quadrants = [(0, 0, 4, 4), (4, 0, 8, 4), (0, 4, 4, 8), (4, 4, 8, 8)]
    for window, box in zip(windows, quadrants):
        assert np.array_equal(np.asarray(window), np.asarray(image.crop(box)))


def test_object_windows_show_each_boxed_object_alone_on_the_cell_of_its_centre():
    pixels = np.full((16, 16, 3), 100, dtype=np.uint8)
    pixels[1:5, 1:5] = (255, 0, 0)  # a red block, its box centred at (3, 3): cell 0 of a 2 x 2 grid
    pixels[5:7, 5:8] = (0, 0, 255)  # a blue one beside it, overlapping the red one's window
    pixels[10:12, 10:12] = (0, 255, 0)  # a green one in cell 3, and a smaller box centred in the same cell
    boxes = [[1, 1, 5, 5], [5, 5, 8, 7], [10, 10, 12, 12], [9, 9, 10, 10]]
    windows = [np.asarray(window) for window in object_windows(Image.fromarray(pixels), boxes, 2, 0.5)]
    assert [window.shape for window in windows] == [(8, 8, 3)] * 4
    # Columns and rows -1..6 around (3, 3): the red block at 2..5, the blue block's pixels blanked.
    expected = np.full((8, 8, 3), 100, dtype=np.uint8)
    expected[2:6, 2:6] = (255, 0, 0)
    assert np.array_equal(windows[0], expected)
    # The blue block's box is centred at (6.5, 6): cell 0 too, where the larger red box wins; no box in cells 1, 2.
    assert (windows[1] == 100).all() and (windows[2] == 100).all()
    assert (windows[3] == (0, 255, 0)).all(-1).sum() == 4 and (windows[3] != 100).any(-1).sum() == 4


def test_precomputed_object_window_embeddings_are_the_teachers(teacher_and_processor):
    teacher, teacher_processor = teacher_and_processor
    dataset = make_caption_dataset(4).add_column("boxes", [[[2.0, 3.0, 14.0, 12.0]], [], [[20, 4, 38, 30]], []])
    precomputed = precompute_teacher_embeddings(dataset, teacher, teacher_processor, crop_grid=2, box_column="boxes")
    crops = torch.tensor(precomputed["teacher_crop_embeds"])
    for index in (0, 1):
        image = dataset[index]["image"].convert("RGB")
        windows = object_windows(image, dataset[index]["boxes"], 2, 0.5)
        pixel_values = teacher_processor(images=windows, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = teacher.get_image_features(pixel_values=pixel_values).pooler_output
        torch.testing.assert_close(crops[index], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(crops[0, 0], crops[0, 1])  # the boxed object's cell and a blank one
    with pytest.raises(ValueError, match="no 'regions' column"):
        precompute_teacher_embeddings(dataset, teacher, teacher_processor, crop_grid=2, box_column="regions")


def test_crop_distillation_loss_by_hand():
    teacher = torch.tensor([[[1.0, 2.0]], [[5.0, 2.0]]])  # two images of one cell, two dimensions
    std = torch.tensor([1.0, 5.0]).std()
    target = torch.tensor([[[-2.0 / std, 0.0]], [[2.0 / std, 0.0]]])
    assert crop_distillation_loss(torch.zeros(2, 1, 2), teacher).item() == pytest.approx(target.square().mean().item())
    assert crop_distillation_loss(target, teacher).item() == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="crop_grid"):
        crop_distillation_loss(torch.zeros(2, 4, 2), teacher)


def test_precomputed_window_embeddings_are_the_teachers_and_train_the_cells(
    tmp_path, teacher_and_processor, student_collator
):
    teacher, teacher_processor = teacher_and_processor
    dataset = make_caption_dataset()
    student = make_student(teacher_projection_dim=20)
    inputs = {key: value for key, value in student_collator([dataset[0]]).items() if "teacher" not in key}
    with torch.no_grad():
        cells = student.eval()(**inputs).crop_distillation_embeds
    grid = math.isqrt(cells.shape[1])
    assert cells.shape == (1, grid * grid, 20)
    precomputed = precompute_teacher_embeddings(
        dataset, teacher, teacher_processor, batch_size=3, crop_grid=grid, crop_window=0.5
    )
    crops = torch.tensor(precomputed["teacher_crop_embeds"])
    assert crops.shape == (len(dataset), grid * grid, 20)
    image = dataset[5]["image"].convert("RGB")
    windows = teacher_processor(images=cell_windows(image, grid, 0.5), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = teacher.get_image_features(pixel_values=windows).pooler_output
    torch.testing.assert_close(crops[5], expected, rtol=1e-4, atol=1e-5)

    image_processor, tokenizer = make_breezeclip_processing()
    collator = BreezeCLIPDistillationCollator(image_processor, tokenizer)
    args = distillation_args(
        tmp_path, contrastive_weight=0.0, feature_distillation_weight=0.0, crop_distillation_weight=1.0, max_steps=8
    )
    trainer = BreezeCLIPDistillationTrainer(
        model=student.train(), args=args, train_dataset=precomputed, data_collator=collator
    )
    trainer.train()
    losses = [entry["crop_distillation_loss"] for entry in trainer.state.log_history if "crop_distillation_loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    without = precompute_teacher_embeddings(dataset, teacher, teacher_processor, batch_size=3)
    with pytest.raises(ValueError, match="crop_grid"):
        trainer.compute_loss(trainer.model, collator([without[index] for index in range(2)]))
