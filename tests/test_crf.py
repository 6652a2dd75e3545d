"""tool/crf.py (SPEC §7, SPEC_AFF §5, SPEC-IRN §8): the CRF settings by owner against the SPECs, what the CRF does to a
noisy labelling, SEAM's background score, IRN's label CRF, and the error when pydensecrf is missing."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from engine.errors import UserError
from tool import crf

needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf is not installed"
)


def two_region_image(height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A dark left half and a bright right half, and its true labelling (0 left, 1 right)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :] = 220
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 2 :] = 1
    return image, truth


@needs_pydensecrf
def test_crf_returns_distributions_and_cleans_a_noisy_labelling():
    image, truth = two_region_image()
    rng = np.random.default_rng(0)
    # Scores that favour the truth at 0.6 vs 0.4, with 25% of the pixels flipped.
    noisy = np.where(rng.random(truth.shape) < 0.25, 1 - truth, truth)
    probs = np.stack([np.where(noisy == 0, 0.6, 0.4), np.where(noisy == 1, 0.6, 0.4)]).astype(np.float32)
    refined = crf.crf_inference(image, probs, crf.SEAM_CRF)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    errors_before = (probs.argmax(axis=0) != truth).mean()
    errors_after = (refined.argmax(axis=0) != truth).mean()
    assert errors_before > 0.2 and errors_after < 0.02


@needs_pydensecrf
def test_crf_keeps_a_confident_labelling():
    image, truth = two_region_image()
    probs = np.stack([truth == 0, truth == 1]).astype(np.float32) * 0.98 + 0.01
    np.testing.assert_array_equal(crf.crf_inference(image, probs, crf.SEAM_CRF).argmax(axis=0), truth)


class RecordingCRF:
    """Stands in for pydensecrf's DenseCRF2D and records what it is given."""

    calls: list = []

    def __init__(self, width, height, num_labels):
        self.shape = (num_labels, height, width)
        RecordingCRF.calls.append(("DenseCRF2D", width, height, num_labels))

    def setUnaryEnergy(self, unary):
        RecordingCRF.calls.append(("unary", unary.copy()))

    def addPairwiseGaussian(self, **kwargs):
        RecordingCRF.calls.append(("gaussian", kwargs))

    def addPairwiseBilateral(self, **kwargs):
        RecordingCRF.calls.append(("bilateral", {key: value for key, value in kwargs.items() if key != "rgbim"}))

    def inference(self, iterations):
        RecordingCRF.calls.append(("inference", iterations))
        return np.full((self.shape[0], self.shape[1] * self.shape[2]), 1.0 / self.shape[0], np.float32)


@pytest.fixture
def recording_pydensecrf(monkeypatch):
    def unary_from_softmax(probs):
        return -np.log(np.clip(probs, 1e-5, 1.0)).reshape(len(probs), -1).astype(np.float32)

    package = types.ModuleType("pydensecrf")
    package.densecrf = types.SimpleNamespace(DenseCRF2D=RecordingCRF)
    package.utils = types.SimpleNamespace(unary_from_softmax=unary_from_softmax)
    monkeypatch.setitem(sys.modules, "pydensecrf", package)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", package.densecrf)
    monkeypatch.setitem(sys.modules, "pydensecrf.utils", package.utils)
    RecordingCRF.calls = []
    return RecordingCRF.calls


def recorded(calls: list) -> dict:
    """The recorded pydensecrf calls by name (the last of each)."""
    return {call[0]: call[1:] for call in calls}


def test_named_settings_are_the_specs():
    # SPEC §7 (CPN's crf_inference), SPEC_AFF §5 (SEAM's) and SPEC-IRN §8 (IRN's crf_inference_label), retyped
    assert crf.CPN_CRF == crf.CrfSettings(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=13, bilateral_compat=10, iterations=5
    )
    assert crf.SEAM_CRF == crf.CrfSettings(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10, iterations=10
    )
    assert crf.IRN_LABEL_CRF == crf.CrfSettings(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10, iterations=10
    )
    assert crf.IRN_LABEL_GT_PROB == 0.7
    assert crf.SEAM_CRF_ALPHAS == (4, 24)
    # SPEC_SEG §4 (the segmentation reference's DenseCRF.py and test.py's inference(1))
    assert crf.DEEPLAB_CRF == crf.CrfSettings(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=32, bilateral_srgb=13, bilateral_compat=10, iterations=1
    )
    assert crf.CRF_SETTINGS == {
        "cpn": crf.CPN_CRF,
        "seam": crf.SEAM_CRF,
        "irn_label": crf.IRN_LABEL_CRF,
        "deeplab": crf.DEEPLAB_CRF,
    }
    assert all(owner in crf.CRF_SETTINGS for owner in crf.SCORE_CRF_OWNERS)


