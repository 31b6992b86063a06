"""`conversion/compose_bcqlm.py`: a BcQLM folder from a local causal LM folder and a BreezeCLIP folder."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel

from .helpers import make_image, save_language_model
from .tiny import make_breezeclip_processing, tiny_breezeclip_config


REPO = Path(__file__).resolve().parents[1]


def save_breezeclip(folder: Path) -> BreezeCLIPModel:
    torch.manual_seed(1)
    breezeclip = BreezeCLIPModel(tiny_breezeclip_config()).eval()
    image_processor, tokenizer = make_breezeclip_processing()
    breezeclip.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return breezeclip


def compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "conversion" / "compose_bcqlm.py"), *args], capture_output=True, text=True, timeout=300
    )


def test_help():
    completed = compose("--help")
    assert completed.returncode == 0 and "--language_model" in completed.stdout and "--breezeclip" in completed.stdout


@pytest.mark.parametrize("with_pad_token", [True, False])
def test_compose_loads_both_parts(tmp_path, with_pad_token):
    language_model = save_language_model(tmp_path / "llama", with_pad_token)
    breezeclip = save_breezeclip(tmp_path / "breezeclip")
    completed = compose(
        "--language_model", str(tmp_path / "llama"),
        "--breezeclip", str(tmp_path / "breezeclip"),
        "--output_dir", str(tmp_path / "bcqlm"),
        "--qgcam_heads", "4",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]

    model = AutoModel.from_pretrained(tmp_path / "bcqlm")
    processor = AutoProcessor.from_pretrained(tmp_path / "bcqlm")
    assert isinstance(model, BcQLMForConditionalGeneration)
    for name, tensor in breezeclip.state_dict().items():
        assert torch.equal(model.model.breezeclip.state_dict()[name], tensor), name
    # The decoder is the language model: same logits on text alone (the rows it had; a new pad row is extra).
    ids = processor.tokenizer("Question: What colour is the car?", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = language_model(input_ids=ids).logits
        logits = model(input_ids=ids).logits[..., : expected.shape[-1]]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

    tokenizer = processor.tokenizer
    assert processor.image_token_id == model.config.image_token_id
    assert tokenizer.pad_token is not None and model.generation_config.pad_token_id == tokenizer.pad_token_id
    vocab_rows = model.get_input_embeddings().num_embeddings
    # Embeddings are resized only for a missing padding token; `<image>` needs no row.
    assert vocab_rows == language_model.config.vocab_size + (0 if with_pad_token else 1)
    assert processor.image_token_id >= vocab_rows
    inputs = processor(images=make_image(), text="What colour is the car?", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_compose_refuses_a_model_without_a_decoder(tmp_path):
    save_breezeclip(tmp_path / "breezeclip")
    completed = compose(
        "--language_model", str(tmp_path / "breezeclip"),
        "--breezeclip", str(tmp_path / "breezeclip"),
        "--output_dir", str(tmp_path / "bcqlm"),
    )  # fmt: skip
    assert completed.returncode != 0
