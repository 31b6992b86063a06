"""Tests of BcQLMImageProcessor and BcQLMProcessor, on tiny tokenizers built in memory."""

import logging
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from modeling_bcqlm.configuration_bcqlm import BcQLMConfig
from modeling_bcqlm.image_processing_bcqlm import BcQLMImageProcessor
from modeling_bcqlm.processing_bcqlm import BcQLMProcessor
from tests.helpers import BOS, EOS, make_decoder_tokenizer, make_image, make_processor, make_question_tokenizer


SIZE = 16
SEQ = 4


@pytest.fixture(scope="module")
def processor():
    return make_processor(image_size=SIZE, image_seq_length=SEQ)


@pytest.fixture(scope="module")
def image_processor():
    return BcQLMImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})


def pixels(image_processor, image) -> np.ndarray:
    """`pixel_values` of one image, (3, SIZE, SIZE)."""
    return image_processor(image, return_tensors="np")["pixel_values"][0]


def unpadded(ids, mask) -> list[int]:
    return [token for token, keep in zip(ids.tolist(), mask.tolist()) if keep]


def question_ids(processor, question: str) -> list[int]:
    return processor.question_tokenizer(question)["input_ids"]


# ---------------------------------------------------------------- image processor


def test_default_image_processor_is_clip_224():
    image_processor = BcQLMImageProcessor()
    assert image_processor.size == {"shortest_edge": 224}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert image_processor.resample == Image.Resampling.BICUBIC
    out = image_processor(make_image(size=(64, 48)), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 224, 224)


def test_image_values_are_clip_normalised(image_processor):
    # A constant image stays constant through resize and crop: value v gives (v / 255 - mean) / std.
    value = np.array([200, 100, 50])
    expected = (value / 255 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
        [0.26862954, 0.26130258, 0.27577711]
    )
    out = pixels(image_processor, Image.new("RGB", (30, 20), tuple(int(v) for v in value)))
    assert out.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-5)


