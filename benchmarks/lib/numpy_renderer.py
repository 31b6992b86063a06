"""
A second renderer of the synthetic scenes, written apart from `modeling_bcqlm.data.synthetic_shapes.render_scene`:
each shape is a signed distance field in numpy, its edge anti-aliased by the pixel's coverage, in the background and
shaded colours of the generator's `random_style`. A model that answers the same on its images does not depend on the
generator's exact pixels.
"""

import math

import numpy as np
from PIL import Image

from modeling_bcqlm.data.synthetic_shapes import SQUARE_HALF_SIDE, SceneObject, random_style


def signed_distance(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance in pixels from each point to the shape's edge, negative inside (a bound outside a polygon's corners)."""
    dx, dy = x - obj.x, y - obj.y
    if obj.shape == "circle":
        return np.hypot(dx, dy) - obj.radius
    if obj.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF_SIDE * obj.radius
    # An upright equilateral triangle around its centroid: its edges lie at the inradius (half the circumradius).
    normals = [(math.cos(angle), math.sin(angle)) for angle in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    return np.max([dx * nx + dy * ny for nx, ny in normals], axis=0) - obj.radius / 2


def draw_scene(scene: list[SceneObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    """`scene` drawn on an `image_size` x `image_size` RGB image, pixel centres at integer coordinates, always
    anti-aliased (the style's `anti_aliased` is ignored)."""
    style = random_style(scene, rng)
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    canvas = np.broadcast_to(np.array(style.background, dtype=np.float64), (image_size, image_size, 3))
    for obj, fill in zip(scene, np.array(style.fills, dtype=np.float64)):
        coverage = np.clip(0.5 - signed_distance(obj, x, y), 0.0, 1.0)[..., None]
        canvas = canvas * (1.0 - coverage) + fill * coverage
    return Image.fromarray(np.round(canvas).astype(np.uint8))
