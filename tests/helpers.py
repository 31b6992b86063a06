"""Small, offline building blocks for the tests: tokenizers, images, a processor and a matching model."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from modeling_bcqlm.data.tokenizers import BOS, EOS, PAD
from modeling_bcqlm.testing.tiny_models import (
    CORPUS,
    make_decoder_tokenizer,
    make_processor,
    make_question_tokenizer,
    make_tiny_bcqlm,
)


__all__ = [
    "BOS",
    "CORPUS",
    "EOS",
    "PAD",
    "make_decoder_tokenizer",
    "make_image",
    "make_model_and_processor",
    "make_processor",
    "make_question_tokenizer",
    "redraw_weights",
    "run_python",
    "running_server",
    "save_language_model",
]


def make_image(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A PIL image of random 8-bit pixels, `size` as (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def redraw_weights(model, std: float) -> None:
    """Re-draw every weight but the norms from N(0, std), so that a tiny model's greedy decoding varies."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, std)
        # Padding rows stay zero, as `padding_idx` keeps them in a real model (MobileBERT's trigram input reads the
        # neighbouring token's embedding, so a padded question's last token sees the pad row).
        question_embeddings = model.model.breezeclip.text_model.embeddings.word_embeddings
        question_embeddings.weight[question_embeddings.padding_idx].zero_()


def make_model_and_processor(seed: int = 0, std: float = 0.3, **config_kwargs):
    """A tiny BcQLM and its processor, the weights re-drawn with `std` so that greedy decoding varies."""
    torch.manual_seed(seed)
    model, processor = make_tiny_bcqlm(**config_kwargs)
    redraw_weights(model, std)
    return model, processor


def save_language_model(
    folder: Path, with_pad_token: bool = True, hidden_size: int = 32, tie_word_embeddings: bool = True
) -> LlamaForCausalLM:
    """A tiny random `LlamaForCausalLM` folder with its tokenizer, as a local Llama checkpoint would be."""
    tokenizer = make_decoder_tokenizer(pad_token=None if not with_pad_token else PAD)  # Llama-3 has none
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(0)
    language_model = LlamaForCausalLM(config).eval()
    language_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return language_model


def run_python(
    *args, cwd: Path, executable: str = sys.executable, without_package: bool = False, timeout: int = 600, **env
) -> subprocess.CompletedProcess:
    """
    `python *args` (or `executable *args`, e.g. a console command) in a fresh process, offline, in `cwd`, with `env`
    added to the environment. With `without_package`,
    `args` is `("-c", script, *script_args)` and `modeling_bcqlm` cannot be imported (as where only a saved folder's
    code is at hand); the folders' code is then cached under `cwd/hf_home`.
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env)
    if without_package:
        env.update(HF_HOME=str(Path(cwd) / "hf_home"), PYTHONPATH="")
        args = ("-c", 'import sys\nsys.modules["modeling_bcqlm"] = None  # not importable\n' + args[1], *args[2:])
    return subprocess.run(
        [executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def running_server(command: str, *args: str, ready_path: str = "/", **env):
    """
    The console command `command *args --port <free port>` (`bcqlm serve`, `bcqlm demo`) in its own process, offline,
    with `env` added. Yields `(base URL, process)` once `ready_path` answers and the process listens on 127.0.0.1 only;
    stops it with Ctrl+C (SIGINT) on exit, and checks that it stopped cleanly.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = str(Path(sys.executable).parent / command)
    process = subprocess.Popen(
        [executable, *args, "--port", str(port)],
        env=dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", BCQLM_NO_NOTICE="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"{command} did not answer {url}{ready_path} in 120 s"
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url + ready_path, timeout=5).status == 200:
                    break
            time.sleep(0.2)
        connections = psutil.Process(process.pid).net_connections(kind="inet")
        assert {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}
        yield url, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = process.stdout.read()
    # uvicorn shuts down, then re-raises the signal it caught; Gradio exits on KeyboardInterrupt.
    assert process.returncode in (0, -signal.SIGINT) and "Traceback" not in output, output[-3000:]
