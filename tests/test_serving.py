"""`bcqlm serve`: transformers' OpenAI-compatible server answers as the VQA pipeline does, streamed or not."""

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from transformers import pipeline

from modeling_bcqlm import DEFAULT_MODEL, BcQLMVisualQuestionAnsweringPipeline
from modeling_bcqlm.cli.main import main
from modeling_bcqlm.export import save_hub_folder

from .helpers import make_image, run_python, running_server


openai = pytest.importorskip("openai", reason="the test extra: pip install '.[test]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra: pip install '.[serve]'")
from modeling_bcqlm.serving import BcQLMModelManager, build_app  # noqa: E402
from modeling_bcqlm.serving.server import ENGINE_PROCESSES  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE_IMAGE = ROOT / "examples" / "images" / "shapes.png"
MAX_TOKENS = 4
RUN_MAIN = "from modeling_bcqlm.cli.main import main\nmain(sys.argv[1:])\n"
INPUTS = [
    (make_image(seed=1), "what colour is the square?"),
    (make_image(seed=2), "how many circles are there?"),
    (make_image(seed=3), "is there a red triangle?"),
]


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def messages(image, question: str) -> list[dict]:
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def streamed_chunks(sse: bytes) -> list[str]:
    """The content of each event of a streamed chat completion."""
    events = [json.loads(line[len("data: ") :]) for line in sse.decode().splitlines() if line.startswith("data: {")]
    return [event["choices"][0]["delta"].get("content") or "" for event in events]


def pipeline_answer(folder: Path, image, question: str, max_new_tokens: int = MAX_TOKENS) -> str:
    vqa = pipeline("vqa", model=str(folder), pipeline_class=BcQLMVisualQuestionAnsweringPipeline)
    return vqa(image=image, question=question, max_new_tokens=max_new_tokens)[0]["answer"]


@contextlib.contextmanager
def serving_in_a_thread(app):
    """Serve `app` on a free 127.0.0.1 port; yields the base URL and stops the server on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def hub_folder(model_and_processor, tmp_path_factory):
    """The tiny model of the fixtures, written as `save_hub_folder` writes a folder for the Hub."""
    folder = tmp_path_factory.mktemp("hub") / "bcqlm"
    save_hub_folder(*model_and_processor, folder)
    return folder


def test_served_answers_are_the_pipelines_streamed_or_not(hub_folder):
    expected = [pipeline_answer(hub_folder, image, question) for image, question in INPUTS]
    assert len(set(expected)) > 1  # the answers depend on the inputs, so a mix-up would show
    manager = BcQLMModelManager(device="cpu", force_model=str(hub_folder))
    with serving_in_a_thread(build_app(manager)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for (image, question), answer in zip(INPUTS, expected):
            request = {"model": str(hub_folder), "messages": messages(image, question), "max_tokens": MAX_TOKENS}
            text = client.chat.completions.create(**request).choices[0].message.content
            # The generated text, with the leading space the decoder writes after "Answer:"; the pipeline strips it.
            assert text.strip() == answer
            chunks = [
                chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(**request, stream=True)
            ]
            assert "".join(chunks) == text
            # An event per token; transformers 5.25 joins the tokens that came while the stream was behind into one.
            assert ENGINE_PROCESSES or len([chunk for chunk in chunks if chunk]) > 1
            # Plain HTTP; the server is pinned to its model, so the request may leave `model` out.
            body = {"messages": request["messages"], "max_tokens": MAX_TOKENS}
            assert json.loads(post(f"{url}/v1/chat/completions", body))["choices"][0]["message"]["content"] == text
            assert "".join(streamed_chunks(post(f"{url}/v1/chat/completions", {**body, "stream": True}))) == text


def test_readme_serve_curl_client_and_chat_commands():
    """README's `bcqlm serve`, `curl`, openai-client and `transformers chat` commands, on the bundled model."""
    serve, curl, chat = (
        block for block in bash_blocks() if block.startswith(("bcqlm serve", "curl ", "transformers chat"))
    )
    (client,) = [block for block in python_blocks() if "from openai import OpenAI" in block]
    question = re.search(r'"text": "([^"]+)"', curl).group(1)
    expected = pipeline_answer(DEFAULT_MODEL, EXAMPLE_IMAGE, question, max_new_tokens=16)
    args = serve.replace("path/to/bcqlm", DEFAULT_MODEL).split()
    assert args[-2:] == ["--port", "8000"]
    with running_server(*args[:-2], ready_path="/health") as (url, _):
        result = subprocess.run(
            ["bash", "-c", curl.replace("http://127.0.0.1:8000", url)], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["choices"][0]["message"]["content"].strip() == expected
        script = client.replace("http://127.0.0.1:8000", url).replace("path/to/bcqlm", DEFAULT_MODEL)
        result = run_python("-c", script, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == expected
        # `transformers chat` sends text only; huggingface_hub's offline mode would refuse even a 127.0.0.1 server.
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 16}
        text_only = json.loads(post(f"{url}/v1/chat/completions", body))["choices"][0]["message"]["content"].strip()
        args = chat.replace("path/to/bcqlm", DEFAULT_MODEL).replace("http://127.0.0.1:8000", url).split()
        env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
        result = subprocess.run(
            [str(Path(sys.executable).parent / args[0]), *args[1:]],
            # "n": no, when it offers to continue an answer cut at 16 tokens.
            input=f"{question}\nn\n!exit\n",
            env=dict(env, COLUMNS="400"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(rf"^{re.escape(text_only)}\s*$", result.stdout, re.MULTILINE), result.stdout[-3000:]


@pytest.mark.parametrize("bundled", [False, True], ids=["hub-folder", "bundled-model"])
def test_serve_runs_the_folders_own_code_with_trust_remote_code(bundled, hub_folder, tmp_path):
    """With `--trust_remote_code` the package's classes are not registered: the folder's code files answer."""
    folder = Path(DEFAULT_MODEL) if bundled else hub_folder
    image, question = INPUTS[0]
    expected = pipeline_answer(folder, image, question)
    with running_server(
        "bcqlm", "serve", "--model", str(folder), "--trust_remote_code", ready_path="/health", HF_HOME=str(tmp_path)
    ) as (url, _):
        body = {"messages": messages(image, question), "max_tokens": MAX_TOKENS}
        text = json.loads(post(f"{url}/v1/chat/completions", body))["choices"][0]["message"]["content"]
        assert text.strip() == expected
        assert "".join(streamed_chunks(post(f"{url}/v1/chat/completions", {**body, "stream": True}))) == text
    # transformers copies remote code into its modules cache before importing it.
    assert list((tmp_path / "modules" / "transformers_modules" / folder.name).rglob("modeling_bcqlm.py"))


def test_bad_serve_arguments_and_missing_serving_dependencies_get_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(SystemExit, match=r"is a 'llava' model, not a BcQLM one"):
        main(["serve", "--model", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--port 70000 is not a port"):
        main(["serve", "--port", "70000"])
    with pytest.raises(SystemExit, match=r"--device 'gpu' is not a device"):
        main(["serve", "--device", "gpu"])
    without_fastapi = "import sys\nsys.modules['fastapi'] = None  # not installed\n" + RUN_MAIN
    result = run_python("-c", without_fastapi, "serve", cwd=tmp_path)
    assert result.returncode == 1 and "pip install 'bcqlm[serve]'" in result.stderr, result.stderr[-3000:]


def bash_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL)]


def python_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```python\n(.*?)```", README, re.DOTALL)]