@pytest.mark.parametrize(
    ("image", "rgb"),
    [
        (Image.new("RGBA", (20, 20), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("RGBA", (20, 20), (10, 20, 30, 0)), (255, 255, 255)),  # transparent: white background
        (Image.new("LA", (20, 20), (90, 255)), (90, 90, 90)),
        (Image.new("LA", (20, 20), (90, 0)), (255, 255, 255)),
        (Image.new("L", (20, 20), 77), (77, 77, 77)),
        (Image.new("1", (20, 20), 1), (255, 255, 255)),
        (Image.new("1", (20, 20), 0), (0, 0, 0)),
        (Image.new("CMYK", (20, 20), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (20, 20), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.new("I;16", (20, 20), 65535), (255, 255, 255)),
        (Image.new("I;16B", (20, 20), 65535), (255, 255, 255)),
        (Image.new("I;16", (20, 20), 128 * 257), (128, 128, 128)),
        (Image.new("I", (20, 20), 65535), (255, 255, 255)),
        (Image.new("I", (20, 20), 40), (40, 40, 40)),  # 8-bit values in a 32-bit image stay as they are
        (Image.new("F", (20, 20), 1.0), (255, 255, 255)),
        (Image.new("F", (20, 20), 0.5), (128, 128, 128)),
    ],
    ids=lambda value: getattr(value, "mode", None) or str(value),
)
def test_modes_convert_to_rgb(image_processor, image, rgb):
    assert pixels(image_processor, image).shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(
        pixels(image_processor, image), pixels(image_processor, Image.new("RGB", (20, 20), rgb))
    )


def test_palette_images_convert_to_rgb(image_processor):
    palette = [0, 0, 0] * 256
    palette[3:6] = [200, 10, 60]  # index 1
    opaque = Image.new("P", (20, 20), 1)
    opaque.putpalette(palette)
    transparent = opaque.copy()
    transparent.info["transparency"] = 1
    red = Image.new("RGB", (20, 20), (200, 10, 60))
    white = Image.new("RGB", (20, 20), (255, 255, 255))
    np.testing.assert_allclose(pixels(image_processor, opaque), pixels(image_processor, red))
    np.testing.assert_allclose(pixels(image_processor, transparent), pixels(image_processor, white))


def test_16_bit_image_is_rescaled_not_clipped(image_processor):
    # PIL's own conversion clips 16-bit values: 1000 and 65535 would both become 255.
    dark, bright = Image.new("I;16", (20, 20), 1000), Image.new("I;16", (20, 20), 65535)
    assert not np.allclose(pixels(image_processor, dark), pixels(image_processor, bright))
    np.testing.assert_allclose(
        pixels(image_processor, dark), pixels(image_processor, Image.new("L", (20, 20), round(1000 * 255 / 65535)))
    )


def test_grayscale_gives_equal_channels():
    image_processor = BcQLMImageProcessor(size={"shortest_edge": SIZE}, crop_size=SIZE, do_normalize=False)
    out = pixels(image_processor, Image.new("L", (20, 20), 51))
    np.testing.assert_allclose(out, np.full((3, SIZE, SIZE), 51 / 255), atol=1e-6)


def test_arrays_tensors_and_pil_agree(image_processor):
    image = make_image(size=(20, 24))
    array = np.asarray(image)
    reference = pixels(image_processor, image)
    np.testing.assert_allclose(pixels(image_processor, array), reference)
    np.testing.assert_allclose(pixels(image_processor, array.transpose(2, 0, 1)), reference)
    np.testing.assert_allclose(pixels(image_processor, torch.from_numpy(array.transpose(2, 0, 1).copy())), reference)
    gray = np.full((20, 24), 77, dtype=np.uint8)  # (height, width)
    np.testing.assert_allclose(pixels(image_processor, gray), pixels(image_processor, Image.new("L", (24, 20), 77)))
    batch = image_processor(np.stack([array, array]), return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("shape", [(20, 24, 2), (5,), (1, 2, 20, 24, 3), (2, 20, 24, 7)])
def test_array_of_wrong_rank_or_channels(image_processor, shape):
    with pytest.raises(ValueError, match=rf"shape {re.escape(str(shape))}.*1, 3 or 4 channels"):
        image_processor(np.zeros(shape, dtype=np.uint8))


def test_unsupported_image_type(image_processor):
    with pytest.raises(ValueError, match="Unsupported image of type int: pass a PIL image"):
        image_processor(3)


def test_image_paths(image_processor, tmp_path):
    image = make_image(size=(30, 20))
    image.save(tmp_path / "image.png")
    reference = pixels(image_processor, image)
    np.testing.assert_allclose(pixels(image_processor, str(tmp_path / "image.png")), reference)
    np.testing.assert_allclose(pixels(image_processor, tmp_path / "image.png"), reference)  # os.PathLike
    out = image_processor([tmp_path / "image.png", image], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(out[0], out[1])


def test_16_bit_png_file(image_processor, tmp_path):
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_allclose(
        pixels(image_processor, tmp_path / "deep.png"), pixels(image_processor, Image.new("L", (20, 20), 255))
    )


def test_missing_path(image_processor, tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=rf"{path.name}' does not exist\. Pass the path of an image file"):
        image_processor(str(path))


def test_text_file_is_not_an_image(image_processor, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.txt' is not an image that PIL can read") as error:
        image_processor(tmp_path / "notes.txt")
    assert error.value.__cause__ is not None


def test_truncated_image_file(image_processor, tmp_path):
    make_image(size=(40, 40)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cut\.png' is corrupt or truncated") as error:
        image_processor(tmp_path / "cut.png")
    assert isinstance(error.value.__cause__, OSError)


def test_image_processor_save_load(tmp_path):
    image_processor = BcQLMImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    image_processor.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "preprocessor_config.json")
    reloaded = BcQLMImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == image_processor.to_dict()
    image = make_image()
    np.testing.assert_array_equal(
        reloaded(image, return_tensors="np")["pixel_values"],
        image_processor(image, return_tensors="np")["pixel_values"],
    )


# ---------------------------------------------------------------- processor: prompts


def test_image_token_added_to_decoder_tokenizer(processor):
    tokenizer = processor.tokenizer
    assert processor.image_token == "<image>"
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert processor.image_token_id == len(make_decoder_tokenizer())  # appended after the trained vocabulary
    assert tokenizer.encode("<image>", add_special_tokens=False) == [processor.image_token_id]
    added = tokenizer.added_tokens_decoder[processor.image_token_id]
    assert added.special and not added.normalized
    assert tokenizer.decode([processor.image_token_id, 5], skip_special_tokens=True) == tokenizer.decode([5])


def test_bare_question_prompt(processor):
    out = processor(images=make_image(), text="What colour is the car?", return_tensors="pt")
    assert set(out.keys()) == set(processor.model_input_names)
    assert set(processor.model_input_names) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "question_input_ids",
        "question_attention_mask",
    }
    expected = BOS + "<image>" * SEQ + "Question: What colour is the car?\nAnswer:"
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected
    assert (out["input_ids"][0] == processor.image_token_id).sum() == SEQ
    assert out["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert out["question_input_ids"][0].tolist() == question_ids(processor, "What colour is the car?")


def test_text_holding_image_token_is_used_as_is(processor):
    text = "<image>Describe the picture.\nAnswer: It shows"
    out = processor(images=make_image(), text=text, return_tensors="pt")
    assert (
        processor.tokenizer.decode(out["input_ids"][0])
        == BOS + "<image>" * SEQ + "Describe the picture.\nAnswer: It shows"
    )
    # Not following the template: the question encoder sees the prompt without `<image>`.
    assert out["question_input_ids"][0].tolist() == question_ids(processor, "Describe the picture.\nAnswer: It shows")


def test_question_extracted_from_full_prompt(processor):
    prompt = "<image>Question: Is it raining?\nAnswer: Yes.\nQuestion: What is the man holding?\nAnswer:"
    out = processor(images=make_image(), text=prompt)
    assert out["question_input_ids"][0] == question_ids(processor, "What is the man holding?")
    assert processor.tokenizer.decode(out["input_ids"][0]) == BOS + prompt.replace("<image>", "<image>" * SEQ)


def test_explicit_questions_override(processor):
    out = processor(images=[make_image()] * 2, text=["Is it raining?", "<image>Look closely."], questions=["a", "b c"])
    assert out["question_input_ids"][0][: len(question_ids(processor, "a"))] == question_ids(processor, "a")
    assert out["question_input_ids"][1] == question_ids(processor, "b c")
    out = processor(images=make_image(), text="<image>Look closely.", questions="Where is the cat?")
    assert out["question_input_ids"][0] == question_ids(processor, "Where is the cat?")


def test_text_only(processor):
    out = processor(text="What colour is the sky?", return_tensors="pt")
    assert "pixel_values" not in out
    assert processor.tokenizer.decode(out["input_ids"][0]) == BOS + "Question: What colour is the sky?\nAnswer:"
    assert processor.image_token_id not in out["input_ids"][0].tolist()
    # A prompt that already follows the template is not wrapped again.
    again = processor(text="Question: What colour is the sky?\nAnswer:", return_tensors="pt")
    assert torch.equal(again["input_ids"], out["input_ids"])
    assert torch.equal(again["question_input_ids"], out["question_input_ids"])


def test_batch_is_left_padded(processor):
    questions = ["Is it raining?", "How many people are standing near the bus in the picture?"]
    out = processor(images=[make_image(seed=0), make_image(seed=1)], text=questions, return_tensors="pt")
    ids, mask = out["input_ids"], out["attention_mask"]
    lengths = [len(processor.tokenizer("<image>" * SEQ + f"Question: {q}\nAnswer:")["input_ids"]) for q in questions]
    assert ids.shape == (2, max(lengths))
    num_pads = lengths[1] - lengths[0]
    assert num_pads > 0
    assert ids[0, :num_pads].tolist() == [processor.tokenizer.pad_token_id] * num_pads
    assert mask[0].tolist() == [0] * num_pads + [1] * lengths[0]
    assert mask[1].tolist() == [1] * lengths[1]
    assert ids[:, -1].tolist() == [ids[1, -1].item()] * 2  # both prompts end with the same "Answer:" token
    for row, question in enumerate(questions):
        expected = BOS + "<image>" * SEQ + f"Question: {question}\nAnswer:"
        assert processor.tokenizer.decode(unpadded(ids[row], mask[row])) == expected
        assert (ids[row] == processor.image_token_id).sum() == SEQ
    # Question ids: the question alone, padded on the right.
    q_ids, q_mask = out["question_input_ids"], out["question_attention_mask"]
    for row, question in enumerate(questions):
        encoding = question_ids(processor, question)
        assert q_ids[row, : len(encoding)].tolist() == encoding
        assert q_mask[row].tolist() == [1] * len(encoding) + [0] * (q_ids.shape[1] - len(encoding))
        assert q_ids[row, len(encoding) :].tolist() == [processor.question_tokenizer.pad_token_id] * (
            q_ids.shape[1] - len(encoding)
        )


def test_nested_images(processor):
    flat = processor(images=[make_image(seed=0), make_image(seed=1)], text=["Is it raining?", "Is it night?"])
    nested = processor(images=[[make_image(seed=0)], [make_image(seed=1)]], text=["Is it raining?", "Is it night?"])
    np.testing.assert_array_equal(np.stack(flat["pixel_values"]), np.stack(nested["pixel_values"]))
    assert flat["input_ids"] == nested["input_ids"]


@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_an_image_passed_for_several_prompts_is_processed_once(processor, monkeypatch, return_tensors):
    processed = []
    process_image = BcQLMImageProcessor.process_image  # patched on the class: the fixture is shared
    monkeypatch.setattr(
        BcQLMImageProcessor,
        "process_image",
        lambda self, image, *args, **kwargs: processed.append(image) or process_image(self, image, *args, **kwargs),
    )
    a, b = make_image(seed=0), make_image(seed=1)
    questions = ["Is it raining?", "Is it night?", "Is it red?"]
    shared = processor(images=[a, b, a], text=questions, return_tensors=return_tensors)
    assert len(processed) == 2
    copies = processor(images=[a, b, a.copy()], text=questions, return_tensors=return_tensors)
    assert len(processed) == 5
    np.testing.assert_array_equal(np.stack(shared["pixel_values"]), np.stack(copies["pixel_values"]))
    assert np.asarray(shared["input_ids"]).tolist() == np.asarray(copies["input_ids"]).tolist()


@pytest.mark.parametrize("return_tensors", [None, "pt"])
def test_vision_features_give_the_prompts_of_the_images(processor, return_tensors):
    questions = ["Is it raining?", "What colour is the big square on the left?", "<image>Question: Why?\nAnswer:"]
    images = [make_image(seed=seed) for seed in range(3)]
    features = torch.randn(3, SEQ, 8)
    from_images = processor(images=images, text=questions, return_tensors=return_tensors)
    from_features = processor(vision_features=features, text=questions, return_tensors=return_tensors)
    assert "pixel_values" not in from_features
    for key in ("input_ids", "attention_mask", "question_input_ids", "question_attention_mask"):
        assert np.asarray(from_features[key]).tolist() == np.asarray(from_images[key]).tolist(), key
    if return_tensors == "pt":
        torch.testing.assert_close(from_features["vision_features"], features)
    else:  # rows as `datasets` gives them: nested lists
        rows = processor(vision_features=features.tolist(), text=questions)["vision_features"]
        np.testing.assert_array_equal(np.stack(rows), features.numpy())


def test_vision_features_errors(processor):
    features = torch.randn(2, SEQ, 8)
    with pytest.raises(ValueError, match="either `images` or their `vision_features`"):
        processor(images=[make_image()] * 2, vision_features=features, text=["Why?", "How?"])
    with pytest.raises(ValueError, match="features of 2 image.s. for 3 prompt.s. holding <image>"):
        processor(vision_features=features, text=["Why?", "How?", "Who?"])
    with pytest.raises(ValueError, match=rf"shape \(3, 8\), but each image's features are \(image_seq_length={SEQ}"):
        processor(vision_features=features[:, :3], text=["Why?", "How?"])
    with pytest.raises(ValueError, match="Prompt 0 keeps 2 of its 4 image tokens after truncation"):
        processor(vision_features=features[:1], text="Why?", truncation=True, max_length=3)


def test_mixed_batch_with_text_only_prompt(processor):
    out = processor(
        images=[[make_image()], []],
        text=["<image>Question: Is it raining?\nAnswer:", "Question: Is it night?\nAnswer:"],
    )
    assert len(out["pixel_values"]) == 1
    assert [ids.count(processor.image_token_id) for ids in out["input_ids"]] == [SEQ, 0]


def test_kwargs_pass_through(processor):
    out = processor(
        images=make_image(), text="Is it raining?", padding="max_length", max_length=40, return_tensors="pt"
    )
    assert out["input_ids"].shape == (1, 40)
    assert out["attention_mask"][0, 0] == 0  # still left-padded
    right = processor(
        images=make_image(), text="Is it raining?", padding="max_length", max_length=40, padding_side="right"
    )
    assert right["attention_mask"][0][0] == 1 and right["attention_mask"][0][-1] == 0
    with pytest.raises(ValueError, match="Mismatch in `image` token count"):
        processor(images=make_image(), text="Is it raining?", truncation=True, max_length=3)


def test_question_truncation_warning(processor, caplog):
    question = " ".join(["what colour is the car"] * 10) + "?"
    assert len(question_ids(processor, question)) > 32
    with caplog.at_level(logging.WARNING):
        out = processor(images=make_image(), text=question, return_tensors="pt")
    assert "truncated to 32 tokens" in caplog.text
    assert out["question_input_ids"].shape == (1, 32)
    assert out["question_input_ids"][0, -1] == processor.question_tokenizer.sep_token_id
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        processor(images=make_image(), text="What colour is the car?")
    assert "truncated" not in caplog.text


# ---------------------------------------------------------------- processor: errors


def test_more_images_than_prompts(processor):
    with pytest.raises(ValueError, match=r"Got 2 image\(s\) for 1 prompt\(s\) holding <image>.*exactly one image"):
        processor(images=[make_image(), make_image()], text="Is it raining?")


def test_fewer_images_than_prompts(processor):
    with pytest.raises(ValueError, match=r"Got 1 image\(s\) for 2 prompt\(s\) holding <image>"):
        processor(images=[make_image()], text=["Is it raining?", "Is it night?"])


def test_two_images_in_one_nested_prompt(processor):
    with pytest.raises(ValueError, match=r"Prompt 0 holds <image> but got 2 image\(s\)"):
        processor(images=[[make_image(), make_image()]], text="Is it raining?")


def test_two_image_tokens_in_a_prompt(processor):
    with pytest.raises(ValueError, match="Prompt 1 holds 2 <image> tokens.*exactly one image per prompt"):
        processor(images=[make_image()] * 3, text=["Is it raining?", "<image><image>Question: Why?\nAnswer:"])


def test_image_token_without_images(processor):
    with pytest.raises(ValueError, match="Prompt 0 holds <image> but no images were passed: pass `images`"):
        processor(text="<image>Question: Is it raining?\nAnswer:")


def test_images_without_text(processor):
    with pytest.raises(ValueError, match="pass `text`"):
        processor(images=make_image())


@pytest.mark.parametrize("text", ["", "   ", "<image>", "<image>Question:  \nAnswer:"])
def test_empty_question(processor, text):
    with pytest.raises(ValueError, match="Question 0 is empty"):
        processor(images=make_image(), text=text)


@pytest.mark.parametrize("text", [3, ["Is it raining?", 3], []])
def test_non_string_text(processor, text):
    with pytest.raises(ValueError, match="`text` must be a string or a non-empty list of strings"):
        processor(images=make_image(), text=text)


def test_wrong_number_of_questions(processor):
    with pytest.raises(ValueError, match=r"Got 2 question\(s\) for 1 prompt\(s\)"):
        processor(images=make_image(), text="Is it raining?", questions=["a", "b"])


def test_invalid_constructor_arguments():
    kwargs = {"image_processor": BcQLMImageProcessor(), "tokenizer": make_decoder_tokenizer()}
    with pytest.raises(ValueError, match="`prompt_template` must hold `{question}` once"):
        BcQLMProcessor(**kwargs, question_tokenizer=make_question_tokenizer(), prompt_template="Answer:")
    with pytest.raises(ValueError, match="`image_seq_length` must be a positive integer"):
        BcQLMProcessor(**kwargs, question_tokenizer=make_question_tokenizer(), image_seq_length=0)
    with pytest.raises(ValueError, match="same object"):
        BcQLMProcessor(**kwargs, question_tokenizer=kwargs["tokenizer"])


# ---------------------------------------------------------------- processor: decoding


def test_decoding_gives_the_full_text_and_post_processing_the_answers(processor):
    prompts = processor(images=[make_image()] * 2, text=["What colour is the car?", "Is it raining?"])["input_ids"]
    answers = ["The car is red.", "Yes, it is raining."]
    sequences = [
        ids + processor.tokenizer.encode(" " + answer, add_special_tokens=False) + [processor.tokenizer.eos_token_id]
        for ids, answer in zip(prompts, answers)
    ]
    sequences[0] = sequences[0] + [processor.tokenizer.pad_token_id] * 2
    sequences[1] = [processor.tokenizer.pad_token_id] * (len(sequences[0]) - len(sequences[1])) + sequences[1]
    full_texts = processor.batch_decode(sequences, skip_special_tokens=True)
    assert full_texts == processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
    assert [text.endswith("Answer: " + answer) for text, answer in zip(full_texts, answers)] == [True, True]
    assert processor.decode(sequences[0], skip_special_tokens=True) == full_texts[0]
    assert processor.post_process_image_text_to_text(torch.tensor(sequences)) == answers
    assert processor.post_process_image_text_to_text(sequences[0]) == answers[0]
    # The new tokens alone: the whole text.
    new_tokens = processor.tokenizer.encode(" A brown horse.", add_special_tokens=False)
    assert processor.post_process_image_text_to_text(new_tokens) == "A brown horse."
    # Multi-turn: the answer of the last turn.
    multi_turn = processor.tokenizer.encode(
        "Question: Is it night?\nAnswer: No.\nQuestion: Is it sunny?\nAnswer: Yes."
    )
    assert processor.post_process_image_text_to_text(multi_turn) == "Yes."


# ---------------------------------------------------------------- processor: chat template


def test_chat_template_rendering(processor):
    single = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    assert processor.apply_chat_template(single) == "<image>Question: What colour?\nAnswer:"
    assert (
        processor.apply_chat_template(single, add_generation_prompt=True) == "<image>Question: What colour?\nAnswer:"
    )
    plain = [{"role": "user", "content": "What colour?"}]
    assert processor.apply_chat_template(plain) == "Question: What colour?\nAnswer:"
    multi_turn = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]
    assert processor.apply_chat_template(multi_turn) == f"<image>Question: q1\nAnswer: a1{EOS}\nQuestion: q2\nAnswer:"
    with pytest.raises(Exception, match="only user and assistant turns"):
        processor.apply_chat_template([{"role": "system", "content": "Be brief."}] + plain)


def test_apply_chat_template_tokenized(processor, tmp_path):
    image = make_image(seed=3)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Is it raining?"}]},
        {"role": "assistant", "content": "No."},
        {"role": "user", "content": "Where is the cat sitting?"},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert set(out.keys()) == set(processor.model_input_names)
    expected = (
        BOS
        + "<image>" * SEQ
        + f"Question: Is it raining?\nAnswer: No.{EOS}\nQuestion: Where is the cat sitting?\nAnswer:"
    )
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected
    assert out["question_input_ids"][0].tolist() == question_ids(processor, "Where is the cat sitting?")
    np.testing.assert_allclose(out["pixel_values"][0].numpy(), pixels(processor.image_processor, image))
    # Images given by path, and a batch of two chats.
    image.save(tmp_path / "image.png")
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(tmp_path / "image.png")},
                {"type": "text", "text": "Is it night?"},
            ],
        }
    ]
    batch = processor.apply_chat_template([chat, messages], tokenize=True, return_dict=True, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(batch["pixel_values"][0], batch["pixel_values"][1])
    assert batch["attention_mask"][0, 0] == 0  # the shorter chat is left-padded


# ---------------------------------------------------------------- processor: save and load


def test_save_load_round_trip(tmp_path):
    # The package registers the image processor with AutoImageProcessor on import; registering again is harmless.
    AutoImageProcessor.register(BcQLMConfig, image_processor_classes={"pil": BcQLMImageProcessor}, exist_ok=True)
    chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    processor = BcQLMProcessor(
        image_processor=BcQLMImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=make_decoder_tokenizer(),
        question_tokenizer=make_question_tokenizer(),
        image_seq_length=3,
        prompt_template="Q: {question}\nA:",
        chat_template=chat_template,
    )
    processor.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "question_tokenizer" / "tokenizer_config.json")
    assert os.path.isfile(tmp_path / "chat_template.jinja")

    reloaded = BcQLMProcessor.from_pretrained(tmp_path)
    assert reloaded.image_seq_length == 3
    assert reloaded.prompt_template == "Q: {question}\nA:"
    assert reloaded.chat_template == chat_template
    assert reloaded.image_token_id == processor.image_token_id
    assert type(reloaded.question_tokenizer).__name__ == "BertTokenizer"
    assert reloaded.question_tokenizer.model_max_length == 32
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()

    inputs = {"images": [make_image(seed=0), make_image(seed=1)], "text": ["Is it raining?", "What is on the table?"]}
    expected, actual = processor(**inputs, return_tensors="pt"), reloaded(**inputs, return_tensors="pt")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert reloaded.tokenizer.decode(actual["input_ids"][0]).endswith("<image>" * 3 + "Q: Is it raining?\nA:")


def test_default_chat_template_round_trip(processor, tmp_path):
    AutoImageProcessor.register(BcQLMConfig, image_processor_classes={"pil": BcQLMImageProcessor}, exist_ok=True)
    processor.save_pretrained(tmp_path)
    reloaded = BcQLMProcessor.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    assert reloaded.apply_chat_template(messages) == "<image>Question: What colour?\nAnswer:"
    assert reloaded.image_seq_length == SEQ


def test_collators_read_images_as_the_image_processor_does(tmp_path, monkeypatch):
    from transformers import image_transforms

    from modeling_bcqlm.data.images import to_rgb_images

    warnings = []
    monkeypatch.setattr(image_transforms.logger, "warning_once", warnings.append)
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    white_16bit = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    white_16bit.save(tmp_path / "white.png")
    converted = to_rgb_images([transparent, str(tmp_path / "white.png")])
    assert [image.mode for image in converted] == ["RGB", "RGB"]
    # `convert("RGB")` would give black and clipped pixels.
    assert np.asarray(converted[0]).tolist() == np.full((4, 4, 3), 255).tolist()
    assert np.asarray(converted[1]).min() == 255
    assert warnings == []  # no deprecation of transformers' conversion
