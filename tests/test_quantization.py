"""bitsandbytes 8-bit and 4-bit loading on the CPU, and half-precision loading: what is converted and what is not."""

import pytest
import torch
from transformers import AutoModel, BitsAndBytesConfig

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor

from .helpers import make_image


bnb = pytest.importorskip("bitsandbytes")

QUANTIZATION_CONFIGS = {
    "int8": BitsAndBytesConfig(load_in_8bit=True),
    "nf4-double-quant": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
    ),
    "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
}


@pytest.fixture(scope="module")
def saved(bcqlm_folder):
    model = BcQLMForConditionalGeneration.from_pretrained(bcqlm_folder)
    processor = BcQLMProcessor.from_pretrained(bcqlm_folder)
    inputs = processor(images=make_image(), text="What colour is the car?", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    return bcqlm_folder, inputs, logits, model.get_memory_footprint()


def linear_types(model) -> dict[str, str]:
    return {name: type(module).__name__ for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


@pytest.mark.parametrize("name", list(QUANTIZATION_CONFIGS))
def test_quantized_loading_converts_decoder_adapter_and_qgcam_only(saved, name, tmp_path):
    folder, inputs, logits, fp32_footprint = saved
    model = AutoModel.from_pretrained(folder, quantization_config=QUANTIZATION_CONFIGS[name]).eval()
    # Saved before its first call: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at the first call and
    # saves them back with the block scales rounded to bfloat16.
    model.save_pretrained(tmp_path)
    quantized_class = "Linear8bitLt" if name == "int8" else "Linear4bit"
    for module_name, class_name in linear_types(model).items():
        keep = module_name.startswith("model.breezeclip") or module_name == "lm_head"
        assert (class_name == "Linear") == keep, (module_name, class_name)
        if not keep:
            assert class_name == quantized_class
    assert all(p.dtype == torch.float32 for p in model.model.breezeclip.parameters())
    assert model.get_memory_footprint() < fp32_footprint

    with torch.no_grad():
        quantized_logits = model(**inputs).logits
    relative_error = (quantized_logits - logits).norm() / logits.norm()
    # 4-bit weights of random Gaussian matrices this small are coarse; a broken load errs by ~100%.
    assert relative_error < (0.05 if name == "int8" else 0.3), relative_error
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)

    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded.model.qgcam.q_proj).__name__ == quantized_class
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, quantized_logits)


def test_user_skip_modules_keep_breezeclip_in_full_precision(saved):
    folder, *_ = saved
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head", "model.qgcam"])
    types = linear_types(AutoModel.from_pretrained(folder, quantization_config=config))
    assert types["model.qgcam.q_proj"] == "Linear" and types["model.visual_adapter"] == "Linear8bitLt"
    assert all(types[name] == "Linear" for name in types if name.startswith("model.breezeclip"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading_keeps_breezeclip_in_fp32(saved, dtype):
    folder, inputs, logits, _ = saved
    model = AutoModel.from_pretrained(folder, dtype=dtype).eval()
    assert all(p.dtype == torch.float32 for p in model.model.breezeclip.parameters())
    assert model.model.qgcam.q_proj.weight.dtype == dtype
    assert model.model.language_model.embed_tokens.weight.dtype == dtype
    with torch.no_grad():
        half_logits = model(**inputs).logits
    assert half_logits.dtype == dtype
    assert ((half_logits.float() - logits).norm() / logits.norm()) < 0.05


def test_4bit_layers_the_avx512_bf16_cpu_kernel_cannot_take_use_the_generic_path():
    from modeling_bcqlm import DEFAULT_MODEL
    from modeling_bcqlm.modeling_bcqlm import _fit_4bit_cpu_kernels

    model = AutoModel.from_pretrained(DEFAULT_MODEL, quantization_config=QUANTIZATION_CONFIGS["nf4-double-quant"])
    layers = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    for layer in layers.values():
        layer.support_avx512bf16_for_cpu = True  # as bitsandbytes sets it on such a CPU
    _fit_4bit_cpu_kernels(model)
    # Every layer of the default model has 64 to 384 inputs and outputs in multiples of 32, but Q-GCAM's gate has one
    # output.
    generic = [name for name, layer in layers.items() if not layer.support_avx512bf16_for_cpu]
    assert generic == ["model.qgcam.gate_fc2"] and len(layers) > 30
