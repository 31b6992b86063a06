"""Tiny BcQLM configurations for tests (hidden sizes <= 64, 1-2 layers per part)."""

from examples.tiny_bcqlm import (
    TINY_IMAGE_SIZE,
    make_breezeclip_processing,
    make_tiny_clip_teacher,
    tiny_bcqlm_config,
    tiny_breezeclip_config,
)


__all__ = [
    "TINY_IMAGE_SIZE",
    "make_breezeclip_processing",
    "make_tiny_clip_teacher",
    "tiny_bcqlm_config",
    "tiny_breezeclip_config",
]
