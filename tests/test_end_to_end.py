"""Processor and model together: generation, chat messages, save/load and Hub remote code."""

import json
import os
import textwrap

import torch
from transformers import AutoModel, AutoProcessor

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.export import save_hub_folder

from .helpers import make_image, make_model_and_processor, run_python


QUESTIONS = ["What colour is the car?", "How many dogs are in the picture on the grass?"]

REMOTE_ANSWER = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    folder, image_path, questions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    assert type(processor.image_processor).__module__.startswith("transformers_modules.")
    image = Image.open(image_path)
    inputs = processor(images=[image] * len(questions), text=questions, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    print(json.dumps(processor.post_process_image_text_to_text(generated)))
    """
)


def generate_answers(model, processor, images, questions, **kwargs):
    inputs = processor(images=images, text=questions, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)
    return generated, inputs["input_ids"].shape[1], processor.post_process_image_text_to_text(generated)


def test_batched_generation_equals_one_by_one_and_decodes_the_answer_only():
    model, processor = make_model_and_processor()
    images = [make_image(seed=1), make_image(seed=2)]
    generated, prompt_length, answers = generate_answers(model, processor, images, QUESTIONS)
    new_tokens = generated[:, prompt_length:]
    assert answers == [text.strip() for text in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    for index in range(2):
        alone, alone_length, alone_answers = generate_answers(model, processor, images[index], QUESTIONS[index])
        assert torch.equal(alone[0, alone_length:], new_tokens[index])
        assert alone_answers == [answers[index]]


def test_chat_messages_generate_like_the_bare_question():
    model, processor = make_model_and_processor()
    image = make_image(seed=3)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTIONS[0]}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    direct = processor(images=image, text=QUESTIONS[0], return_tensors="pt")
    for key in ("input_ids", "pixel_values", "question_input_ids"):
        assert torch.equal(inputs[key], direct[key]), key
    chat_generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(chat_generated, model.generate(**direct, max_new_tokens=6, do_sample=False))


def test_processor_and_model_round_trip(tmp_path):
    model, processor = make_model_and_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_bcqlm.BcQLMProcessor"
    assert {"processing_bcqlm.py", "image_processing_bcqlm.py"} <= set(os.listdir(tmp_path))
    assert (tmp_path / "question_tokenizer").is_dir()

    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    loaded_model = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded_processor, BcQLMProcessor) and isinstance(loaded_model, BcQLMForConditionalGeneration)
    images = [make_image(seed=4), make_image(seed=4)]
    expected = generate_answers(model, processor, images, QUESTIONS)
    got = generate_answers(loaded_model, loaded_processor, images, QUESTIONS)
    assert torch.equal(got[0], expected[0]) and got[2] == expected[2]


def test_remote_code_answers_like_the_in_memory_model(tmp_path):
    model, processor = make_model_and_processor()
    folder = tmp_path / "bcqlm"
    save_hub_folder(model, processor, folder)
    image = make_image(seed=5)
    image.save(tmp_path / "image.png")
    result = run_python(
        "-c", REMOTE_ANSWER, folder, tmp_path / "image.png", json.dumps(QUESTIONS), cwd=tmp_path, without_package=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote_answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote_answers == generate_answers(model, processor, [image, image], QUESTIONS)[2]
