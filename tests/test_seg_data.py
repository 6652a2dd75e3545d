"""voc12/seg_data.py against SPEC_SEG §2 and §4: the augmentation's order, draws and hand cases, the datasets
on the toy VOC set, and their bad-input errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import UserError
from engine.fileio import read_label_png, read_rgb
from tool.seg import seg_normalize
from voc12.lists import load_image_list
from voc12.seg_data import (
    SegTestDataset,
    SegTrainDataset,
    multiscale_inputs,
    random_flip,
    random_hsv,
    random_scale,
    seg_augment,
)


class ScriptedRandom(random.Random):
    """A random.Random that returns scripted values and records each call (method, arguments)."""

    def __init__(self, randints=(), randoms=(), randranges=()):
        super().__init__(0)
        self.scripts = {"randint": list(randints), "random": list(randoms), "randrange": list(randranges)}
        self.calls = []

    def randint(self, low, high):
        self.calls.append(("randint", low, high))
        return self.scripts["randint"].pop(0)

    def random(self):
        self.calls.append(("random",))
        return self.scripts["random"].pop(0)

    def randrange(self, stop):
        self.calls.append(("randrange", stop))
        return self.scripts["randrange"].pop(0)


def uniform_image(rgb, height=2, width=3) -> np.ndarray:
    return np.tile(np.asarray(rgb, np.uint8), (height, width, 1))


@pytest.mark.parametrize(
    "deltas, rgb, expected",
    [
        ((0, 0, 0), (255, 0, 0), (255, 0, 0)),  # pure red survives the uint8 HSV round trip
        ((10, 10, 10), (255, 0, 0), (255, 85, 0)),  # hue 0 → 10 (20°); S and V clipped at 255
        ((-10, 0, 0), (255, 0, 0), (255, 0, 85)),  # hue 0 − 10 wraps to 170 (340°)
        ((0, -10, 0), (255, 0, 0), (255, 10, 10)),  # S 245: min = V·(1 − S/255) = 10
        ((0, 0, -10), (255, 0, 0), (245, 0, 0)),
        ((5, 0, 0), (0, 0, 0), (0, 0, 0)),  # black has no hue to shift
    ],
)
def test_random_hsv_hand_cases(deltas, rgb, expected):
    rng = ScriptedRandom(randints=deltas)
    out = random_hsv(uniform_image(rgb), rng)
    assert rng.calls == [("randint", -10, 10)] * 3
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert np.abs(out.astype(int) - np.asarray(expected)).max() <= 1, out[0, 0]


def test_random_hsv_draws_deltas_in_the_closed_range():
    image = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rng = random.Random(0)
    drawn = set()
    original_randint = rng.randint
    rng.randint = lambda low, high: drawn.add(value := original_randint(low, high)) or value
    for _ in range(300):
        random_hsv(image, rng)
    assert drawn == set(range(-10, 11))


def test_random_flip_flips_both_below_one_half():
    image, label = np.arange(6, dtype=np.uint8).reshape(1, 2, 3), np.array([[1, 2]], np.uint8)
    flipped_image, flipped_label = random_flip(image, label, ScriptedRandom(randoms=[0.49]))
    assert flipped_label.tolist() == [[2, 1]] and flipped_image[0, 0].tolist() == image[0, 1].tolist()
    kept_image, kept_label = random_flip(image, label, ScriptedRandom(randoms=[0.5]))
    assert kept_label is label and kept_image is image


def test_random_scale_sizes_round_half_even_and_label_is_nearest_floor():
    image = np.zeros((42, 30, 3), np.uint8)
    label = np.tile(np.arange(30, dtype=np.uint8), (42, 1))
    scaled_image, scaled_label = random_scale(image, label, ScriptedRandom(randoms=[0.25]))  # s = 0.75
    assert scaled_image.shape == (32, 22, 3) and scaled_label.shape == (32, 22)  # 31.5 → 32, 22.5 → 22
    _, scaled_label = random_scale(image, label, ScriptedRandom(randoms=[1.0]))  # s = 1.5
    assert scaled_label[0].tolist() == [int(np.floor(x / 1.5)) for x in range(45)]
    assert scaled_label.dtype == np.uint8


def test_augment_draws_in_the_reference_s_order_and_crops_width_first():
    """HSV (3 randint), flip, scale, then the crop's width offset and height offset."""
    image = np.full((40, 30, 3), 128, np.uint8)
    label = np.ones((40, 30), np.uint8)
    rng = ScriptedRandom(randints=(0, 0, 0), randoms=(0.9, 0.5), randranges=(2, 5))  # no flip, s = 1
    img, out = seg_augment(image, label, rng, crop_size=32)
    assert rng.calls == [("randint", -10, 10)] * 3 + [("random",), ("random",), ("randrange", 3), ("randrange", 9)]
    # Width 30 < 32: pasted at container column 2; height 40 > 32: rows 5…36 of the image.
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert out.shape == (32, 32) and out.dtype == torch.int64
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[:, 2:32] = True
    assert (out[inside] == 1).all() and (out[~inside] == 255).all()
    assert (img[:, ~inside] == 0).all(), "image fill 0.0 after normalisation, the mean colour"
    expected_pixel = torch.from_numpy(seg_normalize(random_hsv(image, ScriptedRandom(randints=(0, 0, 0)))[:1, :1]))
    torch.testing.assert_close(img[:, 0, 2], expected_pixel[0, 0], rtol=0, atol=0)


