"""
BcQLM behind `transformers`' own OpenAI-compatible server: the app of `transformers serve` (`/v1/chat/completions`,
streaming included, `/v1/models`, `/health`), with a model manager that also loads BcQLM folders.

`transformers serve` itself cannot load a model class that `transformers` does not ship: its model manager picks the
class from its static name tables (`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`) or from `getattr(transformers,
config.architectures[0])`, and tells a VLM from an LLM by the class name in
`MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`.
Neither sees classes registered with the Auto classes or loaded as remote code. `BcQLMModelManager` loads BcQLM configs
(the package's classes, or the folder's own code with `trust_remote_code`) through `AutoModelForImageTextToText` and
answers `Modality.VLM` for them; every other model is left to `transformers`' manager. Written against the server
of transformers 5.23 and 5.24; importing it under 5.25 or newer, which moved model loading into a process of its own,
raises an ImportError that says so.
"""

import os

import transformers
from packaging import version
from transformers import AutoConfig, AutoModelForImageTextToText


# 5.25 rewrote the server: models load in an engine process of their own, through a new `ModelLoader`.
if version.parse(transformers.__version__).release[:2] >= (5, 25):
    raise ImportError(
        f"BcQLM's server runs on the server of transformers 5.23 and 5.24, but transformers {transformers.__version__} "
        "is installed (5.25 rewrote the server): pip install 'bcqlm[serve]', which installs transformers<5.25."
    )

from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.systemone import SystemOneHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import GenerationState, Modality


def _split_revision(model_id_and_revision: str) -> tuple[str, str | None]:
    """`"org/model@dev"` -> `("org/model", "dev")`; a local folder (which may hold an `@`) has no revision."""
    if os.path.exists(model_id_and_revision):
        return model_id_and_revision, None
    model_id, _, revision = model_id_and_revision.partition("@")
    if os.path.exists(model_id):  # transformers before 5.24 names a local folder `folder@main`
        return model_id, None
    return model_id, revision or None


class BcQLMModelManager(ModelManager):
    """The model manager of `transformers serve`, which also loads BcQLM models and serves them as VLMs."""

    def _load_model(self, model_id_and_revision, tqdm_class=None, progress_callback=None, gguf_file=None):
        model_id, revision = _split_revision(model_id_and_revision)
        if gguf_file is None:
            config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=self.trust_remote_code)
            if config.model_type == "bcqlm":
                return AutoModelForImageTextToText.from_pretrained(
                    model_id,
                    revision=revision,
                    dtype=self.dtype,
                    device_map=self.device,
                    attn_implementation=self.attn_implementation,
                    quantization_config=self.get_quantization_config(),
                    trust_remote_code=self.trust_remote_code,
                    tqdm_class=tqdm_class,
                )
        return super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)

    @staticmethod
    def get_model_modality(model, processor=None) -> Modality:
        if getattr(model.config, "model_type", None) == "bcqlm":
            return Modality.VLM
        return ModelManager.get_model_modality(model, processor=processor)


def build_app(model_manager: ModelManager):
    """The FastAPI app of `transformers serve` (chat completions, completions, responses, models, health)."""
    state = GenerationState(continuous_batching=False, compile=False)
    return build_server(
        model_manager,
        ChatCompletionHandler(model_manager=model_manager, generation_state=state),
        completion_handler=CompletionHandler(model_manager=model_manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=model_manager, generation_state=state),
        transcription_handler=TranscriptionHandler(model_manager, state),
        systemone_handler=SystemOneHandler(model_manager=model_manager, generation_state=state),
        generation_state=state,
    )
