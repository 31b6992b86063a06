"""Pipelines: BcQLM's visual-question-answering pipeline, transformers' image-text-to-text pipeline, streaming."""

import io
import json
import os
import textwrap
from threading import Thread

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TextIteratorStreamer, pipeline

from modeling_bcqlm import BcQLMVisualQuestionAnsweringPipeline, image_processing_bcqlm
from modeling_bcqlm.export import save_hub_folder

from .helpers import CORPUS, make_image, run_python


QUESTION = "What colour is the car?"
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def vqa(model_and_processor):
    model, processor = model_and_processor
    return BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model_and_processor):
    """A Hub-ready folder of the tiny model."""
    path = tmp_path_factory.mktemp("bcqlm")
    save_hub_folder(*model_and_processor, path)
    return path


def sequence_probability(model, inputs, sequence):
    """Probability of `sequence`'s tokens after the prompt, from one forward pass over the whole sequence."""
    prompt_length = inputs["input_ids"].shape[1]
    sequence = sequence[None]
    with torch.no_grad():
        logits = model(
            input_ids=sequence,
            attention_mask=torch.ones_like(sequence),
            pixel_values=inputs["pixel_values"],
            question_input_ids=inputs["question_input_ids"],
            question_attention_mask=inputs["question_attention_mask"],
        ).logits
    log_probabilities = logits[0, prompt_length - 1 : -1].log_softmax(-1)
    new_tokens = sequence[0, prompt_length:]
    keep = new_tokens != model.generation_config.pad_token_id
    chosen = log_probabilities.gather(-1, new_tokens[:, None])[:, 0]
    return chosen[keep].sum().exp().item()


def expected_answers(model, processor, image, question, num_beams=1):
    """`[(answer, probability)]` from `generate` + decode + a manual forward pass, in `generate`'s order."""
    inputs = processor(images=image, text=question, return_tensors="pt")
    beam_kwargs = {"num_beams": num_beams, "num_return_sequences": num_beams} if num_beams > 1 else {}
    sequences = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **beam_kwargs)
    answers = processor.post_process_image_text_to_text(sequences)
    return [(answer, sequence_probability(model, inputs, sequence)) for answer, sequence in zip(answers, sequences)]


def test_answer_and_score_match_a_manual_computation(model_and_processor, vqa):
    model, processor = model_and_processor
    image = make_image(seed=1)
    result = vqa(image=image, question=QUESTION)
    [(answer, probability)] = expected_answers(model, processor, image, QUESTION)
    assert isinstance(result, list) and len(result) == 1 and set(result[0]) == {"answer", "score"}
    assert result[0]["answer"] == answer and answer
    assert isinstance(result[0]["score"], float) and 0.0 < result[0]["score"] < 1.0
    assert result[0]["score"] == pytest.approx(probability, rel=1e-4)
    # The dict form answers the same.
    assert vqa({"image": image, "question": QUESTION}) == result


