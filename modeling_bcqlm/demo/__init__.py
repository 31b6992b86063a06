"""
The demo page of BcQLM (`bcqlm demo`, `python -m modeling_bcqlm.demo`): a Gradio app where one uploads or picks an
image, asks a question and sees the answer streamed, the top answers with their scores and the time they took.

Needs the `demo` extra (`pip install "bcqlm[demo]"`). The page is served on 127.0.0.1 unless `host` says otherwise, and
never through a share link.
"""

import time
from functools import partial
from pathlib import Path
from threading import Thread

import gradio as gr
import numpy as np
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

from .. import DEFAULT_MODEL
from ..data.synthetic_shapes import QUESTION_TYPES, generate_questions, generate_scene, render_scene
from ..pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline


DEFAULT_MODEL_NOTE = (
    "**What the bundled model knows.** It was trained from nothing on synthetic scenes: circles, squares and triangles "
    "in five colours, small or large, on a plain light background (the examples below), with questions about their "
    "colour, size, shape, number, position and comparisons. About any other image its answers mean nothing, and it "
    "still makes mistakes on these scenes (its model card gives its accuracy). Start the page with `--model` for "
    "another BcQLM."
)
EXAMPLE_QUESTION_TYPES = ("counting", "existence", "attribute", "counting")
MAX_NEW_TOKENS = 16


def example_scenes(seed: int = 0) -> list[list]:
    """
    `[image, question]` pairs: synthetic shape scenes as the bundled model was trained on, with a question each of
    `EXAMPLE_QUESTION_TYPES`.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for question_type in EXAMPLE_QUESTION_TYPES:
        scene = generate_scene(rng)
        questions = generate_questions(scene, rng, num_questions=len(QUESTION_TYPES))
        question = next((q for q in questions if q["question_type"] == question_type), questions[0])
        examples.append([render_scene(scene, image_size=192), question["question"]])
    return examples


def load_pipeline(model: str | None = None, device: str = "cpu", trust_remote_code: bool = False):
    """BcQLM's VQA pipeline on `model` (a folder or Hub id; the bundled model by default)."""
    model = model or DEFAULT_MODEL
    return BcQLMVisualQuestionAnsweringPipeline(
        model=AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=trust_remote_code),
        processor=AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code),
        device=device,
    )


def answer_streamed(vqa, image, question: str, top_k: int):
    """
    Yields `(answer so far, top answers, timing)`: the greedy answer token by token (the pipeline's answer at the end),
    then the `top_k` best answers with their scores (beam search) and the time each part took.
    """
    if image is None:
        raise gr.Error("Upload an image or pick an example first.")
    if not question or not question.strip():
        raise gr.Error("Write a question about the image.")
    streamer = TextIteratorStreamer(vqa.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    answers, errors = [], []

    def generate():
        try:
            answers.extend(vqa(image=image, question=question, max_new_tokens=MAX_NEW_TOKENS, streamer=streamer))
        except Exception as error:  # shown on the page; the streamer is ended so that the page stops waiting
            errors.append(error)
            streamer.end()

    yield "", None, ""  # the previous question's answer, scores and timing go
    start = time.perf_counter()
    thread = Thread(target=generate)
    thread.start()
    text = ""
    for chunk in streamer:
        text += chunk
        yield text.strip(), None, ""
    thread.join()
    if errors:
        raise gr.Error(f"The model could not answer: {errors[0]}")
    answer_time = time.perf_counter() - start
    start = time.perf_counter()
    top = answers if top_k == 1 else vqa(image=image, question=question, top_k=top_k, max_new_tokens=MAX_NEW_TOKENS)
    timing = f"Answer in {answer_time:.2f} s; top {top_k} in {time.perf_counter() - start:.2f} s."
    yield answers[0]["answer"], {result["answer"]: result["score"] for result in top}, timing


def build_demo(vqa, note: str | None = None):
    """The Gradio page answering with the pipeline `vqa`; `note` (Markdown) says what the model knows."""
    with gr.Blocks(title="BcQLM", analytics_enabled=False) as demo:
        gr.Markdown(f"# BcQLM visual question answering\nModel: `{vqa.model.name_or_path}`")
        if note:
            gr.Markdown(note, elem_id="model-note")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="pil", format="png", label="Image", sources=["upload", "clipboard"], elem_id="image"
                )
                question = gr.Textbox(label="Question", placeholder="how many circles are there?", elem_id="question")
                top_k = gr.Slider(1, 5, value=3, step=1, label="Answers to score (top k)")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                scores = gr.Label(label="Top answers and their scores", elem_id="scores")
                timing = gr.Markdown(elem_id="timing")
        gr.Examples(example_scenes(), inputs=[image, question], label="Synthetic scenes the bundled model knows")
        inputs, outputs = [image, question, top_k], [answer, scores, timing]
        for event in (ask.click, question.submit):
            event(partial(answer_streamed, vqa), inputs, outputs)
    return demo


def launch(model: str | None = None, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", **kwargs):
    """Serve the page of `model` (the bundled model by default) at `http://host:port` until interrupted."""
    vqa = load_pipeline(model, device=device, **kwargs)
    bundled = model is None or Path(model).resolve() == Path(DEFAULT_MODEL).resolve()
    demo = build_demo(vqa, note=DEFAULT_MODEL_NOTE if bundled else None)
    print(f"bcqlm: the demo of {vqa.model.name_or_path} is at http://{host}:{port}", flush=True)
    demo.queue().launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True)