def test_seam_and_cpn_settings_differ_only_in_bilateral_range_and_iterations():
    # SPEC_AFF §5: SEAM's label files are made with sxy 80 and 10 iterations, not CPN's 50 and 5.
    differing = {
        field: (getattr(crf.CPN_CRF, field), getattr(crf.SEAM_CRF, field))
        for field in crf.CrfSettings.__dataclass_fields__
        if getattr(crf.CPN_CRF, field) != getattr(crf.SEAM_CRF, field)
    }
    assert differing == {"bilateral_sxy": (50, 80), "iterations": (5, 10)}


@needs_pydensecrf
def test_seam_and_cpn_settings_give_different_marginals():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(16, 20)).transpose(2, 0, 1).astype(np.float32)
    seam = crf.crf_inference(image, probs, crf.SEAM_CRF)
    cpn = crf.crf_inference(image, probs, crf.CPN_CRF)
    assert np.abs(seam - cpn).max() > 1e-3


def test_crf_inference_runs_the_settings_it_is_given(recording_pydensecrf):
    image = np.zeros((5, 7, 3), np.uint8)
    probs = np.full((3, 5, 7), 0.5, np.float32)
    probs[1] = 0.0
    settings = crf.CrfSettings(
        gaussian_sxy=1, gaussian_compat=2, bilateral_sxy=32, bilateral_srgb=4, bilateral_compat=6, iterations=1
    )
    crf.crf_inference(image, probs, settings)
    calls = recorded(recording_pydensecrf)
    assert calls["DenseCRF2D"] == (7, 5, 3)
    np.testing.assert_allclose(calls["unary"][0][1], -np.log(1e-5), rtol=1e-6)  # probabilities, not logits
    assert calls["gaussian"] == ({"sxy": 1, "compat": 2},)
    assert calls["bilateral"] == ({"sxy": 32, "srgb": 4, "compat": 6},)
    assert calls["inference"] == (1,)


def test_deeplab_crf_is_one_iteration_of_the_test_time_terms(recording_pydensecrf):
    probs = np.full((21, 4, 6), 1 / 21, np.float32)
    crf.crf_inference(np.zeros((4, 6, 3), np.uint8), probs, crf.DEEPLAB_CRF)
    calls = recorded(recording_pydensecrf)
    assert calls["DenseCRF2D"] == (6, 4, 21)
    np.testing.assert_allclose(calls["unary"][0], -np.log(1 / 21), rtol=1e-6)  # SPEC_SEG §4: -log(p)
    assert calls["gaussian"] == ({"sxy": 3, "compat": 3},)
    assert calls["bilateral"] == ({"sxy": 32, "srgb": 13, "compat": 10},)
    assert calls["inference"] == (1,)


@needs_pydensecrf
def test_deeplab_crf_cleans_a_noisy_labelling_in_its_one_iteration():
    image, truth = two_region_image()
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(truth.shape) < 0.25, 1 - truth, truth)
    probs = np.stack([np.where(noisy == 0, 0.6, 0.4), np.where(noisy == 1, 0.6, 0.4)]).astype(np.float32)
    refined = crf.crf_inference(image, probs, crf.DEEPLAB_CRF)
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    assert (noisy != truth).mean() > 0.2 and (refined.argmax(axis=0) != truth).mean() < 0.02


def test_missing_pydensecrf_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(UserError, match="pip install pydensecrf2"):
        crf.crf_inference(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 2), 0.5, np.float32), crf.SEAM_CRF)


def test_seam_background_score_by_hand():
    fg_maps = np.array([[[0.0, 0.5]], [[0.2, 0.1]]], np.float32)  # 2 classes, 1×2 pixels
    np.testing.assert_allclose(crf.seam_background_score(fg_maps, 4), [[0.8**4, 0.5**4]], rtol=1e-6)
    np.testing.assert_array_equal(crf.seam_background_score(np.zeros((0, 1, 2), np.float32), 4), [[1.0, 1.0]])


