"""tool/imutils.py against slow loop versions written from SPEC §3–5, hand cases and invariants."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from tool import imutils


def _normalised_image(height, width, seed=0):
    """A C×H×W float32 tensor like a normalised crop: smooth colour regions plus noise,
    no exact zeros (so the kept mask can be read back from the outputs)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=gen) * 4 - 2
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    img = smooth + 0.05 * torch.randn(3, height, width, generator=gen)
    img[img == 0] = 0.5
    return img


def _kept_mask_of(img, img_kept, img_hidden):
    kept = img_kept != 0
    assert torch.equal(kept, img_hidden == 0)
    assert torch.equal(kept, kept[:1].expand_as(kept)), "the mask must be the same in every channel"
    return kept[0]


@pytest.mark.parametrize("strategy, size", [("superpixel", (48, 64)), ("grid", (500, 460))])
def test_pair_is_complementary(strategy, size):
    img = _normalised_image(*size)
    img_kept, img_hidden, kept_fraction, hidden_fraction = imutils.complementary_patch(
        img, strategy, np.random.default_rng(1)
    )
    assert torch.equal(img_kept + img_hidden, img)
    kept = _kept_mask_of(img, img_kept, img_hidden)
    assert torch.equal(img_kept[:, kept], img[:, kept])
    assert type(kept_fraction) is float and type(hidden_fraction) is float
    assert kept_fraction == kept.double().mean().item()
    assert kept_fraction + hidden_fraction == pytest.approx(1.0, abs=1e-15)
    assert img_kept.dtype == img_hidden.dtype == torch.float32


@pytest.mark.parametrize("strategy, size", [("superpixel", (48, 64)), ("grid", (500, 460))])
def test_rng_makes_pair_deterministic(strategy, size):
    img = _normalised_image(*size)
    first = imutils.complementary_patch(img, strategy, np.random.default_rng(7))
    again = imutils.complementary_patch(img, strategy, np.random.default_rng(7))
    assert torch.equal(first[0], again[0]) and first[2:] == again[2:]
    others = [imutils.complementary_patch(img, strategy, np.random.default_rng(seed))[0] for seed in range(8, 14)]
    assert any(not torch.equal(first[0], other) for other in others)


def test_every_superpixel_is_all_kept_or_all_hidden():
    img = _normalised_image(48, 64, seed=3)
    labels = imutils.superpixel_labels(img.permute(1, 2, 0).numpy())
    assert labels.shape == (48, 64) and labels.min() == 1
    assert np.array_equal(np.unique(labels), np.arange(1, labels.max() + 1))
    for seed in range(5):
        img_kept, img_hidden, _, _ = imutils.complementary_patch(img, "superpixel", np.random.default_rng(seed))
        kept = _kept_mask_of(img, img_kept, img_hidden).numpy()
        for label in np.unique(labels):
            assert len(np.unique(kept[labels == label])) == 1


