"""BcQLM: efficient vision-language understanding with distilled Q-gated cross-modal fusion.

`DEFAULT_MODEL` is the folder of the small model shipped with the package. Importing the package registers its
classes with the `transformers` Auto classes (`register_auto_classes`), and marks them so that `save_pretrained` writes
`auto_map` and the code files. `modeling_bcqlm.export.save_hub_folder` also adds the pipeline: its folders answer
`pipeline("visual-question-answering", model=folder, trust_remote_code=True)` where the package is not installed.
"""

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .configuration_bcqlm import BcQLMConfig, BcQLMQGCAMConfig, BreezeCLIPConfig
    from .image_processing_bcqlm import BcQLMImageProcessor
    from .modeling_bcqlm import (
        BcQLMForConditionalGeneration,
        BcQLMModel,
        BcQLMPreTrainedModel,
        BreezeCLIPModel,
        BreezeCLIPPreTrainedModel,
    )
    from .pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline
    from .processing_bcqlm import BcQLMProcessor


# The small BcQLM shipped with the package (trained on synthetic shape scenes by `examples/train_default_model.py`).
DEFAULT_MODEL = str(Path(__file__).parent / "default_model")

# The module of each class, imported when the class is first used.
_CLASS_MODULES = {
    "BcQLMConfig": "configuration_bcqlm",
    "BcQLMQGCAMConfig": "configuration_bcqlm",
    "BreezeCLIPConfig": "configuration_bcqlm",
    "BcQLMImageProcessor": "image_processing_bcqlm",
    "BcQLMForConditionalGeneration": "modeling_bcqlm",
    "BcQLMModel": "modeling_bcqlm",
    "BcQLMPreTrainedModel": "modeling_bcqlm",
    "BreezeCLIPModel": "modeling_bcqlm",
    "BreezeCLIPPreTrainedModel": "modeling_bcqlm",
    "BcQLMVisualQuestionAnsweringPipeline": "pipeline_bcqlm",
    "BcQLMProcessor": "processing_bcqlm",
}


def __getattr__(name: str):
    if name in _CLASS_MODULES:
        return getattr(importlib.import_module(f".{_CLASS_MODULES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_auto_classes() -> None:
    """
    Register BcQLM's config, model, processor and image processor classes with the `transformers` Auto classes, through
    their public `register` methods; registering again changes nothing.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from .configuration_bcqlm import BcQLMConfig, BreezeCLIPConfig
    from .image_processing_bcqlm import BcQLMImageProcessor
    from .modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel
    from .processing_bcqlm import BcQLMProcessor

    AutoConfig.register(BreezeCLIPConfig.model_type, BreezeCLIPConfig, exist_ok=True)
    AutoConfig.register(BcQLMConfig.model_type, BcQLMConfig, exist_ok=True)
    AutoModel.register(BreezeCLIPConfig, BreezeCLIPModel, exist_ok=True)
    # Hub custom-code VLMs answer through `AutoModel`: map it to the generation class.
    AutoModel.register(BcQLMConfig, BcQLMForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(BcQLMConfig, BcQLMForConditionalGeneration, exist_ok=True)
    # One image processor, on PIL, whichever backend is asked for: where torchvision is installed `AutoImageProcessor`
    # asks for a torchvision variant first and would warn that it falls back to PIL.
    AutoImageProcessor.register(
        BcQLMConfig,
        image_processor_classes={"pil": BcQLMImageProcessor, "torchvision": BcQLMImageProcessor},
        exist_ok=True,
    )
    AutoProcessor.register(BcQLMConfig, BcQLMProcessor, exist_ok=True)

    BreezeCLIPConfig.register_for_auto_class()
    BcQLMConfig.register_for_auto_class()
    BreezeCLIPModel.register_for_auto_class("AutoModel")
    BcQLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    BcQLMImageProcessor.register_for_auto_class()
    BcQLMProcessor.register_for_auto_class()


# The `bcqlm` command answers `--help` and argument errors before torch and transformers load (seconds on a small
# CPU), then registers itself; everywhere else, importing the package registers.
_program = Path(sys.argv[0]).name if getattr(sys, "argv", None) else ""
if _program not in ("bcqlm", "bcqlm.exe"):
    register_auto_classes()

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
    "register_auto_classes",
]
