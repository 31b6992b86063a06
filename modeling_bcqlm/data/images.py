"""Images for the training collators, read and converted as BcQLM's image processor reads and converts them."""

from transformers.image_transforms import convert_to_rgb

from ..image_processing_bcqlm import BcQLMImageProcessor, to_8bit


def to_rgb_images(images: list) -> list:
    """
    PIL images, local paths or URLs as RGB PIL images: 16-bit and float images rescaled to 8 bits, transparency
    composited onto white (where `image.convert("RGB")` would clip and blacken them).
    """
    return [convert_to_rgb(to_8bit(image)) for image in BcQLMImageProcessor().fetch_images(list(images))]
