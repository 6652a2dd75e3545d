"""Image transforms of SPEC §1 (`Normalize`), §3 (training augmentation, complementary patch
pairs) and §5 (`scale_image`).

Randomness: the augmentation draws from torch's global RNG (torchvision's flip and
ColorJitter do too), so a caller that seeds torch gets the same sample back; the
complementary patch draws from an explicit numpy Generator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2lab
from skimage.segmentation import slic
from torchvision import transforms

from tool.constants import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, RESIZE_LONG

# SPEC §3: torchvision's own transforms, as the reference composes them.
_horizontal_flip = transforms.RandomHorizontalFlip()
_color_jitter = transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)

SLIC_COMPACTNESS = 10  # SPEC §3
SLIC_SEGMENTS = 300
HIDDEN_DRAW_RATIO = 0.5  # SPEC §3: floor((M+1)·0.5) labels drawn with replacement
GRID_CELL_SIZES = (224, 448)  # SPEC §3: grid strategy
GRID_HIDE_PROBABILITY = 0.5
PATCH_STRATEGIES = ("superpixel", "grid")


class Normalize:
    """RGB image (HWC, uint8 or float in 0..255) -> float32 HWC, `(x / 255 - mean) / std` (SPEC §1)."""

    def __init__(
        self, mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD
    ):
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)

    def __call__(self, img) -> np.ndarray:
        image = np.asarray(img, np.float64)
        assert image.ndim == 3 and image.shape[2] == 3, f"expected an HxWx3 RGB image, got {image.shape}"
        return ((image / 255.0 - self.mean) / self.std).astype(np.float32)


_normalize = Normalize()


def color_jitter(img: Image.Image) -> Image.Image:
    """SPEC §3, SPEC_AFF §2 step 1: torchvision's ColorJitter(0.3, 0.3, 0.3, 0.1), from torch's global RNG."""
    return _color_jitter(img)


def random_resize_long(img: Image.Image, low: int, high: int) -> Image.Image:
    """Resize (bicubic) so the long side is a random integer in [low, high] (SPEC §3);
    the short side keeps the aspect ratio, rounded with Python's round as the reference."""
    target_long = int(torch.randint(low, high + 1, ()).item())
    width, height = img.size
    if width < height:
        size = (round(width * target_long / height), target_long)
    else:
        size = (target_long, round(height * target_long / width))
    return img.resize(size, resample=Image.Resampling.BICUBIC)


def torch_randrange(stop: int) -> int:
    """A uniform integer in 0…stop−1 from torch's global RNG (SPEC §3's crop offsets)."""
    return int(torch.randint(stop, ()).item())


def _random_placement(image_side: int, crop_side: int, randrange: Callable[[int], int]) -> tuple[int, int]:
    """(offset in the container, offset in the image) along one axis: a larger image
    is cut at a random offset, a smaller one is pasted at a random offset."""
    space = image_side - crop_side
    if space > 0:
        return 0, randrange(space + 1)
    return randrange(-space + 1), 0


def random_crop(arr: np.ndarray, crop_size: int, randrange: Callable[[int], int] = torch_randrange) -> np.ndarray:
    """A crop_size×crop_size×C float32 zero container holding a random window of the
    H×W×C `arr` (SPEC §3, the reference's RandomCrop: random offsets on both sides of
    the crop size, the width's drawn first). `randrange(n)` draws each offset in 0…n−1: torch's
    RNG for CPN and IRN, a `random.Random` for the segmentation stage (SPEC_SEG §2 step 5)."""
    height, width, channels = arr.shape
    container_left, image_left = _random_placement(width, crop_size, randrange)
    container_top, image_top = _random_placement(height, crop_size, randrange)
    kept_height, kept_width = min(crop_size, height), min(crop_size, width)
    container = np.zeros((crop_size, crop_size, channels), np.float32)
    container[container_top : container_top + kept_height, container_left : container_left + kept_width] = arr[
        image_top : image_top + kept_height, image_left : image_left + kept_width
    ]
    return container


