"""BcQLM answering from a folder written by `export_onnx`: the decoder on ONNX Runtime, the rest in PyTorch."""

import copy
import json
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file
from torch import nn
from transformers import DynamicCache, GenerationConfig
from transformers.modeling_outputs import BaseModelOutputWithPast

from ..configuration_bcqlm import BcQLMConfig
from ..modeling_bcqlm import BcQLMForConditionalGeneration


FRONT_WEIGHTS = "front.safetensors"
DECODER_FOLDER = "onnx"
NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# The name of the key/value cache in model inputs and outputs: `cache` from transformers 5.24, `past_key_values` before.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"The ONNX engine needs onnxruntime ({error}): `pip install 'bcqlm[onnx]'`.") from error
    return onnxruntime


def is_onnx_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a BcQLM exported by `export_onnx`."""
    return (Path(folder) / DECODER_FOLDER / "genai_config.json").is_file()


def without_decoder_layers(config: BcQLMConfig) -> BcQLMConfig:
    """`config` with no decoder layers: the parts of BcQLM that stay in PyTorch."""
    config = copy.deepcopy(config)
    config.text_config.num_hidden_layers = 0
    config.text_config.layer_types = []
    return config


class OnnxDecoder(nn.Module):
    """
    BcQLM's decoder and LM head on an ONNX Runtime session, in place of its language model: it takes what `BcQLMModel`
    passes the language model (`inputs_embeds` `(batch_size, sequence_length, hidden_size)`, the attention mask and
    the key/value cache) and returns the last position's logits `(batch_size, 1, vocab_size)` as its last hidden
    state (the graph computes no others: all that generation reads).
    """

    def __init__(self, session, decoder_config: dict, embed_tokens: nn.Embedding):
        super().__init__()
        self.session = session
        self.embed_tokens = embed_tokens
        inputs, outputs = decoder_config["inputs"], decoder_config["outputs"]
        self.num_layers = decoder_config["num_hidden_layers"]
        self.cache_names = [
            [(inputs[f"past_{kind}_names"] % n, outputs[f"present_{kind}_names"] % n) for kind in ("key", "value")]
            for n in range(self.num_layers)
        ]
        self.embeds_name, self.mask_name = inputs["inputs_embeds"], inputs["attention_mask"]
        self.logits_name = outputs["logits"]
        self.cache_shape = (decoder_config["num_key_value_heads"], decoder_config["head_size"])
        self.output_names = [output.name for output in session.get_outputs()]
        self.numpy_dtype = NUMPY_DTYPES[{i.name: i.type for i in session.get_inputs()}[self.embeds_name]]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def _past(self, cache: DynamicCache | None, batch_size: int) -> dict[str, np.ndarray]:
        """The session's `past_*` inputs: the cache's keys and values, or empty ones before the prefill."""
        if cache is None or cache.get_seq_length() == 0:
            empty = np.zeros((batch_size, self.cache_shape[0], 0, self.cache_shape[1]), self.numpy_dtype)
            return {past: empty for names in self.cache_names for past, _ in names}
        feeds = {}
        for layer, ((past_keys, _), (past_values, _)) in enumerate(self.cache_names):
            feeds[past_keys] = cache.layers[layer].keys.numpy()  # shared with torch, no copy
            feeds[past_values] = cache.layers[layer].values.numpy()
        return feeds

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, use_cache=None, **kwargs):
        """The last position's logits `(batch_size, 1, vocab_size)` as `last_hidden_state`, and the updated cache."""
        cache = kwargs.get(CACHE_NAME)
        batch_size, length = inputs_embeds.shape[:2]
        past_length = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, past_length + length, dtype=torch.long)
        if not bool(attention_mask.all()):
            raise ValueError(
                "The ONNX decoder takes unpadded prompts (its attention derives positions from the mask): "
                "`BcQLMOnnxForConditionalGeneration.generate` answers the prompts of a padded batch one by one."
            )
        feeds = {
            self.embeds_name: inputs_embeds.detach().numpy().astype(self.numpy_dtype, copy=False),
            self.mask_name: attention_mask.numpy().astype(np.int64),
            **self._past(cache, batch_size),
        }
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        if use_cache is not False:
            cache = cache if cache is not None else DynamicCache()
            for layer, ((_, key), (_, value)) in enumerate(self.cache_names):
                new_keys, new_values = (torch.from_numpy(outputs[name][:, :, past_length:]) for name in (key, value))
                cache.update(new_keys, new_values, layer)
        logits = torch.from_numpy(outputs[self.logits_name]).float()
        return BaseModelOutputWithPast(last_hidden_state=logits, **{CACHE_NAME: None if use_cache is False else cache})


