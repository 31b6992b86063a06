"""Images for the training collators: PIL images, local paths or URLs, as RGB."""

from transformers.image_utils import load_image


def to_rgb_images(images: list) -> list:
    """Images as RGB PIL images; paths and URLs are loaded."""
    return [load_image(image).convert("RGB") if isinstance(image, str) else image.convert("RGB") for image in images]
