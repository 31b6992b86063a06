"""`bcqlm demo`: the Gradio page answers as the VQA pipeline does, in a real (headless, system) Chromium."""

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from transformers import pipeline

from modeling_bcqlm import DEFAULT_MODEL, BcQLMVisualQuestionAnsweringPipeline
from modeling_bcqlm.cli.main import main

from .helpers import make_image, run_python, running_server


gr = pytest.importorskip("gradio", reason="the demo extra: pip install '.[demo]'")
playwright = pytest.importorskip("playwright.sync_api", reason="the test extra: pip install '.[test]'")
from modeling_bcqlm.demo import answer_streamed, example_scenes  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE_IMAGE = ROOT / "examples" / "images" / "shapes.png"
# Debian's `chromium` package (`.ci/run` installs it); Playwright drives it and never downloads a browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOP_K = 3  # the page's default


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page of headless Chromium with a fresh profile; every request it makes is recorded in `page.requested`."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1100},
        )
        try:
            page = browser.new_page()
            page.requested = []
            page.on("request", lambda request: page.requested.append(request.url))
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def vqa():
    return pipeline("vqa", model=DEFAULT_MODEL, pipeline_class=BcQLMVisualQuestionAnsweringPipeline)


def ask_on_the_page(page) -> tuple[str, list[tuple[str, str]]]:
    """
    Press Ask on a freshly loaded page; once the timing shows, the answer and the `(answer, percentage)` rows of the
    scores.
    """
    page.locator("#ask").click()
    page.wait_for_function("document.querySelector('#timing').innerText.includes('Answer in')", timeout=60_000)
    scores = page.locator("#scores").inner_text().splitlines()
    rows = [(answer, percentage) for answer, percentage in zip(scores[2::2], scores[3::2])]
    return page.locator("#answer textarea").input_value(), rows


def pipeline_rows(vqa, image, question: str) -> list[tuple[str, str]]:
    return [
        (row["answer"], f"{round(100 * row['score'])}%") for row in vqa(image=image, question=question, top_k=TOP_K)
    ]


def test_readme_demo_command_in_a_browser(page, vqa, tmp_path):
    """README's `bcqlm demo`: upload an image, type a question, press Ask, read the answer; then an example scene."""
    (command,) = [block for block in bash_blocks() if block.startswith("bcqlm demo")]
    question = "how many circles are there?"
    with running_server(*command.split()) as (url, _):
        page.goto(url)
        assert "What the bundled model knows" in page.locator("#model-note").inner_text()
        page.locator("#image input[type=file]").set_input_files(EXAMPLE_IMAGE)
        page.locator("#question textarea").fill(question)
        answer, rows = ask_on_the_page(page)
        assert answer == vqa(image=str(EXAMPLE_IMAGE), question=question)[0]["answer"]
        assert rows == pipeline_rows(vqa, str(EXAMPLE_IMAGE), question)
        assert re.fullmatch(
            rf"Answer in \d+\.\d\d s; top {TOP_K} in \d+\.\d\d s\.", page.locator("#timing").inner_text()
        )
        page.screenshot(path=tmp_path / "demo.png", full_page=True)
        print(f"screenshot: {tmp_path / 'demo.png'}")

        image, question = example_scenes()[0]
        page.goto(url)
        page.get_by_text(question, exact=True).click()
        playwright.expect(page.locator("#question textarea")).to_have_value(question)
        answer, rows = ask_on_the_page(page)
        assert answer == vqa(image=image, question=question)[0]["answer"]
        assert rows == pipeline_rows(vqa, image, question)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # Nothing but the local server: no fonts, analytics or update checks from elsewhere.
    assert {urlparse(requested).hostname for requested in page.requested} == {"127.0.0.1"}


def test_demo_of_another_folder_answers_on_enter(page, model_and_processor, tmp_path):
    """
    `bcqlm demo --model <folder> --trust_remote_code`: the folder's own code answers, without the note about the bundled
    model; Enter in the question asks too.
    """
    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "bcqlm")
    processor.save_pretrained(tmp_path / "bcqlm")
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)
    image, question = make_image(seed=5), "what colour is the circle?"
    image.save(tmp_path / "image.png")
    folder = tmp_path / "bcqlm"
    with running_server(
        "bcqlm", "demo", "--model", str(folder), "--trust_remote_code", HF_HOME=str(tmp_path / "hf_home")
    ) as (url, _):
        page.goto(url)
        playwright.expect(page.locator("body")).to_contain_text(f"Model: {tmp_path / 'bcqlm'}")
        assert page.locator("#model-note").count() == 0
        page.locator("#image input[type=file]").set_input_files(tmp_path / "image.png")
        page.locator("#question textarea").fill(question)
        page.locator("#question textarea").press("Enter")
        page.wait_for_function("document.querySelector('#timing').innerText.includes('Answer in')", timeout=60_000)
        expected = vqa(image=image, question=question, max_new_tokens=16)[0]["answer"]
        assert page.locator("#answer textarea").input_value() == expected
    # transformers copies remote code into its modules cache before importing it.
    assert list((tmp_path / "hf_home" / "modules" / "transformers_modules" / "bcqlm").rglob("modeling_bcqlm.py"))


def test_answer_streams_token_by_token_then_scores(model_and_processor):
    """The page's handler, on the tiny model: the answer grows a token at a time and ends as the pipeline's."""
    model, processor = model_and_processor
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)
    image, question = make_image(seed=4), "what colour is the square?"
    updates = list(answer_streamed(vqa, image, question, TOP_K))
    partial_answers = [answer for answer, _, _ in updates]
    assert len(partial_answers) > 2 and all(b.startswith(a) for a, b in zip(partial_answers, partial_answers[1:]))
    answer, scores, timing = updates[-1]
    assert answer == vqa(image=image, question=question, max_new_tokens=16)[0]["answer"]
    top = vqa(image=image, question=question, max_new_tokens=16, top_k=TOP_K)
    assert scores == {row["answer"]: row["score"] for row in top} and timing.startswith("Answer in ")
    with pytest.raises(gr.Error, match="Upload an image"):
        list(answer_streamed(vqa, None, question, TOP_K))
    with pytest.raises(gr.Error, match="Write a question"):
        list(answer_streamed(vqa, image, "  ", TOP_K))


def test_bad_demo_models_and_a_missing_gradio_get_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    result = run_python("-m", "modeling_bcqlm.demo", "--model", tmp_path, cwd=tmp_path)
    assert result.returncode == 1 and "is a 'llava' model, not a BcQLM one" in result.stderr, result.stderr[-3000:]
    with pytest.raises(SystemExit, match="does not exist"):
        main(["demo", "--model", str(tmp_path / "missing")])
    script = "import sys\nsys.modules['gradio'] = None  # not installed\nfrom modeling_bcqlm.cli.main import main\n"
    result = run_python("-c", script + "main(['demo'])", cwd=tmp_path)
    assert result.returncode == 1 and "pip install 'bcqlm[demo]'" in result.stderr, result.stderr[-3000:]


def bash_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL)]
