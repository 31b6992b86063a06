"""Image processor of BcQLM: CLIP-style preprocessing on the PIL backend (no torchvision needed)."""

import io
import os

import numpy as np
from huggingface_hub.utils import httpx  # the HTTP client of the Hub library (and of `load_image`)
from PIL import Image, ImageOps
from transformers import CLIPImageProcessorPil
from transformers.image_utils import ImageInput, is_pil_image, is_valid_image, load_image


# PIL modes whose pixels do not fit in 8 bits; they are rescaled to 8 bits before RGB conversion.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WIDE_MODES = ("I", "F")
NUM_CHANNELS = (1, 3, 4)
# Seconds to wait for an image URL's server (to connect, and between bytes) unless a `timeout` is given.
DEFAULT_TIMEOUT = 10.0


def _fetch_url(url: str, timeout: float) -> io.BytesIO:
    """The bytes at an http(s) URL, waiting at most `timeout` seconds; a `ValueError` that names the URL on failure."""
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        return io.BytesIO(response.raise_for_status().content)
    except httpx.TimeoutException as err:
        raise ValueError(
            f"The server of {url!r} did not answer within {timeout:g} seconds. Check the URL, or wait longer with a "
            "larger `timeout` (`--timeout` on the command line)."
        ) from err
    except httpx.HTTPError as err:
        raise ValueError(f"Could not fetch the image at {url!r} ({err}). Check the URL and the network.") from err


def _open_image(source: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> Image.Image:
    """
    Open and fully decode an image file or http(s) URL, upright by its EXIF orientation and in its own PIL mode
    (`load_image` would convert it to RGB, dropping transparency and clipping 16-bit values; the image processor
    converts). Raises a `ValueError` that names the source on failure.
    """
    is_url = isinstance(source, str) and source.startswith(("http://", "https://"))
    if not is_url and not os.path.isfile(source):
        problem = "is a directory" if os.path.isdir(source) else "does not exist"
        raise ValueError(
            f"Image file {str(source)!r} {problem}. Pass the path of an image file, an http(s) URL, or the image "
            "itself (a PIL image, numpy array or torch tensor)."
        )
    file = _fetch_url(source, timeout) if is_url else source
    try:
        image = Image.open(file)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"{str(source)!r} is not an image that PIL can read ({err}). Pass a PNG, JPEG, WebP, TIFF or other image."
        ) from err
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ValueError(f"Image {str(source)!r} is corrupt or truncated ({err}). Re-download or re-export it.") from err
    return ImageOps.exif_transpose(image)


def _check_image_array(image):
    """Check the shape of a numpy array or torch tensor image; a 2-D (height, width) array gets a channel axis."""
    shape = tuple(image.shape)
    if image.ndim == 2:
        return image[..., None]
    if image.ndim in (3, 4) and (shape[image.ndim - 3] in NUM_CHANNELS or shape[-1] in NUM_CHANNELS):
        return image
    raise ValueError(
        f"Cannot read an image array of shape {shape}: expected (height, width), (height, width, channels) or "
        "(channels, height, width) with 1, 3 or 4 channels, or a 4-D batch of those. "
        "Reshape the array or pass a PIL image."
    )


def to_8bit(image: Image.Image) -> Image.Image:
    """
    Rescale a 16-bit (`I;16*`), 32-bit integer (`I`) or float (`F`) PIL image to an 8-bit `L` image by its value
    range, where PIL's own conversion would clip; other images are returned as they are. `I;16*` images span
    [0, 65535]. `I` and `F` images span the smallest of [0, 1] (`F` only), [0, 255] and [0, 65535] that holds their
    values, or their own min-max otherwise.
    """
    if image.mode not in SIXTEEN_BIT_MODES + WIDE_MODES:
        return image
    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode in SIXTEEN_BIT_MODES:
        low, high = 0.0, 65535.0
    elif low >= 0.0 and high <= 1.0 and image.mode == "F":
        low, high = 0.0, 1.0
    elif low >= 0.0 and high <= 255.0:
        low, high = 0.0, 255.0
    elif low >= 0.0 and high <= 65535.0:
        low, high = 0.0, 65535.0
    scale = 255.0 / (high - low) if high > low else 0.0
    pixels = np.clip(np.round((pixels - low) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


class BcQLMImageProcessor(CLIPImageProcessorPil):
    r"""
    Image processor of BcQLM's image tower (MobileViT), with `CLIPImageProcessorPil`'s settings: resize the shortest
    edge to 224 (bicubic), center crop 224x224, rescale by 1/255 and normalise with CLIP's mean and std, giving
    `pixel_values` of shape `(batch_size, 3, 224, 224)`.

    Accepts PIL images, numpy arrays, torch tensors, paths to local image files (`str` or `os.PathLike`), `http(s)://`
    URLs and `data:image/` strings. Every PIL mode is converted to RGB: transparency is
    composited onto white, and 16-bit, 32-bit integer and float images are first rescaled to 8 bits by their value
    range (a 16-bit white becomes 255 rather than being clipped).
    """

    def fetch_images(
        self, image_url_or_urls: ImageInput | str | os.PathLike | list, timeout: float | None = None
    ) -> ImageInput:
        """
        Open paths and URLs as PIL images and check the shapes of arrays, keeping the nesting of lists. A URL's server
        gets `timeout` seconds (`DEFAULT_TIMEOUT` when `None`) to connect and between bytes. Every path that reads
        images (processor, pipeline, collators, CLI) comes here.
        """
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(image, timeout) for image in image_url_or_urls]
        if isinstance(image_url_or_urls, str) and image_url_or_urls.startswith("data:image/"):
            return load_image(image_url_or_urls)
        if isinstance(image_url_or_urls, (str, os.PathLike)):
            return _open_image(image_url_or_urls, timeout)
        if is_pil_image(image_url_or_urls):
            return image_url_or_urls
        if is_valid_image(image_url_or_urls):
            return _check_image_array(image_url_or_urls)
        raise ValueError(
            f"Unsupported image of type {type(image_url_or_urls).__name__}: pass a PIL image, a numpy array, a torch "
            "tensor or the path to an image file."
        )

    def process_image(self, image: ImageInput, *args, **kwargs) -> np.ndarray:
        """Convert one image to a channels-first array, rescaling PIL images wider than 8 bits to 8 bits first."""
        if is_pil_image(image):
            image = to_8bit(image)
        return super().process_image(image, *args, **kwargs)


__all__ = ["BcQLMImageProcessor"]
