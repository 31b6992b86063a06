"""BcQLM answering from a folder written by `export_onnx`: the decoder on ONNX Runtime, the rest in PyTorch."""

import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from ..configuration_bcqlm import BcQLMConfig
from ..modeling_bcqlm import BcQLMModel


FRONT_WEIGHTS = "front.safetensors"
DECODER_FOLDER = "onnx"
NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"The ONNX engine needs onnxruntime ({error}): `pip install 'bcqlm[onnx]'`.") from error
    return onnxruntime


def is_onnx_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a BcQLM exported by `export_onnx`."""
    return (Path(folder) / DECODER_FOLDER / "genai_config.json").is_file()


def front_model(config: BcQLMConfig) -> BcQLMModel:
    """A `BcQLMModel` of `config` without decoder layers: the parts that stay in PyTorch."""
    config = copy.deepcopy(config)
    config.text_config.num_hidden_layers = 0
    config.text_config.layer_types = []
    return BcQLMModel(config).eval()


class BcQLMOnnxForConditionalGeneration:
    """
    BcQLM with its decoder on ONNX Runtime (CPU), for greedy answers. It takes the processor's outputs as
    `BcQLMForConditionalGeneration.generate` does and returns the same ids; with a decoder exported in fp32 the answers
    are those of PyTorch.

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

    device = torch.device("cpu")

    def __init__(self, config: BcQLMConfig, front: BcQLMModel, session, decoder_config: dict, generation_config):
        self.config = config
        self.front = front
        self.session = session
        self.generation_config = generation_config
        self.context_length = decoder_config["context_length"]
        decoder = decoder_config["decoder"]
        names = decoder["inputs"], decoder["outputs"]
        self._cache_names = [
            (names[0][f"past_{kind}_names"] % layer, names[1][f"present_{kind}_names"] % layer)
            for layer in range(decoder["num_hidden_layers"])
            for kind in ("key", "value")
        ]
        self._embeds_name, self._mask_name = names[0]["inputs_embeds"], names[0]["attention_mask"]
        self._logits_name = names[1]["logits"]
        self._output_names = [output.name for output in session.get_outputs()]
        self._cache_shape = (decoder["num_key_value_heads"], decoder["head_size"])
        self._dtype = NUMPY_DTYPES[{i.name: i.type for i in session.get_inputs()}[self._embeds_name]]

    @classmethod
    def from_pretrained(cls, folder: str | Path, num_threads: int | None = None) -> "BcQLMOnnxForConditionalGeneration":
        """Load an exported folder; the decoder runs on `num_threads` threads (torch's number by default)."""
        onnxruntime = import_onnxruntime()
        folder = Path(folder)
        if not is_onnx_folder(folder):
            raise ValueError(f"{str(folder)!r} is not a folder written by `export_onnx` (it has no onnx/ folder).")
        config = BcQLMConfig.from_pretrained(folder)
        front = front_model(config)
        front.load_state_dict(load_file(folder / FRONT_WEIGHTS))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        decoder_config = json.loads((folder / DECODER_FOLDER / "genai_config.json").read_text())["model"]
        session = onnxruntime.InferenceSession(
            str(folder / DECODER_FOLDER / decoder_config["decoder"]["filename"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        generation_config = GenerationConfig.from_model_config(config.text_config)
        if (folder / "generation_config.json").is_file():
            generation_config = GenerationConfig.from_pretrained(folder)
        return cls(config, front, session, decoder_config, generation_config)

    @torch.no_grad()
    def prompt_embeddings(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        image_features: torch.FloatTensor | None = None,
    ) -> np.ndarray:
        """The decoder's input embeddings of the prompt, visual tokens included: `(1, sequence_length, hidden_size)`."""
        if pixel_values is None and image_features is None:
            return self.front.get_input_embeddings()(input_ids).numpy()
        if image_features is None:
            image_features = self.front.get_image_features(pixel_values).pooler_output
        fused = self.front.get_fused_image_features(image_features, question_input_ids, question_attention_mask)
        return self.front.embed_prompt(input_ids, fused).numpy()

    @property
    def _eos_ids(self) -> set[int]:
        eos = self.generation_config.eos_token_id
        return {eos} if isinstance(eos, int) else set(eos or ())

    def _check_prompt(self, input_ids: torch.LongTensor) -> None:
        if input_ids.shape[1] >= self.context_length:
            raise ValueError(
                f"The prompt is {input_ids.shape[1]} tokens long; the exported decoder reads at most "
                f"{self.context_length} positions. Shorten the question."
            )

    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        image_features: torch.FloatTensor | None = None,
        max_new_tokens: int | None = None,
        streamer=None,
        do_sample: bool = False,
        num_beams: int = 1,
    ) -> torch.LongTensor:
        """
        Greedy decoding of `input_ids` `(batch_size, prompt_length)` (left-padded, as the processor pads) with the
        processor's image and question inputs (`pixel_values`, `question_input_ids`, `question_attention_mask`) or
        `image_features`. Returns the prompts and answers `(batch_size, prompt_length + new_tokens)`, answers ending at
        the end-of-text token and padded with the pad token, as `generate` returns them. The prompts of a batch run
        one after the other. A `streamer` (e.g. `TextStreamer`, one prompt only) gets the prompt, then each new token.
        """
        if do_sample or num_beams != 1:
            raise ValueError("The ONNX engine decodes greedily: drop `do_sample` and `num_beams`.")
        if input_ids.shape[0] > 1 and streamer is not None:
            raise ValueError("A streamer follows one prompt: pass the inputs of one question.")
        image_inputs = {
            "pixel_values": pixel_values,
            "question_input_ids": question_input_ids,
            "question_attention_mask": question_attention_mask,
            "image_features": image_features,
        }
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        answers = []
        for row in range(input_ids.shape[0]):
            prompt = input_ids[row : row + 1, mask[row].bool()]
            row_inputs = {name: value[row : row + 1] for name, value in image_inputs.items() if value is not None}
            answers.append(self._generate_one(prompt, max_new_tokens, streamer, **row_inputs))
        pad = self.generation_config.pad_token_id
        pad = pad if pad is not None else min(self._eos_ids, default=0)
        width = max(len(answer) for answer in answers)
        padded = [answer + [pad] * (width - len(answer)) for answer in answers]
        return torch.cat([input_ids, torch.tensor(padded, dtype=input_ids.dtype).reshape(len(answers), width)], dim=1)

    def _generate_one(self, input_ids: torch.LongTensor, max_new_tokens, streamer, **image_inputs) -> list[int]:
        """The greedy answer ids to one unpadded prompt `(1, prompt_length)`."""
        self._check_prompt(input_ids)
        max_new_tokens = max_new_tokens or self.generation_config.max_new_tokens or 32
        max_new_tokens = min(max_new_tokens, self.context_length - input_ids.shape[1])
        eos_ids = self._eos_ids
        if streamer is not None:
            streamer.put(input_ids.cpu())
        embeddings = self.prompt_embeddings(input_ids, **image_inputs).astype(self._dtype)
        empty = np.zeros((1, self._cache_shape[0], 0, self._cache_shape[1]), self._dtype)
        cache = {past: empty for past, _ in self._cache_names}
        new_tokens = []
        for _ in range(max_new_tokens):
            length = input_ids.shape[1] + len(new_tokens)
            feeds = {self._embeds_name: embeddings, self._mask_name: np.ones((1, length), np.int64), **cache}
            outputs = dict(zip(self._output_names, self.session.run(self._output_names, feeds)))
            token = int(outputs[self._logits_name][0, -1].argmax())
            new_tokens.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
            if token in eos_ids:
                break
            cache = {past: outputs[present] for past, present in self._cache_names}
            with torch.no_grad():
                embeddings = self.front.get_input_embeddings()(torch.tensor([[token]])).numpy().astype(self._dtype)
        if streamer is not None:
            streamer.end()
        return new_tokens
