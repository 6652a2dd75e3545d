"""Drawing pieces of the toy data sets (voc12/toy.py, coco14/toy.py): class textures and the
textured grey background. Pure functions of coordinate grids and a generator."""

from __future__ import annotations

import numpy as np


def horizontal_stripes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (y // 4) % 2


def vertical_stripes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x // 3) % 2


def checkerboard(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (y // 5 + x // 5) % 2


def diagonal_stripes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((x + y) // 4) % 2


def dots(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((y % 6 < 3) & (x % 6 < 3)).astype(np.int64)


def flat(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.ones_like(y)


def grey_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A low-saturation grey gradient with noise: texture, but no toy-class hue."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1.0) / 2.0
    low, high = sorted(rng.uniform(50, 200, size=2))
    grey = low + (high - low) * ramp
    tint = rng.uniform(-12, 12, size=3)
    noise = rng.normal(0.0, 10.0, size=(height, width, 3))
    return grey[..., None] + tint + noise
