"""The ONNX Runtime engine: `export_onnx`, `BcQLMOnnxForConditionalGeneration` and `bcqlm export` / `ask --model`."""

import json
import shlex

import onnx
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoProcessor

from modeling_bcqlm import DEFAULT_MODEL, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.cli.main import main
from modeling_bcqlm.data.synthetic_shapes import make_synthetic_vqa
from modeling_bcqlm.engines.onnx_export import export_onnx
from modeling_bcqlm.engines.onnx_model import BcQLMOnnxForConditionalGeneration, is_onnx_folder
from modeling_bcqlm.pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline

from .helpers import make_model_and_processor
from .test_default_model import EXAMPLE_IMAGE, ROOT


QUESTIONS = ["what colour is the car?", "how many dogs are there?", "is it raining?", "where is the cat sitting?"]


@pytest.fixture(scope="module")
def model_and_processor():
    """A tiny BcQLM whose decoder heads are 16 wide: ONNX Runtime's `GroupQueryAttention` takes multiples of 16."""
    return make_model_and_processor(seed=7, text_config={"num_attention_heads": 2, "num_key_value_heads": 1})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, model_and_processor):
    folder = tmp_path_factory.mktemp("tiny")
    for part in model_and_processor:
        part.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_folder):
    """The tiny model exported at each precision: {precision: folder}."""
    root = tmp_path_factory.mktemp("exports")
    return {precision: export_onnx(tiny_folder, root / precision, precision) for precision in ("fp32", "int8", "int4")}


def without_dtype(config: dict) -> dict:
    """A config dict without its `dtype` entries (loading the model sets them)."""
    return {key: without_dtype(value) if isinstance(value, dict) else value for key, value in config.items() if key != "dtype"}


def random_image(seed: int):
    return (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8).numpy()


def image_inputs(processor, question: str, seed: int) -> dict:
    return processor(images=random_image(seed), text=question, return_tensors="pt")


def test_fp32_export_answers_exactly_as_pytorch(model_and_processor, exports):
    model, processor = model_and_processor
    engine = BcQLMOnnxForConditionalGeneration.from_pretrained(exports["fp32"])
    answers = set()
    for seed, question in enumerate(QUESTIONS):
        inputs = image_inputs(processor, question, seed)
        expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert torch.equal(engine.generate(**inputs, max_new_tokens=6), expected), question
        answers.add(tuple(expected[0, inputs["input_ids"].shape[1] :].tolist()))
    assert len(answers) > 1  # the inputs lead to different answers: the image and question reach the decoder
    # The prefill computes the last position's logits only, those of PyTorch.
    with torch.no_grad():
        logits = engine(**inputs).logits
        assert logits.shape == (1, 1, model.config.text_config.vocab_size)
        torch.testing.assert_close(logits[:, -1], model(**inputs).logits[:, -1], atol=1e-4, rtol=1e-4)


def test_exported_folder_is_a_bcqlm_folder_with_an_onnx_decoder(tiny_folder, exports):
    folder = exports["int4"]
    assert is_onnx_folder(folder) and not is_onnx_folder(tiny_folder)
    exported, original = AutoConfig.from_pretrained(folder), AutoConfig.from_pretrained(tiny_folder)
    assert type(exported) is type(original) and exported.image_token_id == original.image_token_id
    for name in ("text_config", "breezeclip_config", "qgcam_config"):
        assert without_dtype(getattr(exported, name).to_dict()) == without_dtype(getattr(original, name).to_dict())
    assert type(AutoProcessor.from_pretrained(folder)) is BcQLMProcessor
    with safe_open(folder / "front.safetensors", "pt") as weights:
        names = set(weights.keys())
    assert "language_model.embed_tokens.weight" in names and any(name.startswith("breezeclip.") for name in names)
    assert not any(".layers." in name and name.startswith("language_model.") for name in names)
    genai = json.loads((folder / "onnx" / "genai_config.json").read_text())["model"]["decoder"]
    assert "inputs_embeds" in genai["inputs"] and "input_ids" not in genai["inputs"]


@pytest.mark.parametrize("precision, quantized", [("fp32", False), ("int8", True), ("int4", True)])
def test_quantized_exports_hold_quantized_matmuls_and_answer(precision, quantized, model_and_processor, exports):
    graph = onnx.load(exports[precision] / "onnx" / "model.onnx", load_external_data=False).graph
    assert any(node.op_type == "MatMulNBits" for node in graph.node) == quantized
    _, processor = model_and_processor
    inputs = image_inputs(processor, QUESTIONS[0], seed=0)
    generated = BcQLMOnnxForConditionalGeneration.from_pretrained(exports[precision]).generate(**inputs, max_new_tokens=4)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert 1 <= generated.shape[1] - inputs["input_ids"].shape[1] <= 4


def test_a_left_padded_batch_answers_as_its_prompts_one_by_one(model_and_processor, exports):
    model, processor = model_and_processor
    engine = BcQLMOnnxForConditionalGeneration.from_pretrained(exports["fp32"])
    images = [random_image(seed) for seed in range(len(QUESTIONS))]
    batch = processor(images=images, text=QUESTIONS, return_tensors="pt")
    assert not batch["attention_mask"].all()  # questions of different lengths: left padding
    generated = engine.generate(**batch, max_new_tokens=6)
    width = batch["input_ids"].shape[1]
    assert torch.equal(generated[:, :width], batch["input_ids"])
    pad = model.generation_config.pad_token_id
    for row, (image, question) in enumerate(zip(images, QUESTIONS)):
        single = processor(images=[image], text=question, return_tensors="pt")
        expected = model.generate(**single, max_new_tokens=6, do_sample=False)[0, single["input_ids"].shape[1] :]
        answer = generated[row, width:].tolist()
        assert answer[: len(expected)] == expected.tolist() and set(answer[len(expected) :]) <= {pad}, question