def test_crop_offsets_cover_their_ranges_on_both_sides():
    image, label = np.zeros((20, 44, 3), np.uint8), np.zeros((20, 44), np.uint8)
    rng = random.Random(1)
    rows, columns = set(), set()
    for _ in range(400):
        img, out = seg_augment(image, label, rng, crop_size=32, scale_range=(1.0, 1.0))
        valid = (out != 255).nonzero()
        rows.add(int(valid[:, 0].min()))
        columns.add(int(valid[:, 1].min()))
        assert (out != 255).sum() == 20 * 32
    assert rows == set(range(13)) and columns == {0}  # 20 rows pasted at 0…12; 44 columns cut


# ---------------------------------------------------------------- datasets on the toy set


@pytest.fixture(scope="module")
def train_names(toy_lists) -> list[str]:
    return load_image_list(toy_lists["train"])[:3]


@pytest.fixture(scope="module")
def pseudo_labels(toy_label_pngs):
    """The toy ground truth as pseudo labels (0…20 and 255)."""
    return toy_label_pngs


def test_train_dataset_is_a_function_of_seed_epoch_and_index(toy_voc, train_names, pseudo_labels):
    dataset = SegTrainDataset(toy_voc, train_names, pseudo_labels, crop_size=48, seed=3)
    sample = dataset[1, 2]
    assert sample["name"] == train_names[2] and sample["img"].shape == (3, 48, 48)
    assert sample["label"].shape == (48, 48) and sample["label"].dtype == torch.int64
    again = SegTrainDataset(toy_voc, train_names, pseudo_labels, crop_size=48, seed=3)[1, 2]
    assert torch.equal(sample["img"], again["img"]) and torch.equal(sample["label"], again["label"])
    assert not torch.equal(dataset[0, 2]["img"], sample["img"])
    values = set(torch.unique(sample["label"]).tolist())
    assert values <= set(range(21)) | {255} and len(values - {255}) >= 1


def test_train_dataset_errors(toy_voc, train_names, pseudo_labels, tmp_path):
    with pytest.raises(UserError, match=f"pseudo label {train_names[0]}.png.* not found in .*make_sem_seg_labels"):
        SegTrainDataset(toy_voc, train_names, tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.mkdir()
    label = read_label_png(pseudo_labels / f"{train_names[0]}.png").copy()
    label[0, :2] = (21, 254)
    Image.fromarray(label, mode="L").save(bad / f"{train_names[0]}.png")
    dataset = SegTrainDataset(toy_voc, train_names[:1], bad)
    with pytest.raises(UserError, match=r"pseudo label .* holds values outside 0–20/255 \(21, 254\)"):
        dataset[0]
    Image.fromarray(label[:, :-1] % 21, mode="L").save(bad / f"{train_names[0]}.png")
    with pytest.raises(UserError, match=r"pseudo label .* is \d+×\d+, its image \d+×\d+"):
        dataset[0]


def test_test_dataset_scales_the_normalised_image(toy_voc, train_names):
    sample = SegTestDataset(toy_voc, train_names[:1])[0]
    image = np.asarray(read_rgb(toy_voc / "JPEGImages" / f"{train_names[0]}.jpg"))
    normalised = seg_normalize(image)
    height, width = image.shape[:2]
    assert torch.equal(sample["image"], torch.from_numpy(normalised.transpose(2, 0, 1)))
    assert [tuple(scaled.shape) for scaled in sample["inputs"]] == [
        (3, round(height * r), round(width * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    ]
    assert torch.equal(sample["inputs"][2], sample["image"]), "r = 1 is a copy"
    # Cubic on the float values, not clipped to the normalised range of real pixels.
    blocks = np.kron(np.eye(2), np.ones((4, 4))).astype(np.float32)[..., None].repeat(3, axis=2)
    upscaled = multiscale_inputs(blocks, [1.5])
    assert upscaled[0].min() < 0 and upscaled[0].max() > 1
