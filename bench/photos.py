"""The real photographs the benchmarks feed the data pipeline: SLIC's cost depends on image content,
and noise-like synthetic images give it a different amount of work."""

from __future__ import annotations

import skimage.data
from PIL import Image

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # bundled with scikit-image


def sample_photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SAMPLE_PHOTOS]
