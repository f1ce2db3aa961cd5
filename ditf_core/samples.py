"""Bundled sample images, generated here (license-clean): a synthetic scene and the same scene under a known
affine transform, so matching and warping outputs can be checked against the truth."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENE_SIZE = (384, 288)  # (width, height)
# The known transform from scene A to scene B: rotate about the centre, scale, shift (pixels).
PAIR_ROTATION_DEG = 12.0
PAIR_SCALE = 0.9
PAIR_SHIFT = (18.0, -10.0)


def sample_scene(seed: int = 7, size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """A textured scene of coloured shapes on a gradient, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack(
        [0.25 + 0.5 * x / width, 0.35 + 0.3 * y / height, 0.6 - 0.3 * (x + y) / (width + height)], axis=-1
    )
    background += 0.04 * rng.standard_normal((height, width, 1)).astype(np.float32)
    image = Image.fromarray((background.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        r = rng.uniform(0.05, 0.14) * min(width, height)
        colour = tuple(int(c) for c in rng.integers(20, 236, size=3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=(0, 0, 0), width=2)
        elif kind == 1:
            draw.rectangle([cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r], fill=colour, outline=(255, 255, 255), width=2)
        else:
            points = [
                (cx + r * (1.0 if i % 2 == 0 else 0.45) * math.cos(i * math.pi / 5),
                 cy + r * (1.0 if i % 2 == 0 else 0.45) * math.sin(i * math.pi / 5))
                for i in range(10)
            ]
            draw.polygon(points, fill=colour, outline=(0, 0, 0))
    return image.filter(ImageFilter.SMOOTH)


def pair_matrix(size: tuple[int, int] = SCENE_SIZE) -> np.ndarray:
    """3x3 matrix taking scene-A pixel coordinates (x, y, 1) to scene-B pixel coordinates."""
    width, height = size
    cx, cy = (width - 1) / 2, (height - 1) / 2
    angle = math.radians(PAIR_ROTATION_DEG)
    c, s = PAIR_SCALE * math.cos(angle), PAIR_SCALE * math.sin(angle)
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    rotate = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    back = np.array([[1, 0, cx + PAIR_SHIFT[0]], [0, 1, cy + PAIR_SHIFT[1]], [0, 0, 1]])
    return back @ rotate @ to_centre


def sample_pair(seed: int = 7) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """(scene A, scene B = A under :func:`pair_matrix`, that matrix)."""
    scene = sample_scene(seed)
    matrix = pair_matrix(scene.size)
    # PIL works in pixel-corner coordinates and asks, for each output pixel, where to read in the input.
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inverse = np.linalg.inv(half @ matrix @ np.linalg.inv(half))
    coefficients = tuple(inverse[:2].reshape(-1))
    warped = scene.transform(scene.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BICUBIC,
                             fillcolor=(128, 128, 128))
    return scene, warped, matrix
