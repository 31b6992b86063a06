"""A Hub-ready folder: a BcQLM checkpoint that loads as remote code where the package is not installed."""

import json
import os
from pathlib import Path

from transformers.dynamic_module_utils import custom_object_save

from ..pipeline_bcqlm import BcQLMVisualQuestionAnsweringPipeline


def save_hub_folder(model, processor, save_directory: str | os.PathLike) -> None:
    """
    Save `model` and `processor` into `save_directory` with the five code files (configuration, modeling, processing,
    image processing, pipeline) and the config entries that load them with `trust_remote_code=True`: `auto_map` for
    `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText`, `AutoProcessor`, `AutoImageProcessor`, and
    `custom_pipelines` for `pipeline("visual-question-answering" | "vqa", model=..., trust_remote_code=True)`.
    """
    # The package registers its classes for the Auto classes: `save_pretrained` writes their code and `auto_map`.
    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)
    config_file = Path(save_directory) / "config.json"
    config = json.loads(config_file.read_text())
    # Hub custom-code VLMs are loaded through `AutoModel` too.
    config["auto_map"]["AutoModel"] = config["auto_map"]["AutoModelForImageTextToText"]
    config["custom_pipelines"] = BcQLMVisualQuestionAnsweringPipeline.custom_pipelines()
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    custom_object_save(BcQLMVisualQuestionAnsweringPipeline, save_directory)
