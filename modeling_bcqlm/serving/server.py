"""
BcQLM behind `transformers`' own OpenAI-compatible server: the app of `transformers serve` (`/v1/chat/completions`,
streaming included, `/v1/models`, `/health`), with a model manager that also loads BcQLM folders.

`transformers serve` itself cannot load a model class that `transformers` does not ship: it picks the class from its
static name tables (`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`) or from `getattr(transformers, config.architectures[0])`,
and tells a VLM from an LLM by the class name in `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`.
Neither sees classes registered with the Auto classes or loaded as remote code. `BcQLMModelManager` loads BcQLM configs
(the package's classes, or the folder's own code with `trust_remote_code`) through `AutoModelForImageTextToText` and
serves them as VLMs (`Modality.VLM`); every other model is left to `transformers`. It runs on the server of
transformers 5.23 and 5.24, whose model manager loads the models, and on the one of 5.25, which loads each model in a
process of its own with a `ModelLoader` (`BcQLMModelLoader` here).
"""

import os

import transformers
from packaging import version
from transformers import AutoConfig, AutoModelForImageTextToText
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelManager
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.systemone import SystemOneHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import GenerationState, Modality

from .. import register_auto_classes


# 5.25 rewrote the server: each model loads and generates in a process of its own (its engine), through a `ModelLoader`.
ENGINE_PROCESSES = version.parse(transformers.__version__).release[:2] >= (5, 25)
if ENGINE_PROCESSES:
    from transformers.cli.serving.model_manager import ModelLoader
    from transformers.cli.serving.utils import parse_model_id


def _load_bcqlm(settings, model_id: str, revision: str | None, tqdm_class=None):
    """The model at `model_id` if it is a BcQLM, loaded with the server's `settings` (device, dtype, ...); else None."""
    config = AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=settings.trust_remote_code)
    if config.model_type != "bcqlm":
        return None
    return AutoModelForImageTextToText.from_pretrained(
        model_id,
        revision=revision,
        dtype=settings.dtype,
        device_map=settings.device,
        attn_implementation=settings.attn_implementation,
        quantization_config=settings.get_quantization_config(),
        trust_remote_code=settings.trust_remote_code,
        tqdm_class=tqdm_class,
    )


if ENGINE_PROCESSES:

    class BcQLMModelLoader(ModelLoader):
        """The model loader of `transformers serve`, which also loads BcQLM models; it runs in the model's process."""

        def load_model_and_processor(self, model_id, on_progress=None):
            # The model's process is a fresh interpreter, which the `bcqlm` command's registration does not reach.
            if not self.trust_remote_code:  # else the folder's own code (its `auto_map`)
                register_auto_classes()
            return super().load_model_and_processor(model_id, on_progress)

        def _load_model(self, model_id, tqdm_class=None, progress_callback=None):
            repo, revision, gguf_file = parse_model_id(model_id)
            model = None if gguf_file else _load_bcqlm(self, repo, revision, tqdm_class)
            return super()._load_model(model_id, tqdm_class, progress_callback) if model is None else model

    class BcQLMModelManager(ModelManager):
        """The model manager of `transformers serve`, whose models' processes also load BcQLM models, served as VLMs."""

        def __init__(self, force_model=None, model_timeout=300, **loader_args):
            # 5.24's manager took `device`, `dtype`, `trust_remote_code`, ... itself; the loader takes them now.
            loader = BcQLMModelLoader(**loader_args)
            super().__init__(loader, GenerationState(), model_timeout=model_timeout, force_model=force_model)

        def get_engine(self, model):
            engine = super().get_engine(model)
            # `EngineClient.modality` asks `ModelLoader.get_model_modality` (the class's, not our loader's), which knows
            # VLMs by transformers' own class names; the cached property is set instead.
            if engine.model_config.model_type == "bcqlm":
                engine.modality = Modality.VLM
            return engine

else:

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
            model = None if gguf_file else _load_bcqlm(self, *_split_revision(model_id_and_revision), tqdm_class)
            if model is None:
                return super()._load_model(model_id_and_revision, tqdm_class, progress_callback, gguf_file)
            return model

        @staticmethod
        def get_model_modality(model, processor=None) -> Modality:
            if getattr(model.config, "model_type", None) == "bcqlm":
                return Modality.VLM
            return ModelManager.get_model_modality(model, processor=processor)


def build_app(model_manager: ModelManager):
    """The FastAPI app of `transformers serve` (chat completions, completions, responses, models, health)."""
    if ENGINE_PROCESSES:  # the models' processes generate as their manager's state says
        state = model_manager.generation_state
        server_args = {"transcription_handler": TranscriptionHandler(model_manager)}
    else:
        state = GenerationState(continuous_batching=False, compile=False)
        server_args = {"transcription_handler": TranscriptionHandler(model_manager, state), "generation_state": state}
    return build_server(
        model_manager,
        ChatCompletionHandler(model_manager=model_manager, generation_state=state),
        completion_handler=CompletionHandler(model_manager=model_manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=model_manager, generation_state=state),
        systemone_handler=SystemOneHandler(model_manager=model_manager, generation_state=state),
        **server_args,
    )
