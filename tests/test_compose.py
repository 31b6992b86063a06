"""`conversion/compose_bcqlm.py`: a BcQLM folder from a local causal LM folder and a BreezeCLIP folder."""

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel
from modeling_bcqlm.conversion import compose_bcqlm
from modeling_bcqlm.testing.tiny_models import make_breezeclip_processing, tiny_breezeclip_config

from .helpers import make_image, run_python, save_language_model


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
    return run_python(REPO / "conversion" / "compose_bcqlm.py", *args, cwd=REPO)


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


@pytest.mark.parametrize("tied", [True, False])
def test_composed_model_takes_the_parts_tensors_and_initialises_only_the_new_modules(tmp_path, tied):
    language_model = save_language_model(tmp_path / "llama", tie_word_embeddings=tied)
    save_breezeclip(tmp_path / "breezeclip")
    model, processor = compose_bcqlm(str(tmp_path / "llama"), str(tmp_path / "breezeclip"), {"num_attention_heads": 4})
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert not [name for name, tensor in tensors.items() if tensor.is_meta]
    assert all(tensor.dtype == torch.float32 for tensor in tensors.values() if tensor.is_floating_point())
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    torch.testing.assert_close(model.lm_head.weight, language_model.lm_head.weight, rtol=0, atol=0)
    # Buffers that are not saved (rotary frequencies, position ids) are those of a model built the usual way.
    reference = BcQLMForConditionalGeneration(model.config)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(tensors[name], buffer, rtol=0, atol=0, msg=name)
    # The adapter and Q-GCAM are initialised as `post_init` does it: reproducible by seed, weights ~ N(0, 0.02).
    again, _ = compose_bcqlm(str(tmp_path / "llama"), str(tmp_path / "breezeclip"), {"num_attention_heads": 4})
    other_seed, _ = compose_bcqlm(
        str(tmp_path / "llama"), str(tmp_path / "breezeclip"), {"num_attention_heads": 4}, seed=1
    )
    for name, tensor in model.model.qgcam.state_dict().items():
        assert torch.equal(tensor, again.model.qgcam.state_dict()[name]), name
    weight = model.model.visual_adapter.weight
    assert not torch.equal(weight, other_seed.model.visual_adapter.weight)
    assert weight.std().item() == pytest.approx(model.config.text_config.initializer_range, rel=0.2)
    assert not model.model.visual_adapter.bias.any()

    inputs = processor(images=make_image(), text="What colour is the car?", return_tensors="pt")
    model.save_pretrained(tmp_path / "bcqlm")
    reloaded = BcQLMForConditionalGeneration.from_pretrained(tmp_path / "bcqlm")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reloaded(**inputs).logits, rtol=0, atol=0)
    assert language_model.config.vocab_size == model.get_input_embeddings().num_embeddings
