"""BcQLM checkpoints made from other ones: composed from pretrained parts, converted from the authors' release."""

from .compose import build_bcqlm, compose_bcqlm
from .original_checkpoints import (
    RELEASED_QGCAM_HEADS,
    SourceTensors,
    convert_breezeclip,
    convert_original_bcqlm,
    convert_qgcam,
)


__all__ = [
    "RELEASED_QGCAM_HEADS",
    "SourceTensors",
    "build_bcqlm",
    "compose_bcqlm",
    "convert_breezeclip",
    "convert_original_bcqlm",
    "convert_qgcam",
]