def _hide_superpixels_loop(labels, rng):
    """SPEC §3 written as the reference's per-pixel loop."""
    largest = int(labels.max())
    drawn = {int(rng.integers(0, largest + 1)) for _ in range((largest + 1) // 2)}
    kept = np.ones(labels.shape, dtype=bool)
    for row in range(labels.shape[0]):
        for col in range(labels.shape[1]):
            if labels[row, col] in drawn:
                kept[row, col] = False
    return kept


def test_hide_superpixels_matches_loop():
    labels = np.random.default_rng(0).integers(1, 24, size=(12, 15))
    labels[0, 0] = 23
    for seed in range(10):
        fast = imutils.hide_superpixels(labels, np.random.default_rng(seed))
        assert fast.dtype == bool
        assert np.array_equal(fast, _hide_superpixels_loop(labels, np.random.default_rng(seed)))


@pytest.mark.parametrize("largest_label", [7, 60, 301])
def test_hidden_share_of_superpixels(largest_label):
    """Each label 1..M is hidden with p = 1 − (1 − 1/(M+1))^⌊(M+1)/2⌋ (≈ 39 %); the total
    over many draws lies within 5 exact standard deviations of its mean."""
    labels = np.arange(1, largest_label + 1).reshape(1, -1)
    draws = (largest_label + 1) // 2
    p_hidden = 1 - (1 - 1 / (largest_label + 1)) ** draws
    p_both_kept = (1 - 2 / (largest_label + 1)) ** draws
    # Var of the hidden count in one trial (labels are hidden dependently).
    variance = largest_label * p_hidden * (1 - p_hidden) + largest_label * (largest_label - 1) * (
        p_both_kept - (1 - p_hidden) ** 2
    )
    trials = 2000
    rng = np.random.default_rng(123)
    hidden_total = sum(int((~imutils.hide_superpixels(labels, rng)).sum()) for _ in range(trials))
    expected = trials * largest_label * p_hidden
    assert abs(hidden_total - expected) < 5 * math.sqrt(trials * variance)
    if largest_label > 100:
        assert 0.38 < p_hidden < 0.40


def _grid_mask_loop(height, width, rng):
    """SPEC §3 grid strategy written as the reference's cell loop."""
    cell = imutils.GRID_CELL_SIZES[int(rng.integers(len(imutils.GRID_CELL_SIZES)))]
    kept = np.ones((height, width), dtype=bool)
    for top in range(0, height, cell):
        for left in range(0, width, cell):
            if rng.random() <= 0.5:
                kept[top : min(height, top + cell), left : min(width, left + cell)] = False
    return kept


def test_grid_mask_matches_loop_and_cells_are_all_or_nothing():
    height, width = 500, 460
    cell_sizes_seen = set()
    for seed in range(20):
        kept = imutils.grid_mask(height, width, np.random.default_rng(seed))
        assert kept.shape == (height, width) and kept.dtype == bool
        assert np.array_equal(kept, _grid_mask_loop(height, width, np.random.default_rng(seed)))
        for top in range(0, height, 224):  # 448-cells are unions of aligned 224-cells
            for left in range(0, width, 224):
                assert len(np.unique(kept[top : top + 224, left : left + 224])) == 1
        cell_sizes_seen.add(imutils.GRID_CELL_SIZES[np.random.default_rng(seed).integers(2)])
    assert cell_sizes_seen == {224, 448}


def _checker_image(width, height):
    arr = (np.indices((height, width)).sum(0) % 7 * 30 + 20).astype(np.uint8)
    return Image.fromarray(np.stack([arr, arr[::-1], 255 - arr], axis=-1))


def test_random_resize_long_range_and_aspect():
    longs = set()
    for seed in range(40):
        torch.manual_seed(seed)
        width, height = imutils.random_resize_long(_checker_image(30, 20), 40, 44).size
        assert 40 <= width <= 44 and height == round(20 * width / 30)
        longs.add(width)
        width, height = imutils.random_resize_long(_checker_image(20, 30), 40, 44).size
        assert 40 <= height <= 44 and width == round(20 * height / 30)
    assert longs == set(range(40, 45))


def test_random_crop_places_small_image_inside_zero_container():
    arr = np.full((5, 7, 3), 2.5, np.float32)
    offsets = set()
    for seed in range(60):
        torch.manual_seed(seed)
        cropped = imutils.random_crop(arr, 10)
        assert cropped.shape == (10, 10, 3) and cropped.dtype == np.float32
        rows, cols = np.nonzero(cropped[..., 0])
        top, left = rows.min(), cols.min()
        assert len(rows) == 5 * 7 and rows.max() == top + 4 and cols.max() == left + 6
        assert np.all(cropped[top : top + 5, left : left + 7] == 2.5)
        offsets.add((int(top), int(left)))
    assert {top for top, _ in offsets} == set(range(6)) and {left for _, left in offsets} == set(range(4))


def test_random_crop_cuts_a_window_of_larger_image():
    """Taller than the crop (a random row window) and narrower (pasted at a random column)."""
    arr = np.arange(1, 13 * 4 * 3 + 1, dtype=np.float32).reshape(13, 4, 3)
    placements = set()
    for seed in range(60):
        torch.manual_seed(seed)
        cropped = imutils.random_crop(arr, 6)
        left = int(np.nonzero(cropped[0, :, 0])[0][0])
        top = int(np.nonzero(arr[:, 0, 0] == cropped[0, left, 0])[0][0])
        assert np.array_equal(cropped[:, left : left + 4], arr[top : top + 6])
        assert np.count_nonzero(cropped) == 6 * 4 * 3
        placements.add((top, left))
    assert {top for top, _ in placements} == set(range(8)) and {left for _, left in placements} == set(range(3))


@pytest.mark.parametrize("resize_long, fills_crop", [((40, 50), False), ((100, 120), True)])
def test_train_transform_shape_dtype_and_determinism(resize_long, fills_crop):
    img = _checker_image(45, 30)
    torch.manual_seed(0)
    first = imutils.train_transform(img, crop_size=64, resize_long=resize_long)
    torch.manual_seed(0)
    again = imutils.train_transform(img, crop_size=64, resize_long=resize_long)
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32 and first.is_contiguous()
    assert torch.equal(first, again)
    torch.manual_seed(1)
    assert not torch.equal(first, imutils.train_transform(img, crop_size=64, resize_long=resize_long))
    zero_pixels = int((first == 0).all(dim=0).sum())
    assert (zero_pixels == 0) if fills_crop else (zero_pixels >= 64 * 64 - 50 * 34)


def test_train_transform_normalises_like_normalize():
    """ColorJitter keeps a grey image grey, so undoing ImageNet mean/std must give
    three equal channels: Normalize is applied, in RGB order."""
    img = Image.new("RGB", (40, 40), (128, 128, 128))
    torch.manual_seed(3)
    out = imutils.train_transform(img, crop_size=40, resize_long=(40, 40))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    grey = (out * std + mean) * 255
    assert torch.allclose(grey, grey[:1].expand_as(grey), atol=1e-3)
    assert 0 <= grey.min() and grey.max() <= 255


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((5, 7), 0.5, (2, 4)),  # round(2.5) = 2, round(3.5) = 4: half to even
        ((5, 7), 1.5, (8, 10)),  # round(7.5) = 8, round(10.5) = 10
        ((333, 501), 2.0, (666, 1002)),
        ((333, 501), 1.0, (333, 501)),
    ],
)
def test_scale_image_sizes(size, scale, expected):
    scaled = imutils.scale_image(_checker_image(*size), scale)
    assert scaled.size == expected and scaled.mode == "RGB"


def test_normalize_matches_hand_computation():
    image = np.array([[[0, 128, 255], [10, 20, 30]]], np.uint8)
    normalised = imutils.Normalize()(image)
    assert normalised.dtype == np.float32 and normalised.shape == (1, 2, 3)
    assert normalised[0, 0, 0] == pytest.approx((0 / 255 - 0.485) / 0.229)
    assert normalised[0, 0, 1] == pytest.approx((128 / 255 - 0.456) / 0.224)
    assert normalised[0, 1, 2] == pytest.approx((30 / 255 - 0.406) / 0.225)
    np.testing.assert_array_equal(imutils.Normalize()(image.astype(np.float32)), normalised)