def test_top_k_returns_the_beams_sorted_by_score(model_and_processor, vqa):
    model, processor = model_and_processor
    image = make_image(seed=2)
    results = vqa(image=image, question=QUESTION, top_k=3)
    assert len(results) == 3
    scores = [result["score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    expected = sorted(expected_answers(model, processor, image, QUESTION, num_beams=3), key=lambda x: -x[1])
    assert [result["answer"] for result in results] == [answer for answer, _ in expected]
    assert scores == pytest.approx([probability for _, probability in expected], rel=1e-4)
    with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
        vqa(image=image, question=QUESTION, top_k=0)


def test_batches_answer_like_single_inputs(vqa):
    images = [make_image(seed=3), make_image(seed=4)]
    questions = [QUESTION, "Is it raining?"]
    singles = [vqa(image=image, question=question) for image, question in zip(images, questions)]
    assert singles[0] != singles[1]
    assert vqa([{"image": im, "question": q} for im, q in zip(images, questions)]) == singles
    assert vqa(image=images, question=questions) == singles
    # One question for every image.
    assert vqa(image=images, question=QUESTION) == [singles[0], vqa(image=images[1], question=QUESTION)]


QUESTIONS = [line.split("\n")[0].removeprefix("Question: ") for line in CORPUS[:5]]


@pytest.fixture
def image_tower_calls(model_and_processor):
    """Number of images each call of the image tower (MobileViT) received."""
    model, _ = model_and_processor
    calls = []
    hook = model.model.breezeclip.vision_model.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    yield calls
    hook.remove()


def assert_same_answers(results, expected):
    """Same answers in the same order, scores equal up to the rounding of padded batches."""
    assert [[r["answer"] for r in result] for result in results] == [[r["answer"] for r in e] for e in expected]
    scores = [r["score"] for result in results for r in result]
    assert scores == pytest.approx([r["score"] for e in expected for r in e], rel=1e-4)


def test_questions_about_one_image_run_the_image_tower_once(tmp_path, vqa, image_tower_calls):
    image = make_image(seed=11)
    singles = [vqa(image=image, question=question) for question in QUESTIONS]
    assert image_tower_calls == [1] * len(QUESTIONS)
    assert len({result[0]["answer"] for result in singles}) > 1

    image_tower_calls.clear()
    assert vqa(image=image, question=QUESTIONS) == singles  # identical answers and scores
    assert image_tower_calls == [1]

    # Dicts sharing one path (each loads its own PIL image): the pixels are the same, so are the features.
    image.save(tmp_path / "image.png")
    image_tower_calls.clear()
    assert vqa([{"image": str(tmp_path / "image.png"), "question": q} for q in QUESTIONS]) == singles
    assert image_tower_calls == [1]

    # Batches of 2, 2 and 1 questions: one image through the tower, the decoder batched.
    image_tower_calls.clear()
    assert_same_answers(vqa(image=image, question=QUESTIONS, batch_size=2), singles)
    assert image_tower_calls == [1]

    # Features are not kept from one call to the next.
    image_tower_calls.clear()
    vqa(image=image, question=QUESTIONS[0])
    assert image_tower_calls == [1]


def test_batch_size_answers_like_batch_size_one(model_and_processor, vqa, image_tower_calls):
    model, processor = model_and_processor
    images = [make_image(seed=seed) for seed in (12, 13, 14)]
    # Questions of different lengths, so that the prompts of a batch are padded; an image asked twice.
    inputs = [{"image": images[i % 3], "question": question} for i, question in enumerate(QUESTIONS)]
    singles = vqa(inputs)
    assert image_tower_calls == [1] * len(inputs)

    batched_vqa = BcQLMVisualQuestionAnsweringPipeline(
        model=model, processor=processor, max_new_tokens=MAX_NEW_TOKENS, batch_size=2
    )
    image_tower_calls.clear()
    assert_same_answers(batched_vqa(inputs), singles)
    assert image_tower_calls == [2, 2, 1]  # batches (0, 1), (2, 0) and (1): each distinct image of a batch once
    assert_same_answers(vqa(inputs, batch_size=3), singles)
    assert_same_answers(vqa(inputs, batch_size=2, top_k=2), vqa(inputs, top_k=2))

    # An answer that ends before the others of its batch is padded; the padding must not count in its score.
    prompt = processor(images=images[0], text=QUESTIONS[0], return_tensors="pt")
    answer_ids = model.generate(**prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[
        0, prompt["input_ids"].shape[1] :
    ]
    end = answer_ids[1].item()  # ends the first answer after two tokens
    singles = vqa(inputs, eos_token_id=end)
    assert len({len(result[0]["answer"]) for result in singles}) > 1
    assert_same_answers(vqa(inputs, eos_token_id=end, batch_size=len(inputs)), singles)


def test_path_and_url_inputs_answer_like_the_pil_image(tmp_path, monkeypatch, vqa):
    image = make_image(seed=5)
    image.save(tmp_path / "image.png")
    expected = vqa(image=image, question=QUESTION)
    assert vqa(image=str(tmp_path / "image.png"), question=QUESTION) == expected

    fetched = []

    def fake_fetch_url(url, timeout):
        fetched.append((url, timeout))
        return io.BytesIO((tmp_path / "image.png").read_bytes())

    monkeypatch.setattr(image_processing_bcqlm, "_fetch_url", fake_fetch_url)
    url = "https://example.com/image.png"
    assert vqa(image=url, question=QUESTION, timeout=3.0) == expected
    assert fetched == [(url, 3.0)]


def test_image_files_are_converted_like_images_in_memory(tmp_path, vqa):
    """A transparent PNG and a 16-bit PNG answer as the processor's conversion of the same images in memory."""
    rgba = make_image(seed=14, mode="RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # partly transparent: composited onto white
    sixteen_bit = Image.fromarray((np.asarray(make_image(seed=15, mode="L"), dtype=np.uint16) * 257))
    assert sixteen_bit.mode.startswith("I;16")
    for name, image in (("rgba.png", rgba), ("sixteen_bit.png", sixteen_bit)):
        image.save(tmp_path / name)
        from_file = vqa(image=str(tmp_path / name), question=QUESTION, top_k=2)
        in_memory = vqa(image=Image.open(tmp_path / name), question=QUESTION, top_k=2)
        wrongly_converted = vqa(image=Image.open(tmp_path / name).convert("RGB"), question=QUESTION, top_k=2)
        assert from_file == in_memory
        assert [r["score"] for r in from_file] != [r["score"] for r in wrongly_converted], name


def test_errors(tmp_path, vqa):
    image = make_image(seed=6)
    with pytest.raises(ValueError, match="No image was given"):
        vqa()
    with pytest.raises(ValueError, match="Input 0 has no image"):
        vqa(question=QUESTION)
    with pytest.raises(ValueError, match="Input 0 has no image"):
        vqa({"question": QUESTION})
    with pytest.raises(ValueError, match="Input 1 has no image"):
        vqa([{"image": image, "question": QUESTION}, {"image": None, "question": QUESTION}])
    missing = str(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"Image file .*missing\.png' does not exist"):
        vqa(image=missing, question=QUESTION)
    (tmp_path / "not_an_image.png").write_text("plain text")
    with pytest.raises(ValueError, match=r"not_an_image\.png' is not an image that PIL can read"):
        vqa(image=[image, str(tmp_path / "not_an_image.png")], question=QUESTION, batch_size=2)
    with pytest.raises(ValueError, match="Unsupported image of type int"):
        vqa(image=3, question=QUESTION)
    with pytest.raises(ValueError, match=r"Could not fetch the image at 'http://127\.0\.0\.1:9/image\.png'"):
        vqa(image="http://127.0.0.1:9/image.png", question=QUESTION, timeout=5)
    with pytest.raises(ValueError, match="Input 0 has an empty question"):
        vqa(image=image, question="   ")
    with pytest.raises(ValueError, match="Input 1 has an empty question"):
        vqa(image=image, question=[QUESTION, ""])
    with pytest.raises(ValueError, match="Input 1: `question` must be a string, got NoneType"):
        vqa([{"image": image, "question": QUESTION}, {"image": image}])
    with pytest.raises(ValueError, match="Input 0: `question` must be a string, got int"):
        vqa(image=image, question=[3])
    with pytest.raises(ValueError, match="No question was given"):
        vqa(image=image)
    with pytest.raises(ValueError, match=r"Got 2 image\(s\) and 1 question\(s\)"):
        vqa(image=[image, image], question=[QUESTION])
    with pytest.raises(ValueError, match="Got an empty list of images or questions"):
        vqa(image=image, question=[])
    with pytest.raises(ValueError, match=r"Unknown arguments of the visual-question-answering pipeline: \['colour'\]"):
        vqa(image=image, question=QUESTION, colour="red")


def test_hub_folder_names_the_pipeline_and_plain_saves_do_not(tmp_path, vqa, folder):
    config = json.loads((folder / "config.json").read_text())
    entry = {"impl": "pipeline_bcqlm.BcQLMVisualQuestionAnsweringPipeline", "pt": ["AutoModelForImageTextToText"]}
    assert config["custom_pipelines"] == {"visual-question-answering": entry, "vqa": entry}
    assert {"pipeline_bcqlm.py", "modeling_bcqlm.py", "processor_config.json"} <= set(os.listdir(folder))
    # `save_pretrained` (the model's, the pipeline's) saves as transformers does: no pipeline entries, no pipeline code.
    vqa.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in config and "AutoModel" not in config["auto_map"]
    assert (tmp_path / "modeling_bcqlm.py").is_file() and not (tmp_path / "pipeline_bcqlm.py").exists()


def test_importing_the_package_leaves_transformers_tasks_alone(tmp_path, model_and_processor, folder):
    """`pipeline()` treats the removed task as transformers does, unless the model's config names a pipeline."""
    from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS

    assert {"visual-question-answering", "vqa"} <= set(REMOVED_TASKS)
    assert "visual-question-answering" not in PIPELINE_REGISTRY.get_supported_tasks()
    for part in model_and_processor:
        part.save_pretrained(tmp_path)  # a plain folder names no pipeline
    with pytest.raises(KeyError, match="The task vqa has been removed"):
        pipeline("vqa", model=str(tmp_path))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("visual-question-answering", model=str(folder))
    # With the package installed, the pipeline class may be named instead of loading the folder's code.
    vqa = pipeline("visual-question-answering", model=str(folder), pipeline_class=BcQLMVisualQuestionAnsweringPipeline)
    assert type(vqa) is BcQLMVisualQuestionAnsweringPipeline


def test_image_text_to_text_pipeline_with_text_and_chat(model_and_processor, folder):
    model, processor = model_and_processor
    image = make_image(seed=8)
    [(answer, _)] = expected_answers(model, processor, image, QUESTION)
    pipe = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    [plain] = pipe(images=image, text=QUESTION, return_full_text=False, **kwargs)
    assert plain["generated_text"] == answer
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    [chat] = pipe(text=messages, **kwargs)
    assert chat["generated_text"][-1] == {"role": "assistant", "content": answer}


def test_image_text_to_text_pipeline_batches_answer_like_single_inputs(model_and_processor, folder):
    model, processor = model_and_processor
    images = [make_image(seed=11), make_image(seed=12), make_image(seed=13)]
    questions = [QUESTION, "How many wheels does the red car in the picture have?", "Is it big?"]
    expected = [expected_answers(model, processor, image, question)[0][0] for image, question in zip(images, questions)]
    pipe = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True, batch_size=2)
    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    # One conversation per (image, question): the pipeline's collate pads them into batches of two.
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        for image, question in zip(images, questions)
    ]
    results = pipe(text=chats, **kwargs)
    assert [result["generated_text"][-1]["content"] for [result] in results] == expected
    assert len(set(expected)) > 1  # the answers depend on the inputs, so a mix-up would show


def test_text_iterator_streamer_yields_the_answer(model_and_processor):
    model, processor = model_and_processor
    inputs = processor(images=make_image(seed=9), text=QUESTION, return_tensors="pt")
    kwargs = {**inputs, "max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    new_tokens = model.generate(**kwargs)[0, inputs["input_ids"].shape[1] :]
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer})
    thread.start()
    chunks = list(streamer)
    thread.join()
    expected = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert expected and "".join(chunks) == expected


REMOTE_PIPELINES = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    folder, image_path, question, max_new_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
    assert type(vqa).__module__.startswith("transformers_modules."), type(vqa).__module__
    alias = pipeline("vqa", model=folder, trust_remote_code=True)
    chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    print(json.dumps({
        "vqa": vqa(image=image_path, question=question, max_new_tokens=max_new_tokens),
        "vqa_top_k": vqa(image=image_path, question=question, max_new_tokens=max_new_tokens, top_k=2),
        "alias": alias({"image": image_path, "question": question}, max_new_tokens=max_new_tokens),
        "itt": chat(images=image_path, text=question, max_new_tokens=max_new_tokens, return_full_text=False),
    }))
    """
)


def test_pipelines_load_from_a_saved_folder_as_remote_code(tmp_path, vqa, folder):
    image = make_image(seed=10)
    image.save(tmp_path / "image.png")
    result = run_python(
        "-c", REMOTE_PIPELINES, folder, tmp_path / "image.png", QUESTION, MAX_NEW_TOKENS,
        cwd=tmp_path, without_package=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    expected = vqa(image=image, question=QUESTION)
    expected_top_k = vqa(image=image, question=QUESTION, top_k=2)
    for got, want in ((remote["vqa"], expected), (remote["alias"], expected), (remote["vqa_top_k"], expected_top_k)):
        assert [r["answer"] for r in got] == [r["answer"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], rel=1e-3)
    assert remote["itt"] == [{"input_text": QUESTION, "generated_text": expected[0]["answer"]}]
