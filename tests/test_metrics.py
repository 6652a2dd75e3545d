"""tool/metrics.py against slow, obviously-correct versions of SPEC §6 written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tool.constants import IGNORE_INDEX, NUM_CLASSES, NUM_FG_CLASSES, SWEEP_THRESHOLDS
from tool.metrics import (
    GROUND_TRUTH,
    PREDICTED,
    TRUE_POSITIVE,
    InvalidLabelsError,
    accumulate_counts,
    best_threshold_index,
    iou,
    label_counts,
    miou_percent,
    precision,
    recall,
    threshold_sweep_counts,
)


def naive_prediction(class_maps: dict, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """SPEC §6 literally: a float32 stack [t, map_0 .. map_19] (zeros for absent classes), argmax."""
    stack = np.zeros((NUM_CLASSES, *shape), np.float32)
    for fg_class, values in class_maps.items():
        stack[fg_class + 1] = values
    stack[0] = threshold
    return np.argmax(stack, axis=0)


def naive_counts(prediction: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    counted = ground_truth != IGNORE_INDEX
    counts = np.zeros((NUM_CLASSES, 3), np.int64)
    for label in range(NUM_CLASSES):
        counts[label, TRUE_POSITIVE] = np.sum((prediction == label) & (ground_truth == label) & counted)
        counts[label, PREDICTED] = np.sum((prediction == label) & counted)
        counts[label, GROUND_TRUTH] = np.sum((ground_truth == label) & counted)
    return counts


def naive_sweep(class_maps: dict, ground_truth: np.ndarray, thresholds) -> np.ndarray:
    return np.stack(
        [
            naive_counts(naive_prediction(class_maps, ground_truth.shape, threshold), ground_truth)
            for threshold in thresholds
        ]
    )


def random_case(rng: np.random.Generator, height: int, width: int):
    """Maps full of ties: values drawn from the thresholds themselves, their float32 neighbours,
    0, -0.0 and negatives, in various dtypes; some classes absent; ground truth with ignore."""
    pool = np.array(SWEEP_THRESHOLDS + (0.0, -0.0, -0.1, 0.7, 1.0), np.float64)
    pool32 = pool.astype(np.float32)
    pool = np.concatenate(
        [pool, pool32, np.nextafter(pool32, np.float32(np.inf)), np.nextafter(pool32, np.float32(-np.inf))]
    )
    num_present = rng.choice([0, 1, 2, 3, 5, NUM_FG_CLASSES])
    present = rng.choice(NUM_FG_CLASSES, size=num_present, replace=False)
    dtype = rng.choice([np.float32, np.float64, np.float16])
    class_maps = {}
    for fg_class in present:
        if rng.random() < 0.5:
            values = rng.choice(pool, size=(height, width))  # ties everywhere
        else:
            values = rng.uniform(-0.1, 0.7, size=(height, width))
        class_maps[int(fg_class)] = values.astype(dtype)
    labels = np.concatenate([np.arange(NUM_CLASSES), [IGNORE_INDEX] * 3])
    ground_truth = rng.choice(labels, size=(height, width)).astype(np.uint8)
    return class_maps, ground_truth


@pytest.mark.parametrize("seed", range(12))
def test_sweep_equals_naive_on_random_maps_with_ties(seed):
    rng = np.random.default_rng(seed)
    class_maps, ground_truth = random_case(rng, int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    counts = threshold_sweep_counts(class_maps, ground_truth, SWEEP_THRESHOLDS)
    assert counts.dtype == np.int64 and counts.shape == (len(SWEEP_THRESHOLDS), NUM_CLASSES, 3)
    np.testing.assert_array_equal(counts, naive_sweep(class_maps, ground_truth, SWEEP_THRESHOLDS))


@pytest.mark.parametrize("seed", range(6))
def test_unsorted_duplicate_and_negative_thresholds(seed):
    rng = np.random.default_rng(100 + seed)
    class_maps, ground_truth = random_case(rng, 24, 17)
    thresholds = [0.35, -0.05, 0.2, 0.35, 0.0, -0.0, 1.5, 0.5900000000001, float(np.float32(0.3))]
    np.testing.assert_array_equal(
        threshold_sweep_counts(class_maps, ground_truth, thresholds), naive_sweep(class_maps, ground_truth, thresholds)
    )


def test_tiny_case_by_hand():
    # one row of 5 pixels; class 2 (label 3) and class 4 (label 5) present
    class_maps = {
        2: np.array([[0.5, 0.3, 0.1, 0.3, 0.9]], np.float32),
        4: np.array([[0.5, 0.2, 0.4, 0.0, 0.9]], np.float32),
    }
    ground_truth = np.array([[3, 5, 0, IGNORE_INDEX, 5]], np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [0.3, 0.45])
    # t = 0.3: prediction [3 (tie: first wins), 0 (t wins its tie), 5, ignored, 3]
    # t = 0.45: prediction [3, 0, 0, ignored, 3]
    expected = np.zeros((2, NUM_CLASSES, 3), np.int64)
    expected[:, 0, GROUND_TRUTH], expected[:, 3, GROUND_TRUTH], expected[:, 5, GROUND_TRUTH] = 1, 1, 2
    expected[0, 0, PREDICTED], expected[0, 3, PREDICTED], expected[0, 5, PREDICTED] = 1, 2, 1
    expected[0, 3, TRUE_POSITIVE] = 1
    expected[1, 0, PREDICTED], expected[1, 3, PREDICTED] = 2, 2
    expected[1, 0, TRUE_POSITIVE], expected[1, 3, TRUE_POSITIVE] = 1, 1
    np.testing.assert_array_equal(counts, expected)


def test_threshold_equal_to_score_goes_to_background_in_float32():
    # 0.3 is not a float32; the reference compares float32(0.3) with the float32 map
    score = np.float32(0.3)
    class_maps = {0: np.array([[score, np.nextafter(score, np.float32(1)), np.nextafter(score, np.float32(0))]])}
    ground_truth = np.ones((1, 3), np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [0.3])
    assert counts[0, 1, PREDICTED] == 1 and counts[0, 0, PREDICTED] == 2


def test_absent_classes_score_zero_and_win_negative_thresholds():
    # class 0 absent: at t < 0 a pixel whose present scores are all below 0 goes to label 1
    class_maps = {3: np.array([[-0.5, 0.0, 0.2]], np.float32)}
    ground_truth = np.array([[1, 1, 4]], np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [-0.1])
    assert counts[0, 1, PREDICTED] == 2 and counts[0, 1, TRUE_POSITIVE] == 2  # 0.0 ties: class 0 first
    assert counts[0, 4, PREDICTED] == 1 and counts[0, 4, TRUE_POSITIVE] == 1
    empty = threshold_sweep_counts({}, ground_truth, [-0.1, 0.2])
    np.testing.assert_array_equal(empty, naive_sweep({}, ground_truth, [-0.1, 0.2]))


def test_all_classes_present_has_no_zero_stand_in():
    rng = np.random.default_rng(7)
    class_maps = {fg_class: rng.uniform(-1, -0.5, (6, 5)).astype(np.float32) for fg_class in range(NUM_FG_CLASSES)}
    ground_truth = rng.integers(0, NUM_CLASSES, (6, 5)).astype(np.uint8)
    thresholds = [-2.0, -0.7, 0.1]
    np.testing.assert_array_equal(
        threshold_sweep_counts(class_maps, ground_truth, thresholds), naive_sweep(class_maps, ground_truth, thresholds)
    )


def test_bad_values_are_reported():
    ground_truth = np.array([[0, 37]], np.uint8)
    with pytest.raises(InvalidLabelsError, match="ground truth holds label value 37"):
        threshold_sweep_counts({0: np.zeros((1, 2), np.float32)}, ground_truth, [0.3])
    with pytest.raises(InvalidLabelsError, match="NaN"):
        threshold_sweep_counts({5: np.array([[0.1, np.nan]], np.float32)}, np.zeros((1, 2), np.uint8), [0.3])
    with pytest.raises(InvalidLabelsError, match="prediction holds label value 21"):
        label_counts(np.array([[21, 0]], np.uint8), np.zeros((1, 2), np.uint8))


@pytest.mark.parametrize("seed", range(4))
def test_label_counts_equal_naive(seed):
    rng = np.random.default_rng(200 + seed)
    labels = np.concatenate([np.arange(NUM_CLASSES), [IGNORE_INDEX] * 4])
    prediction = rng.choice(labels, size=(30, 23)).astype(np.uint8)  # 255 predicts no class
    ground_truth = rng.choice(labels, size=(30, 23)).astype(np.uint8)
    np.testing.assert_array_equal(label_counts(prediction, ground_truth), naive_counts(prediction, ground_truth))
    # SPEC-IRN §10, IRN's eval_sem_seg: a 255 in the prediction counts as background.
    as_background = np.where(prediction == IGNORE_INDEX, 0, prediction).astype(np.uint8)
    np.testing.assert_array_equal(
        label_counts(prediction, ground_truth, void_label=0), naive_counts(as_background, ground_truth)
    )


def test_iou_miou_and_best_by_hand():
    counts = np.zeros((2, NUM_CLASSES, 3), np.int64)
    counts[0, 0] = (3, 4, 5)  # TP 3, P 4, T 5: IoU 3 / 6
    counts[0, 1] = (2, 2, 2)  # IoU 1
    counts[1, 0] = (1, 1, 1)
    assert iou(counts)[0, 0] == pytest.approx(0.5)
    assert iou(counts)[0, 2] == 0.0  # empty class: 0 / 1e-10
    np.testing.assert_allclose(miou_percent(counts), [1.5 / NUM_CLASSES * 100, 1 / NUM_CLASSES * 100])
    assert best_threshold_index(np.array([40.0, 41.0, 41.0, 39.0])) == 1


def test_precision_recall_by_hand_nan_where_undefined():
    counts = np.zeros((2, NUM_CLASSES, 3), np.int64)
    counts[0, 0] = (3, 4, 6)  # precision 3/4, recall 3/6
    counts[0, 1] = (0, 0, 5)  # nothing predicted: precision NaN, recall 0
    counts[0, 2] = (0, 3, 0)  # no ground truth: precision 0, recall NaN
    counts[1, 0] = (2, 2, 8)  # classes 3.. and the rest of row 1: no pixels at all, both NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero warnings either
        precisions, recalls = precision(counts), recall(counts)
    assert precisions.shape == recalls.shape == (2, NUM_CLASSES)
    np.testing.assert_array_equal(precisions[0, :3], [0.75, np.nan, 0.0])
    np.testing.assert_array_equal(recalls[0, :3], [0.5, 0.0, np.nan])
    assert precisions[1, 0] == 1.0 and recalls[1, 0] == 0.25
    assert np.isnan(precisions[0, 3:]).all() and np.isnan(recalls[1, 1:]).all()


def test_precision_recall_of_a_label_image_by_hand():
    # pixels: (prediction, ground truth) = (1, 1), (1, 0), (0, 0), (255: no class, 1), (2, 255: ignored)
    prediction = np.array([[1, 1, 0, IGNORE_INDEX, 2]], np.uint8)
    ground_truth = np.array([[1, 0, 0, 1, IGNORE_INDEX]], np.uint8)
    counts = label_counts(prediction, ground_truth)
    np.testing.assert_array_equal(precision(counts)[:3], [1.0, 0.5, np.nan])  # class 2 only on an ignored pixel
    np.testing.assert_array_equal(recall(counts)[:3], [0.5, 0.5, np.nan])


def test_accumulate_is_the_sum():
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 100, (4, NUM_CLASSES, 3)) for _ in range(5)]
    np.testing.assert_array_equal(accumulate_counts(iter(parts)), np.sum(parts, axis=0))
    assert parts[0].max() < 100  # the first part was not modified in place
