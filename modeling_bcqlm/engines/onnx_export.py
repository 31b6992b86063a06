"""
Export of BcQLM for ONNX Runtime: `export_onnx` writes the folder that `BcQLMOnnxForConditionalGeneration`
(`onnx_model.py`) answers from.

The decoder, which costs nearly all the time of an answer, is exported by onnxruntime-genai's model builder (its own
int4/int8 weight quantization, `GroupQueryAttention` with a key/value cache, and an `inputs_embeds` input so that the
visual tokens can be fed in). The image tower, question encoder, Q-GCAM and the token embeddings stay in PyTorch: they
run once per prompt. An exported folder holds:

    config.json, the processor's files    as in any BcQLM folder (`AutoConfig`, `AutoProcessor` load them)
    front.safetensors                     BcQLM's weights without the decoder layers
    onnx/model.onnx, onnx/genai_config.json, ...   the decoder, as the builder writes it
"""

import gc
import logging
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from transformers import LlamaConfig

from ..modeling_bcqlm import BcQLMForConditionalGeneration
from ..processing_bcqlm import BcQLMProcessor
from . import ONNX_PRECISIONS
from .onnx_model import DECODER_FOLDER, FRONT_WEIGHTS


def _import_builder():
    try:
        from onnxruntime_genai.models import builder
    except ImportError as error:
        raise ImportError(
            f"Exporting for ONNX Runtime needs onnxruntime-genai's model builder ({error}): "
            "`pip install 'bcqlm[onnx]'`."
        ) from error
    return builder


def _write_decoder(model: BcQLMForConditionalGeneration, processor: BcQLMProcessor, folder: Path) -> None:
    """Write the decoder and its LM head as a Llama checkpoint (the input of the model builder), without copying them."""
    text_config = model.config.text_config
    LlamaConfig.from_dict({**text_config.to_dict(), "architectures": ["LlamaForCausalLM"]}).save_pretrained(folder)
    weights = {f"model.{name}": tensor for name, tensor in model.model.language_model.state_dict().items()}
    if not text_config.tie_word_embeddings:
        weights["lm_head.weight"] = model.lm_head.weight
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, folder / "model.safetensors")
    processor.tokenizer.save_pretrained(folder)


def export_onnx(model_path: str | Path, output_dir: str | Path, precision: str = "int4") -> Path:
    """
    Export the BcQLM at `model_path` (a folder or Hub id) for ONNX Runtime on CPUs, its decoder's weights in
    `precision` ("int4", "int8" or "fp32"); returns `output_dir`.
    """
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(ONNX_PRECISIONS)}, got {precision!r}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{str(output_dir)!r} is not empty: export into a new or empty folder.")
    builder = _import_builder()
    model = BcQLMForConditionalGeneration.from_pretrained(model_path).eval()
    processor = BcQLMProcessor.from_pretrained(model_path)
    # The parts that stay in PyTorch: everything but the decoder layers (and the LM head, tied or in the ONNX graph).
    front = {name: t for name, t in model.model.state_dict().items() if not name.startswith("language_model.layers.")}

    output_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    save_file({name: tensor.contiguous() for name, tensor in front.items()}, output_dir / FRONT_WEIGHTS)
    with tempfile.TemporaryDirectory() as work:
        decoder_folder = Path(work) / "decoder"
        _write_decoder(model, processor, decoder_folder)
        del model, front  # the builder loads the decoder again: one copy in memory at a time
        gc.collect()
        arguments = (None, str(decoder_folder), str(output_dir / DECODER_FOLDER), precision, "cpu", work)
        quantizer_logs = logging.getLogger("onnxruntime.quantization")
        level = quantizer_logs.level
        quantizer_logs.setLevel(logging.WARNING)  # one line per matrix otherwise
        try:
            # The front embeds the prompt; the prefill computes logits for the last position only (the answer's next
            # token), not for every prompt position through the 128256-word LM head.
            options = builder.parse_extra_options(*arguments, ["exclude_embeds=true", "prune_lm_head=true"])
            builder.create_model(*arguments, **options)
        finally:
            quantizer_logs.setLevel(level)
    return output_dir
