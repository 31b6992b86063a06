"""BcQLM: efficient vision-language understanding with distilled Q-gated cross-modal fusion.

`DEFAULT_MODEL` is the folder of the small model shipped with the package. Importing the package registers its
classes with the `transformers` Auto classes, and marks them so that `save_pretrained` writes `auto_map` and the code
files: saved folders load with `trust_remote_code=True` where the package is not installed.
"""

from pathlib import Path

import transformers.pipelines
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_bcqlm import BcQLMConfig, BcQLMQGCAMConfig, BreezeCLIPConfig
from .image_processing_bcqlm import BcQLMImageProcessor
from .modeling_bcqlm import (
    BcQLMForConditionalGeneration,
    BcQLMModel,
    BcQLMPreTrainedModel,
    BreezeCLIPModel,
    BreezeCLIPPreTrainedModel,
)
from .pipeline_bcqlm import VQA_TASKS, BcQLMVisualQuestionAnsweringPipeline
from .processing_bcqlm import BcQLMProcessor


# The small BcQLM shipped with the package (trained on synthetic shape scenes by `examples/train_default_model.py`).
DEFAULT_MODEL = str(Path(__file__).parent / "default_model")

AutoConfig.register(BreezeCLIPConfig.model_type, BreezeCLIPConfig, exist_ok=True)
AutoConfig.register(BcQLMConfig.model_type, BcQLMConfig, exist_ok=True)
AutoModel.register(BreezeCLIPConfig, BreezeCLIPModel, exist_ok=True)
# Hub custom-code VLMs answer through `AutoModel`: map it to the generation class.
AutoModel.register(BcQLMConfig, BcQLMForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(BcQLMConfig, BcQLMForConditionalGeneration, exist_ok=True)
# One image processor, on PIL, whichever backend is asked for: where torchvision is installed `AutoImageProcessor` asks
# for a torchvision variant first and would warn that it falls back to PIL.
AutoImageProcessor.register(
    BcQLMConfig, image_processor_classes={"pil": BcQLMImageProcessor, "torchvision": BcQLMImageProcessor}, exist_ok=True
)
AutoProcessor.register(BcQLMConfig, BcQLMProcessor, exist_ok=True)

BreezeCLIPConfig.register_for_auto_class()
BcQLMConfig.register_for_auto_class()
BreezeCLIPModel.register_for_auto_class("AutoModel")
BcQLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
BcQLMImageProcessor.register_for_auto_class()
BcQLMProcessor.register_for_auto_class()

# `transformers` 5 removed the built-in `visual-question-answering` task and its `vqa` alias: each gets an entry, and
# leaves the list of removed tasks (which `pipeline()` checks before the registry), so that with the package imported
# `pipeline("visual-question-answering", model=...)` loads any BcQLM folder. Saved folders also name the pipeline in
# `custom_pipelines` (see `BcQLMForConditionalGeneration.save_pretrained`), for loading as remote code.
for _task in VQA_TASKS:
    getattr(transformers.pipelines, "REMOVED_TASKS", {}).pop(_task, None)
    if PIPELINE_REGISTRY.supported_tasks.get(_task, {}).get("impl") is not BcQLMVisualQuestionAnsweringPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            _task, pipeline_class=BcQLMVisualQuestionAnsweringPipeline, pt_model=AutoModelForImageTextToText
        )
# `register_pipeline` keeps the last task only: the pipeline's own `save_pretrained` writes every entry from this.
BcQLMVisualQuestionAnsweringPipeline._registered_impl = {
    _task: PIPELINE_REGISTRY.supported_tasks[_task] for _task in VQA_TASKS
}

__all__ = [
    "BcQLMConfig",
    "BcQLMImageProcessor",
    "BcQLMProcessor",
    "BcQLMQGCAMConfig",
    "BcQLMVisualQuestionAnsweringPipeline",
    "BreezeCLIPConfig",
    "BcQLMForConditionalGeneration",
    "BcQLMModel",
    "BcQLMPreTrainedModel",
    "BreezeCLIPModel",
    "BreezeCLIPPreTrainedModel",
    "DEFAULT_MODEL",
]
