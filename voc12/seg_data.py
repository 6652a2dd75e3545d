"""The segmentation stage's datasets (SPEC_SEG §2, §4) for any data set of engine/datasets.py: training crops
of an image and its pseudo-label PNG, and the test-time scales of an image.

The augmentation calls OpenCV exactly as the reference does (cv2.cvtColor on uint8, cv2.resize with fx/fy),
so it is the reference's bit for bit, and draws from a `random.Random` in the reference's order (three HSV
deltas, flip, scale, crop width then height offsets). That generator is seeded per (seed, epoch, index), so
a resumed run and any worker count see the same samples (the reference's per-worker Python seeds cannot be
replayed). Images are decoded by PIL (engine.fileio.read_rgb) where the reference used cv2.imread: identical
pixels on the toy JPEGs (both libjpeg-turbo, default settings)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from engine.datasets import DataSource
from engine.fileio import read_rgb
from tool.constants import SEG_CROP_SIZE, SEG_TEST_SCALES
from tool.seg import seg_normalize
from voc12.data import (
    LabelKind,
    as_source,
    checked_index,
    crop_with_label,
    image_paths,
    label_paths,
    read_labelled_image,
    sample_seed,
)

HSV_DELTA = 10  # SPEC_SEG §2 step 1: dh, ds, dv each randint(-10, 10), inclusive
HUE_PERIOD = 180  # OpenCV's uint8 hue: 0…179 in 2° units
FLIP_PROBABILITY = 0.5  # SPEC_SEG §2 step 2
SEG_SCALE_RANGE = (0.5, 1.5)  # SPEC_SEG §2 step 3: s = 0.5 + U[0, 1)
PSEUDO_LABELS = LabelKind(
    "pseudo label", "make them with: python make_sem_seg_labels.py --sem_seg_out_dir <folder> (SPEC-IRN §9)"
)


def random_hsv(image: np.ndarray, rng: random.Random, delta: int = HSV_DELTA) -> np.ndarray:
    """SPEC_SEG §2 step 1 on H×W×3 RGB uint8: OpenCV's HSV, hue shifted modulo 180, saturation and value shifted
    and clipped to 0…255, back to RGB. Lossy even with zero deltas (the uint8 HSV round trip)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV).astype(np.int32)
    delta_h, delta_s, delta_v = (rng.randint(-delta, delta) for _ in range(3))
    hue = (hsv[..., 0] + delta_h) % HUE_PERIOD
    saturation = np.clip(hsv[..., 1] + delta_s, 0, 255)
    value = np.clip(hsv[..., 2] + delta_v, 0, 255)
    return cv2.cvtColor(np.stack([hue, saturation, value], axis=-1).astype(np.uint8), cv2.COLOR_HSV2RGB)


def random_flip(image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """SPEC_SEG §2 step 2: both mirrored left-right if random() < 0.5."""
    if rng.random() < FLIP_PROBABILITY:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return image, label


def random_scale(
    image: np.ndarray, label: np.ndarray, rng: random.Random, scale_range: tuple[float, float] = SEG_SCALE_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """SPEC_SEG §2 step 3: one s = random()·(high − low) + low for both, `cv2.resize(fx=s, fy=s)`: image
    INTER_CUBIC on uint8, label INTER_NEAREST. OpenCV maps pixels with s itself (SPEC_SEG §2, §5.7: the label
    sits about half an output pixel up-left of the image); resizing to the same size by dsize would not."""
    low, high = scale_range
    scale = rng.random() * (high - low) + low
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return image, label


def seg_augment(
    image: np.ndarray,
    label: np.ndarray,
    rng: random.Random,
    crop_size: int = SEG_CROP_SIZE,
    scale_range: tuple[float, float] = SEG_SCALE_RANGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC_SEG §2's augmentation in its order on H×W×3 RGB uint8 and H×W uint8: HSV, flip, scale, ImageNet
    normalisation (float32), crop (width offset drawn first; image fill 0.0, the mean colour, label fill 255).
    → (3×C×C float32, C×C int64)."""
    image = random_hsv(image, rng)
    image, label = random_flip(image, label, rng)
    image, label = random_scale(image, label, rng, scale_range)
    img, label = crop_with_label(seg_normalize(image), label, crop_size, rng.randrange)
    return img, torch.from_numpy(label.astype(np.int64))


class SegTrainDataset(Dataset):
    """SPEC_SEG §2: the augmented crop of each listed image and of its pseudo label `<name>.png` in
    `pseudo_label_dir` (single-channel class indices 0…K−1, 255 ignored; IRN's masks, SPEC-IRN §9).
    `dataset[index]` is epoch 0; `dataset[epoch, index]` that epoch's augmentation, a pure function of
    (seed, epoch, index). Sample: `name`, `img` 3×C×C float32, `label` C×C int64."""

    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        pseudo_label_dir: str | os.PathLike,
        crop_size: int = SEG_CROP_SIZE,
        scale_range: tuple[float, float] = SEG_SCALE_RANGE,
        seed: int = 0,
    ):
        self.source = as_source(source)
        self.names = list(names)
        self.image_paths = image_paths(self.source, self.names)
        self.label_paths = label_paths(Path(pseudo_label_dir), self.names, PSEUDO_LABELS)
        self.crop_size, self.scale_range, self.seed = crop_size, scale_range, seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = checked_index(index, len(self))
        image, label = read_labelled_image(
            self.image_paths[index], self.label_paths[index], self.source.spec.num_classes, PSEUDO_LABELS
        )
        rng = random.Random(sample_seed(self.seed, epoch, index))
        img, label = seg_augment(np.asarray(image), label, rng, self.crop_size, self.scale_range)
        return {"name": self.names[index], "img": img, "label": label}


def multiscale_inputs(normalised: np.ndarray, scales: Sequence[float] = SEG_TEST_SCALES) -> list[torch.Tensor]:
    """SPEC_SEG §4: the H×W×3 normalised float32 image at each scale r, `cv2.resize(fx=r, fy=r, INTER_CUBIC)` on
    the float values (no clipping; r = 1 is a copy), as 3×h×w tensors; the flips are tool.seg's."""
    return [
        torch.from_numpy(
            np.ascontiguousarray(
                cv2.resize(normalised, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
            )
        )
        for scale in scales
    ]


class SegTestDataset(Dataset):
    """SPEC_SEG §4: each listed image for `tool.seg.multiscale_probabilities`. Sample: `name`; `image` the
    unscaled normalised 3×H×W float32 (its size is the output's; `tool.seg.img_denorm` makes the CRF's image of
    it); `inputs` one 3×h×w float32 per scale."""

    def __init__(
        self, source: DataSource | str | os.PathLike, names: Sequence[str], scales: Sequence[float] = SEG_TEST_SCALES
    ):
        self.source = as_source(source)
        self.names = list(names)
        self.image_paths = image_paths(self.source, self.names)
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, len(self))
        normalised = seg_normalize(np.asarray(read_rgb(self.image_paths[index])))
        return {
            "name": self.names[index],
            "image": torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))),
            "inputs": multiscale_inputs(normalised, self.scales),
        }