@pytest.mark.parametrize("top_k", [1, 3])
def test_vqa_pipeline_answers_and_scores_as_with_pytorch(top_k, model_and_processor, exports):
    model, processor = model_and_processor
    engine = BcQLMOnnxForConditionalGeneration.from_pretrained(exports["fp32"])
    images = [Image.fromarray(random_image(seed)) for seed in range(2)]
    expected = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)
    onnx = BcQLMVisualQuestionAnsweringPipeline(model=engine, processor=processor)
    for image, question in zip(images, QUESTIONS):
        answers = onnx(image=image, question=question, top_k=top_k, max_new_tokens=5)
        reference = expected(image=image, question=question, top_k=top_k, max_new_tokens=5)
        assert [answer["answer"] for answer in answers] == [answer["answer"] for answer in reference]
        assert [answer["score"] for answer in answers] == pytest.approx([a["score"] for a in reference], rel=1e-4)


def test_streamer_gets_the_prompt_then_each_new_token(model_and_processor, exports):
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, ids):
            self.chunks.append(ids.tolist())

        def end(self):
            self.ended = True

    _, processor = model_and_processor
    inputs = image_inputs(processor, QUESTIONS[1], seed=1)
    streamer = Collect()
    generated = BcQLMOnnxForConditionalGeneration.from_pretrained(exports["fp32"]).generate(
        **inputs, max_new_tokens=5, streamer=streamer
    )
    prompt_length = inputs["input_ids"].shape[1]
    assert streamer.chunks[0] == inputs["input_ids"].tolist() and streamer.ended
    assert [token for [token] in streamer.chunks[1:]] == generated[0, prompt_length:].tolist()


def test_batches_padding_and_bad_folders_get_clear_errors(model_and_processor, exports, tiny_folder, tmp_path):
    _, processor = model_and_processor
    engine = BcQLMOnnxForConditionalGeneration.from_pretrained(exports["fp32"])
    batch = processor(images=[EXAMPLE_IMAGE] * 2, text=["is it red?", "how many shapes are there?"], return_tensors="pt")
    with pytest.raises(ValueError, match="streams and scores unpadded prompts: pass one question at a time"):
        engine.generate(**batch, streamer=object())
    with pytest.raises(ValueError, match="is not a folder written by `export_onnx`"):
        BcQLMOnnxForConditionalGeneration.from_pretrained(tiny_folder)
    (tmp_path / "kept.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="is not empty"):
        export_onnx(tiny_folder, tmp_path, "int4")
    assert (tmp_path / "kept.txt").read_text() == "a user's file"
    with pytest.raises(ValueError, match="precision must be one of int4, int8, fp32"):
        export_onnx(tiny_folder, tmp_path / "new", "int3")


def test_bcqlm_export_then_ask_answers_as_the_pytorch_model(tmp_path, capsys):
    main(["export", "--precision", "fp32", "--output", str(tmp_path / "onnx")])
    assert f"ask with --model {tmp_path / 'onnx'}" in capsys.readouterr().out
    model, processor = BcQLMForConditionalGeneration.from_pretrained(DEFAULT_MODEL), BcQLMProcessor.from_pretrained(DEFAULT_MODEL)
    rows = make_synthetic_vqa(3, seed=5, split="test")
    for row in rows.select(range(6)):
        row["image"].save(tmp_path / "scene.png")
        inputs = processor(images=row["image"], text=row["question"], return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1] :]
        main(["ask", "--model", str(tmp_path / "onnx"), "--image", str(tmp_path / "scene.png"),
              "--question", row["question"], "--max_new_tokens", "8"])  # fmt: skip
        expected = processor.post_process_image_text_to_text(generated)[0].strip() + "\n"
        assert capsys.readouterr().out == expected
        main(["ask", "--model", str(tmp_path / "onnx"), "--image", str(tmp_path / "scene.png"),
              "--question", row["question"], "--max_new_tokens", "8", "--stream"])  # fmt: skip
        assert capsys.readouterr().out == expected
    main(["ask", "--model", str(tmp_path / "onnx"), "--image", str(EXAMPLE_IMAGE), "--question", "is it red?", "--top_k", "2"])
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and 1.0 >= float(lines[0][0]) >= float(lines[1][0]) > 0.0  # scored answers, by beam search


def test_readme_export_and_ask_commands(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### On ONNX Runtime", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    export, ask = [shlex.split(line) for line in block.strip().splitlines()]
    assert export[:2] == ["bcqlm", "export"] and ask[:2] == ["bcqlm", "ask"]
    monkeypatch.chdir(tmp_path)  # the exported folder is written here
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    main(export[1:])
    capsys.readouterr()
    main(ask[1:] + ["--no_notice"])
    answer = capsys.readouterr().out
    main(ask[1:] + ["--no_notice"] + ["--model", DEFAULT_MODEL])  # the PyTorch model the folder was exported from
    assert answer == capsys.readouterr().out == "no\n"  # the example scene has no large yellow triangle