class BcQLMOnnxForConditionalGeneration(BcQLMForConditionalGeneration):
    """
    BcQLM with its decoder on ONNX Runtime (CPU): `BcQLMForConditionalGeneration` with the decoder layers and LM head
    replaced by an [`OnnxDecoder`], so that `generate` (greedy, beam search, streamers, scores) and the VQA pipeline
    work as with PyTorch; the image tower, question encoder and Q-GCAM run in PyTorch, once per prompt. With a
    decoder exported in fp32 the answers are those of PyTorch. The prompts of a left-padded batch run one by one.

    Example:

    ```python
    >>> from modeling_bcqlm import BcQLMProcessor
    >>> from modeling_bcqlm.engines.onnx_model import BcQLMOnnxForConditionalGeneration
    >>> model = BcQLMOnnxForConditionalGeneration.from_pretrained("bcqlm-onnx-int4")
    >>> processor = BcQLMProcessor.from_pretrained("bcqlm-onnx-int4")
    >>> inputs = processor(images=image, text="What colour is the car?", return_tensors="pt")
    >>> processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=10))
    ```
    """

    @classmethod
    def from_pretrained(cls, folder: str | Path, num_threads: int | None = None) -> "BcQLMOnnxForConditionalGeneration":
        """Load an exported folder; the decoder runs on `num_threads` threads (torch's number by default)."""
        onnxruntime = import_onnxruntime()
        folder = Path(folder)
        if not is_onnx_folder(folder):
            raise ValueError(f"{str(folder)!r} is not a folder written by `export_onnx` (it has no onnx/ folder).")
        config = BcQLMConfig.from_pretrained(folder)
        with init_empty_weights(include_buffers=False):  # the weights come from the file, not a random init
            model = cls(without_decoder_layers(config))
        model.config = config  # the decoder's real shape, for the generation cache
        model.model.load_state_dict(load_file(folder / FRONT_WEIGHTS), assign=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        decoder_config = json.loads((folder / DECODER_FOLDER / "genai_config.json").read_text())["model"]["decoder"]
        session = onnxruntime.InferenceSession(
            str(folder / DECODER_FOLDER / decoder_config["filename"]), options, providers=["CPUExecutionProvider"]
        )
        embed_tokens = model.model.language_model.embed_tokens
        model.model.language_model = OnnxDecoder(session, decoder_config, embed_tokens)
        model.lm_head = nn.Identity()  # the session returns logits
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model.eval()

    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """`generate`, with the prompts of a left-padded batch answered one by one (ids only) and padded as it pads."""
        if input_ids is None or attention_mask is None or input_ids.shape[0] == 1 or bool(attention_mask.all()):
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if kwargs.get("return_dict_in_generate") or kwargs.get("streamer") is not None:
            raise ValueError("The ONNX engine streams and scores unpadded prompts: pass one question at a time.")
        rows = []
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool()
            row_kwargs = {k: v[row : row + 1] if torch.is_tensor(v) else v for k, v in kwargs.items()}
            generated = super().generate(input_ids=input_ids[row : row + 1, keep], **row_kwargs)
            rows.append(generated[0, int(keep.sum()) :])
        pad = self.generation_config.pad_token_id
        answers = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad if pad is not None else 0)
        return torch.cat([input_ids, answers], dim=1)