def train_transform(
    img: Image.Image, crop_size: int = CROP_SIZE, resize_long: tuple[int, int] = RESIZE_LONG
) -> torch.Tensor:
    """SPEC §3 training augmentation of a PIL RGB image: resize long side → flip →
    ColorJitter → normalise → random crop; returns a 3×crop×crop float32 tensor."""
    img = random_resize_long(img, *resize_long)
    img = _color_jitter(_horizontal_flip(img))
    arr = random_crop(_normalize(np.asarray(img)), crop_size)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def scale_image(img: Image.Image, scale: float) -> Image.Image:
    """Resize by `scale` (bicubic), each side round(side·scale) with Python's round
    (half to even) as the reference (SPEC §5)."""
    width, height = img.size
    return img.resize((round(width * scale), round(height * scale)), resample=Image.Resampling.BICUBIC)


def superpixel_labels(img_hwc: np.ndarray) -> np.ndarray:
    """SLIC labels 1..M of the normalised H×W×3 float image, as the reference's
    scikit-image 0.17 computed them (SPEC §3).

    The reference passed the normalised image (values about -2..2.6) to slic, which
    converted it to Lab as it was. scikit-image >= 0.19 first rescales the input to
    [0, 1], which changes both the Lab values and the colour/space balance. So we
    convert to Lab ourselves and divide the compactness by the Lab range, undoing the
    [0, 1] rescale that slic applies to the Lab image (slic's colour distance is
    value / compactness, and shifting by the minimum changes no distance)."""
    lab = rgb2lab(img_hwc)
    lab_range = float(lab.max() - lab.min())
    compactness = SLIC_COMPACTNESS / lab_range if lab_range > 0 else SLIC_COMPACTNESS
    return slic(
        lab, compactness=compactness, n_segments=SLIC_SEGMENTS, start_label=1, convert2lab=False, channel_axis=-1
    )


def hide_superpixels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kept-pixel mask (bool H×W) of the superpixel strategy (SPEC §3): draw
    floor((M+1)·0.5) labels from [0, M] with replacement and hide every pixel whose
    label was drawn (0 is never a label, as the reference: its draws are wasted)."""
    largest_label = int(labels.max())
    num_draws = int(np.floor((largest_label + 1) * HIDDEN_DRAW_RATIO))
    drawn = rng.integers(0, largest_label + 1, size=num_draws)
    label_is_hidden = np.zeros(largest_label + 1, dtype=bool)
    label_is_hidden[drawn] = True
    return ~label_is_hidden[labels]


def grid_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Kept-pixel mask (bool H×W) of the grid strategy (SPEC §3): a cell size from
    GRID_CELL_SIZES, each cell (clipped at the border) hidden with probability 0.5."""
    cell = GRID_CELL_SIZES[rng.integers(len(GRID_CELL_SIZES))]
    rows, cols = -(-height // cell), -(-width // cell)
    # Row-major draws, `<=` for hidden: the reference's loop order and test.
    cell_is_kept = ~(rng.random((rows, cols)) <= GRID_HIDE_PROBABILITY)
    return cell_is_kept[np.arange(height)[:, None] // cell, np.arange(width)[None, :] // cell]


def split_by_mask(img: torch.Tensor, kept_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(img·mask, img·(1−mask), kept fraction, hidden fraction) for a C×H×W tensor
    and a bool H×W kept mask (SPEC §3). The fractions count pixels; the reference's
    grid strategy counts cells, the same thing whenever the crop is a multiple of
    both cell sizes (the default 448)."""
    mask = torch.from_numpy(kept_mask).to(img.dtype)
    kept_fraction = float(kept_mask.mean())
    return img * mask, img * (1 - mask), kept_fraction, 1 - kept_fraction


def complementary_patch(
    img: torch.Tensor, strategy: str = "superpixel", rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The complementary patch pair of a normalised, cropped C×H×W float tensor
    (SPEC §3): (img_kept, img_hidden, kept_fraction, hidden_fraction)."""
    assert strategy in PATCH_STRATEGIES, strategy  # checked where the user's value enters: TrainDataset
    rng = np.random.default_rng() if rng is None else rng
    if strategy == "superpixel":
        kept_mask = hide_superpixels(superpixel_labels(img.permute(1, 2, 0).numpy()), rng)
    else:
        kept_mask = grid_mask(img.shape[1], img.shape[2], rng)
    return split_by_mask(img, kept_mask)


# END