def test_seam_crf_scores_stacks_background_first_under_seams_settings(recording_pydensecrf):
    image = np.zeros((1, 2, 3), np.uint8)
    fg_maps = np.array([[[0.0, 0.5]]], np.float32)
    scores = crf.seam_crf_scores(image, fg_maps, alpha=2, settings=crf.SEAM_CRF)
    assert scores.shape == (2, 1, 2)
    calls = recorded(recording_pydensecrf)
    assert calls["DenseCRF2D"] == (2, 1, 2)
    assert calls["gaussian"] == ({"sxy": 3, "compat": 3},)  # SPEC_AFF §5
    assert calls["bilateral"] == ({"sxy": 80, "srgb": 13, "compat": 10},)
    assert calls["inference"] == (10,)
    unary = calls["unary"][0]
    np.testing.assert_allclose(unary[0], -np.log([1.0, 0.25]), rtol=1e-6)  # (1 - max fg)^alpha
    np.testing.assert_allclose(unary[1], -np.log([1e-5, 0.5]), rtol=1e-6)
    # No class at all: background everywhere, no CRF needed.
    no_class = crf.seam_crf_scores(image, np.zeros((0, 1, 2), np.float32), alpha=2, settings=crf.SEAM_CRF)
    assert np.array_equal(no_class, np.ones((1, 1, 2)))


# --- IRN's crf_inference_label (SPEC-IRN §8): crf_inference_labels -------------------------------


def irn_direct_crf(image: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """SPEC-IRN §8 written out with pydensecrf: unary from labels (gt_prob 0.7, zero_unsure=False),
    Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10, 10 iterations, argmax of Q."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    height, width = labels.shape
    dense = dcrf.DenseCRF2D(width, height, num_labels)
    dense.setUnaryEnergy(unary_from_labels(labels, num_labels, gt_prob=0.7, zero_unsure=False))
    dense.addPairwiseGaussian(sxy=3, compat=3)
    dense.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    return np.argmax(np.array(dense.inference(10)).reshape((num_labels, height, width)), axis=0)


@needs_pydensecrf
def test_label_unary_is_pydensecrfs_unary_from_labels():
    from pydensecrf.utils import unary_from_labels

    labels = np.random.default_rng(0).integers(0, 4, size=(5, 6))
    expected = unary_from_labels(labels, 4, gt_prob=0.7, zero_unsure=False)
    np.testing.assert_array_equal(crf.label_unary(labels, 4), expected)


@needs_pydensecrf
def test_crf_inference_labels_equals_the_spec_call_and_cleans_noise():
    image, truth = two_region_image()
    rng = np.random.default_rng(1)
    image = np.clip(image.astype(int) + rng.integers(-3, 4, size=image.shape), 0, 255).astype(np.uint8)
    noisy = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 3, size=truth.shape), truth)
    (refined,) = crf.crf_inference_labels(image, [noisy], 3)
    np.testing.assert_array_equal(refined, irn_direct_crf(image, noisy, 3))
    assert (refined != truth).mean() < 0.02 < (noisy != truth).mean()


@needs_pydensecrf
def test_one_crf_for_several_maps_equals_a_crf_each():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    label_maps = [rng.integers(0, 4, size=(20, 30)) for _ in range(3)]
    for refined, labels in zip(crf.crf_inference_labels(image, label_maps, 4), label_maps):
        np.testing.assert_array_equal(refined, irn_direct_crf(image, labels, 4))


def test_crf_inference_labels_uses_irn_settings(recording_pydensecrf):
    labels = np.array([[0, 1, 2], [2, 2, 0]])
    crf.crf_inference_labels(np.zeros((2, 3, 3), np.uint8), [labels], 3)
    calls = recorded(recording_pydensecrf)
    assert calls["DenseCRF2D"] == (3, 2, 3)
    assert calls["gaussian"] == ({"sxy": 3, "compat": 3},)
    assert calls["bilateral"] == ({"sxy": 50, "srgb": 5, "compat": 10},)
    assert calls["inference"] == (10,)
    unary = calls["unary"][0]
    np.testing.assert_allclose(unary[labels.reshape(-1), np.arange(6)], -np.log(0.7), rtol=1e-6)
    np.testing.assert_allclose(unary.sum(axis=0), -np.log(0.7) - 2 * np.log(0.15), rtol=1e-6)


def test_crf_inference_labels_with_one_label_is_background(recording_pydensecrf):
    (labels,) = crf.crf_inference_labels(np.zeros((2, 3, 3), np.uint8), [np.zeros((2, 3), np.int64)], 1)
    np.testing.assert_array_equal(labels, np.zeros((2, 3)))
    assert recording_pydensecrf == []  # no CRF: IRN's unary would divide by zero
