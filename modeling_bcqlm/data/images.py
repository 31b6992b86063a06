"""Images for the training collators, read and converted as BcQLM's image processor reads and converts them, and the
windows of an image that stage 1's crop distillation shows the teacher.
"""

import numpy as np
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from ..image_processing_bcqlm import BcQLMImageProcessor, to_8bit


def to_rgb_images(images: list) -> list:
    """
    PIL images, local paths or URLs as RGB PIL images: 16-bit and float images rescaled to 8 bits, transparency
    composited onto white (where `image.convert("RGB")` would clip and blacken them).
    """
    images = BcQLMImageProcessor().fetch_images(list(images))
    return [Image.fromarray(convert_to_rgb(to_8bit(image), return_numpy=True)) for image in images]


def border_colour(image) -> tuple[int, int, int]:
    """The median colour of an RGB PIL image's border pixels (the background, in scenes on a plain one)."""
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(value) for value in np.median(border, axis=0))


def crop_window(image, centre: tuple[float, float], side: int, fill: tuple[int, int, int] | None = None):
    """
    The `side` x `side` square of an RGB PIL image centred on `centre` (x, y, in pixels); the part outside the image is
    filled with `fill` (default: its [`border_colour`]).
    """
    window = Image.new("RGB", (side, side), fill or border_colour(image))
    left, top = round(centre[0] - side / 2), round(centre[1] - side / 2)
    inside = (max(left, 0), max(top, 0), min(left + side, image.width), min(top + side, image.height))
    if inside[0] < inside[2] and inside[1] < inside[3]:
        window.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
    return window


def cell_windows(image, grid: int, window: float) -> list:
    """
    One [`crop_window`] per cell of a `grid` x `grid` partition of an RGB PIL image, in row-major order, centred on the
    cell, `window` times the image's shorter side wide.
    """
    side, fill = max(1, round(window * min(image.size))), border_colour(image)
    cell_width, cell_height = image.width / grid, image.height / grid
    return [
        crop_window(image, ((column + 0.5) * cell_width, (row + 0.5) * cell_height), side, fill)
        for row in range(grid)
        for column in range(grid)
    ]


def object_windows(image, boxes, grid: int, window: float) -> list:
    """
    One window per cell of a `grid` x `grid` partition of an RGB PIL image, in row-major order, `window` times the
    image's shorter side wide: centred on the object whose box `(x0, y0, x1, y1)` (pixels) has its centre in the cell
    (the largest one where several do), with everything outside that box in the image's [`border_colour`], so that it
    shows that object alone; a blank window of that colour where no box is centred in the cell.
    """
    side, fill = max(1, round(window * min(image.size))), border_colour(image)
    cell_width, cell_height = image.width / grid, image.height / grid
    centred = {}
    for x0, y0, x1, y1 in sorted(boxes, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]), reverse=True):
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        cell = min(int(centre[1] / cell_height), grid - 1) * grid + min(int(centre[0] / cell_width), grid - 1)
        centred.setdefault(cell, (centre, (x0, y0, x1, y1)))
    windows = []
    for cell in range(grid * grid):
        if cell not in centred:
            windows.append(Image.new("RGB", (side, side), fill))
            continue
        centre, box = centred[cell]
        alone = Image.new("RGB", image.size, fill)
        inside = tuple(round(value) for value in box)
        alone.paste(image.crop(inside), inside[:2])
        windows.append(crop_window(alone, centre, side, fill))
    return windows
