"""tool/cam.py (SPEC §5–7, SPEC_IRN §11): the normalisation against the reference's numpy, the
batched multi-scale CAM against a direct loop over the 8 inputs (tests/reference_cam.py), the
present classes' maps at both of IRN's sizes, and what the formats make of the maps: the
reference's halved dict, IRN's dict, SPEC §6's threshold prediction and SEAM's CRF labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.datasets import VOC12
from network import build_network
from tests.reference_cam import direct_loop_cam, reference_normalize
from tool.cam import (
    irn_cam_dict,
    irn_cam_size,
    multiscale_cam,
    normalize_cams,
    present_class_cams,
    present_classes,
    reference_cam_dict,
    seam_crf_label,
    threshold_label,
)
from tool.crf import SEAM_CRF
from voc12.data import InferDataset, load_cls_labels, load_image_list

SCALES = (0.5, 1.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_network("network.resnet38_CPN").eval()


@pytest.fixture(scope="module")
def sample(toy_voc, toy_lists) -> dict:
    """The loader's sample of the smallest toy training image."""
    names = load_image_list(toy_lists["train"])
    name = min(names, key=lambda name: np.prod(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").size))
    return InferDataset(toy_voc, [name], load_cls_labels(toy_lists["cls_labels"]), scales=SCALES)[0]


def random_maps(keys: list[int], size=(6, 7), seed: int = 0) -> np.ndarray:
    """Normalised-looking maps of `keys`: values in -0.1..1, as the SPEC §5 quirk leaves them."""
    return np.random.default_rng(seed).uniform(-0.1, 1.0, (len(keys), *size)).astype(np.float32)


# --- SPEC §5: the CAM of one image ------------------------------------------------------


def test_normalize_cams_matches_reference_numpy():
    rng = np.random.default_rng(0)
    summed = rng.normal(size=(20, 7, 9)).astype(np.float32)
    summed[3] = 0.0  # an absent class: -1 everywhere (the quirk)
    summed[4] = np.abs(summed[4]) + 2.0  # min well above zero: zeroed pixels go negative
    ours = normalize_cams(torch.from_numpy(summed)).numpy()
    np.testing.assert_allclose(ours, reference_normalize(summed), rtol=1e-6, atol=1e-6)
    assert np.allclose(ours[3], -1.0)
    assert ours[4].min() < -0.1 and ours.max() <= 1.0


def test_multiscale_cam_equals_direct_loop(model, sample, toy_voc):
    size = sample["image"].shape[:2]
    # Every class on, so that all 20 channels are compared; a random network leaves some
    # channels of its second output at zero (constant maps), the others must vary.
    label = np.ones(20, np.float32)
    with torch.no_grad():
        (batched,) = multiscale_cam(model, sample["inputs"], torch.from_numpy(label), [size])
        (channels_last,) = multiscale_cam(
            model, sample["inputs"], torch.from_numpy(label), [size], memory_format=torch.channels_last
        )
    batched, channels_last = batched.numpy(), channels_last.numpy()
    expected = direct_loop_cam(model, toy_voc / "JPEGImages" / f"{sample['name']}.jpg", label, SCALES)
    varying = np.ptp(expected, axis=(1, 2)) > 0.5
    assert batched.shape == (20, *size) and varying.sum() >= 3
    np.testing.assert_allclose(batched, expected, atol=2e-5)
    np.testing.assert_allclose(channels_last, expected, atol=2e-5)
    # The test can fail: forgetting to flip back the flipped halves changes the maps.
    wrong = sample["inputs"][:1] + [pair.flip(0) for pair in sample["inputs"][1:]]
    with torch.no_grad():
        (unflipped,) = multiscale_cam(model, wrong, torch.from_numpy(label), [size])
    unflipped = unflipped.numpy()
    assert np.abs(unflipped - expected)[varying].max() > 1e-2


def test_present_class_cams_are_the_labelled_rows_at_each_size(model, sample):
    label = torch.zeros(20)
    label[[2, 11]] = 1.0
    size = sample["image"].shape[:2]
    sizes = [size, irn_cam_size(size)]
    with torch.no_grad():
        keys, (full, strided) = present_class_cams(model, sample["inputs"], label, sizes)
        all_full, all_strided = multiscale_cam(model, sample["inputs"], label, sizes)
    assert keys.dtype == np.int64 and keys.tolist() == [2, 11]
    assert full.shape == (2, *size) and strided.shape == (2, *irn_cam_size(size))
    np.testing.assert_array_equal(full, all_full.numpy()[[2, 11]])
    np.testing.assert_array_equal(strided, all_strided.numpy()[[2, 11]])


def test_present_classes_and_irn_cam_size():
    assert present_classes(np.array([0, 1e-5, 2e-5, 1] + [0] * 16)).tolist() == [2, 3]
    # IRN's get_strided_size: ceil(side / 4).
    assert [irn_cam_size((side, side + 1)) for side in (1, 4, 5, 37)] == [(1, 1), (1, 2), (2, 2), (10, 10)]


# --- What the outputs make of the maps ------------------------------------------------------


def test_reference_and_irn_dicts():
    keys = np.array([3, 17])
    fg_maps = random_maps(keys.tolist())
    irn_maps = random_maps(keys.tolist(), size=(2, 2), seed=1)
    reference = reference_cam_dict(fg_maps, keys)
    assert sorted(reference) == [3, 17] and all(type(key) is int for key in reference)
    np.testing.assert_array_equal(reference[17], fg_maps[1] / 2)
    irn = irn_cam_dict(fg_maps, irn_maps, keys)
    assert irn["keys"].dtype == np.int64 and irn["keys"].tolist() == [3, 17]
    assert isinstance(irn["cam"], torch.Tensor) and irn["cam"].dtype == torch.float32
    np.testing.assert_array_equal(irn["cam"].numpy(), np.clip(irn_maps, 0, 1))
    np.testing.assert_array_equal(irn["high_res"], np.clip(fg_maps, 0, 1))


def test_threshold_label_is_spec6_prediction():
    """SPEC §6 on the halved dict: channel 0 = t, channel c+1 = the map of class c, first maximum."""
    keys = np.array([0, 5, 19])
    fg_maps = random_maps(keys.tolist())
    fg_maps[:, 0, 0] = 2 * 0.3  # every class ties with the background: background wins
    stack = np.zeros((21, *fg_maps.shape[1:]), np.float32)
    stack[0] = 0.3
    for key, cam in reference_cam_dict(fg_maps, keys).items():
        stack[key + 1] = cam
    label = threshold_label(fg_maps, keys, 0.3, VOC12.num_classes)
    assert label.dtype == np.uint8 and label[0, 0] == 0
    np.testing.assert_array_equal(label, stack.argmax(axis=0))
    assert set(np.unique(label).tolist()) == {0, 1, 6, 20}


def test_seam_crf_label_without_classes_is_background():
    image = np.zeros((5, 6, 3), np.uint8)
    label, scores = seam_crf_label(image, np.zeros((0, 5, 6), np.float32), np.zeros(0, np.int64), 4.0, SEAM_CRF)
    assert label.dtype == np.uint8 and not label.any()
    assert list(scores) == [0] and np.all(scores[0] == 1.0)
