"""tool/metrics.py against slow, obviously-correct versions of SPEC §6 written here, for VOC's 21
classes and COCO's 81."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from engine.datasets import COCO14, IGNORE_INDEX, VOC12
from tool import metrics
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

NUM_CLASSES = VOC12.num_classes  # the VOC cases; COCO's take COCO14's
NUM_FG_CLASSES = VOC12.num_fg_classes
SWEEP_THRESHOLDS = VOC12.sweep
DATASETS = pytest.mark.parametrize("spec", [VOC12, COCO14], ids=lambda spec: spec.name)


def naive_prediction(
    class_maps: dict, shape: tuple[int, int], threshold: float, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """SPEC §6 literally: a float32 stack [t, map_0 .. map_{num_classes-2}] (zeros for absent
    classes), argmax."""
    stack = np.zeros((num_classes, *shape), np.float32)
    for fg_class, values in class_maps.items():
        stack[fg_class + 1] = values
    stack[0] = threshold
    return np.argmax(stack, axis=0)


def naive_counts(prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    counted = ground_truth != IGNORE_INDEX
    counts = np.zeros((num_classes, 3), np.int64)
    for label in range(num_classes):
        counts[label, TRUE_POSITIVE] = np.sum((prediction == label) & (ground_truth == label) & counted)
        counts[label, PREDICTED] = np.sum((prediction == label) & counted)
        counts[label, GROUND_TRUTH] = np.sum((ground_truth == label) & counted)
    return counts


def naive_sweep(class_maps: dict, ground_truth: np.ndarray, thresholds, num_classes: int = NUM_CLASSES) -> np.ndarray:
    return np.stack(
        [
            naive_counts(
                naive_prediction(class_maps, ground_truth.shape, threshold, num_classes), ground_truth, num_classes
            )
            for threshold in thresholds
        ]
    )


def random_case(rng: np.random.Generator, height: int, width: int, spec=VOC12):
    """Maps full of ties: values drawn from the data set's thresholds themselves, their float32
    neighbours, 0, -0.0 and negatives, in various dtypes; some classes absent; ground truth with
    ignore."""
    pool = np.array(spec.sweep + (0.0, -0.0, -0.1, 0.7, 1.0), np.float64)
    pool32 = pool.astype(np.float32)
    pool = np.concatenate(
        [pool, pool32, np.nextafter(pool32, np.float32(np.inf)), np.nextafter(pool32, np.float32(-np.inf))]
    )
    num_present = rng.choice([0, 1, 2, 3, 5, 12, spec.num_fg_classes])
    present = rng.choice(spec.num_fg_classes, size=num_present, replace=False)
    dtype = rng.choice([np.float32, np.float64, np.float16])
    class_maps = {}
    for fg_class in present:
        if rng.random() < 0.5:
            values = rng.choice(pool, size=(height, width))  # ties everywhere
        else:
            values = rng.uniform(-0.1, 0.7, size=(height, width))
        class_maps[int(fg_class)] = values.astype(dtype)
    # the image's classes only, as in real ground truth, or a fifth of any other
    likely = np.concatenate([[0], present + 1, [IGNORE_INDEX]])
    ground_truth = np.where(
        rng.random((height, width)) < rng.choice([1.0, 0.8]),
        rng.choice(likely, size=(height, width)),
        rng.choice(np.concatenate([np.arange(spec.num_classes), [IGNORE_INDEX]]), size=(height, width)),
    ).astype(np.uint8)
    return class_maps, ground_truth


@DATASETS
@pytest.mark.parametrize("seed", range(12))
def test_sweep_equals_naive_on_random_maps_with_ties(seed, spec):
    rng = np.random.default_rng(seed)
    class_maps, ground_truth = random_case(rng, int(rng.integers(1, 40)), int(rng.integers(1, 40)), spec)
    counts = threshold_sweep_counts(class_maps, ground_truth, spec.sweep, num_classes=spec.num_classes)
    assert counts.dtype == np.int64 and counts.shape == (len(spec.sweep), spec.num_classes, 3)
    np.testing.assert_array_equal(counts, naive_sweep(class_maps, ground_truth, spec.sweep, spec.num_classes))


@DATASETS
@pytest.mark.parametrize("chunk_pixels", [1, 7, 64])
def test_chunks_add_up(chunk_pixels, spec, monkeypatch):
    """Pixels are binned CHUNK_PIXELS at a time; any chunking gives the same counts."""
    monkeypatch.setattr(metrics, "CHUNK_PIXELS", chunk_pixels)
    rng = np.random.default_rng(chunk_pixels)
    for thresholds in (spec.sweep, (0.35, -0.05, 0.2, 0.35)):  # bucket tables and binary search
        class_maps, ground_truth = random_case(rng, 13, 11, spec)
        np.testing.assert_array_equal(
            threshold_sweep_counts(class_maps, ground_truth, thresholds, num_classes=spec.num_classes),
            naive_sweep(class_maps, ground_truth, thresholds, spec.num_classes),
        )


@DATASETS
@pytest.mark.parametrize("seed", range(6))
def test_unsorted_duplicate_and_negative_thresholds(seed, spec):
    rng = np.random.default_rng(100 + seed)
    class_maps, ground_truth = random_case(rng, 24, 17, spec)
    thresholds = [0.35, -0.05, 0.2, 0.35, 0.0, -0.0, 1.5, 0.5900000000001, float(np.float32(0.3))]
    np.testing.assert_array_equal(
        threshold_sweep_counts(class_maps, ground_truth, thresholds, num_classes=spec.num_classes),
        naive_sweep(class_maps, ground_truth, thresholds, spec.num_classes),
    )


@pytest.mark.parametrize(
    "thresholds, tables",
    [
        (VOC12.sweep, True),
        (COCO14.sweep, True),
        ((0.0, 0.3, 0.31, 7.5), True),  # 0.0 shares bucket 0 with scores at most 0
        ((-0.0, 0.3), True),  # as +0.0
        ((0.3,), True),
        ((0.5, 0.501, 0.6), False),  # one bucket would hold two: binary search
        ((0.2, 0.2, 0.4), False),  # duplicates
        ((-0.1, 0.2), False),  # negative
    ],
)
def test_thresholds_below_is_a_binary_search(thresholds, tables):
    """The bucket tables count the thresholds below each score as np.searchsorted does, for scores
    equal to a threshold or one float32 step either side of it, at most 0 (-0.0, negatives, a
    denormal) and far above every threshold."""
    sorted_thresholds = np.sort(np.asarray(thresholds, np.float32))
    rng = np.random.default_rng(len(thresholds))
    exact = np.concatenate(
        [sorted_thresholds, np.nextafter(sorted_thresholds, np.float32(np.inf)), sorted_thresholds * 1.5 + 0.01]
    )
    scores = np.concatenate(
        [
            exact,
            np.nextafter(exact, np.float32(-np.inf)),
            rng.uniform(-1, 2, 5000),
            [0.0, -0.0, 1e-45, -1e-45, -1e30, 1e30, np.inf, -np.inf],
        ]
    ).astype(np.float32)
    bucket_tables = metrics._bucket_tables(sorted_thresholds, 7)
    assert (bucket_tables is not None) == tables
    counts = metrics._thresholds_below(sorted_thresholds, bucket_tables, scores, 7, out=np.empty(scores.size, np.intp))
    np.testing.assert_array_equal(counts, 7 * np.searchsorted(sorted_thresholds, scores, side="left"))


def test_tiny_case_by_hand():
    # one row of 5 pixels; class 2 (label 3) and class 4 (label 5) present
    class_maps = {
        2: np.array([[0.5, 0.3, 0.1, 0.3, 0.9]], np.float32),
        4: np.array([[0.5, 0.2, 0.4, 0.0, 0.9]], np.float32),
    }
    ground_truth = np.array([[3, 5, 0, IGNORE_INDEX, 5]], np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [0.3, 0.45], num_classes=NUM_CLASSES)
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
    counts = threshold_sweep_counts(class_maps, ground_truth, [0.3], num_classes=NUM_CLASSES)
    assert counts[0, 1, PREDICTED] == 1 and counts[0, 0, PREDICTED] == 2


def test_absent_classes_score_zero_and_win_negative_thresholds():
    # class 0 absent: at t < 0 a pixel whose present scores are all below 0 goes to label 1
    class_maps = {3: np.array([[-0.5, 0.0, 0.2]], np.float32)}
    ground_truth = np.array([[1, 1, 4]], np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [-0.1], num_classes=NUM_CLASSES)
    assert counts[0, 1, PREDICTED] == 2 and counts[0, 1, TRUE_POSITIVE] == 2  # 0.0 ties: class 0 first
    assert counts[0, 4, PREDICTED] == 1 and counts[0, 4, TRUE_POSITIVE] == 1
    empty = threshold_sweep_counts({}, ground_truth, [-0.1, 0.2], num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(empty, naive_sweep({}, ground_truth, [-0.1, 0.2]))


def test_all_classes_present_has_no_zero_stand_in():
    rng = np.random.default_rng(7)
    class_maps = {fg_class: rng.uniform(-1, -0.5, (6, 5)).astype(np.float32) for fg_class in range(NUM_FG_CLASSES)}
    ground_truth = rng.integers(0, NUM_CLASSES, (6, 5)).astype(np.uint8)
    thresholds = [-2.0, -0.7, 0.1]
    np.testing.assert_array_equal(
        threshold_sweep_counts(class_maps, ground_truth, thresholds, num_classes=NUM_CLASSES),
        naive_sweep(class_maps, ground_truth, thresholds),
    )


def test_bad_values_are_reported():
    ground_truth = np.array([[0, 37]], np.uint8)
    with pytest.raises(InvalidLabelsError, match="ground truth holds label value 37"):
        threshold_sweep_counts({0: np.zeros((1, 2), np.float32)}, ground_truth, [0.3], num_classes=NUM_CLASSES)
    with pytest.raises(InvalidLabelsError, match="NaN"):
        threshold_sweep_counts(
            {5: np.array([[0.1, np.nan]], np.float32)}, np.zeros((1, 2), np.uint8), [0.3], num_classes=NUM_CLASSES
        )
    with pytest.raises(InvalidLabelsError, match="prediction holds label value 21"):
        label_counts(np.array([[21, 0]], np.uint8), np.zeros((1, 2), np.uint8), num_classes=NUM_CLASSES)


@DATASETS
@pytest.mark.parametrize("seed", range(4))
def test_label_counts_equal_naive(seed, spec):
    rng = np.random.default_rng(200 + seed)
    num_classes = spec.num_classes
    labels = np.concatenate([np.arange(num_classes), [IGNORE_INDEX] * 4])
    prediction = rng.choice(labels, size=(30, 23)).astype(np.uint8)  # 255 predicts no class
    ground_truth = rng.choice(labels, size=(30, 23)).astype(np.uint8)
    np.testing.assert_array_equal(
        label_counts(prediction, ground_truth, num_classes=num_classes),
        naive_counts(prediction, ground_truth, num_classes),
    )
    # SPEC-IRN §10, IRN's eval_sem_seg: a 255 in the prediction counts as background.
    as_background = np.where(prediction == IGNORE_INDEX, 0, prediction).astype(np.uint8)
    np.testing.assert_array_equal(
        label_counts(prediction, ground_truth, num_classes=num_classes, void_label=0),
        naive_counts(as_background, ground_truth, num_classes),
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
    counts = label_counts(prediction, ground_truth, num_classes=NUM_CLASSES)
    np.testing.assert_array_equal(precision(counts)[:3], [1.0, 0.5, np.nan])  # class 2 only on an ignored pixel
    np.testing.assert_array_equal(recall(counts)[:3], [0.5, 0.5, np.nan])


def test_accumulate_is_the_sum():
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 100, (4, NUM_CLASSES, 3)) for _ in range(5)]
    np.testing.assert_array_equal(accumulate_counts(iter(parts)), np.sum(parts, axis=0))
    assert parts[0].max() < 100  # the first part was not modified in place


# --- COCO: 81 classes ----------------------------------------------------------------------------


def test_coco_tiny_case_by_hand():
    # one row of 5 pixels; class 0 (label 1, person) and class 79 (label 80, toothbrush) present
    class_maps = {
        0: np.array([[0.6, 0.1, 0.3, 0.2, 0.1]], np.float32),
        79: np.array([[0.2, 0.5, 0.3, 0.04, 0.9]], np.float32),
    }
    ground_truth = np.array([[1, 80, 80, 0, IGNORE_INDEX]], np.uint8)
    counts = threshold_sweep_counts(class_maps, ground_truth, [0.05, 0.25, 0.4], num_classes=81)
    # best scores [0.6 (1), 0.5 (80), 0.3 (tie: label 1 first), 0.2 (1), ignored]
    # t = 0.05: prediction [1, 80, 1, 1]; t = 0.25: [1, 80, 1, 0]; t = 0.4: [1, 80, 0, 0]
    expected = np.zeros((3, 81, 3), np.int64)
    expected[:, 0, GROUND_TRUTH], expected[:, 1, GROUND_TRUTH], expected[:, 80, GROUND_TRUTH] = 1, 1, 2
    expected[:, 1, TRUE_POSITIVE], expected[:, 80, TRUE_POSITIVE] = 1, 1
    expected[:, 80, PREDICTED] = 1
    expected[:, 1, PREDICTED] = 3, 2, 1
    expected[:, 0, PREDICTED] = 0, 1, 2
    expected[:, 0, TRUE_POSITIVE] = 0, 1, 1
    np.testing.assert_array_equal(counts, expected)
    # t = 0.4: IoU 1/2 (background), 1 (person), 1/2 (toothbrush), 0 for the other 78 classes
    assert miou_percent(counts)[2] == pytest.approx(2 / 81 * 100)


def test_coco_labels_are_valid_under_81_classes_only():
    ground_truth = np.array([[0, 37, 80]], np.uint8)
    class_maps = {79: np.array([[0.1, 0.2, 0.9]], np.float32)}
    counts = threshold_sweep_counts(class_maps, ground_truth, COCO14.sweep, num_classes=81)
    assert counts[:, 80, TRUE_POSITIVE].tolist() == [1] * len(COCO14.sweep)
    assert counts[:, 37, GROUND_TRUTH].tolist() == [1] * len(COCO14.sweep)
    with pytest.raises(InvalidLabelsError, match="ground truth holds label value 37 .*outside 0..20"):
        threshold_sweep_counts({0: class_maps[79]}, ground_truth, VOC12.sweep, num_classes=NUM_CLASSES)
    with pytest.raises(InvalidLabelsError, match="prediction holds label value 81 .*outside 0..80"):
        label_counts(np.array([[81, 0, 0]], np.uint8), ground_truth, num_classes=81)
    counts = label_counts(np.array([[0, 37, 1]], np.uint8), ground_truth, num_classes=81)
    assert counts.shape == (81, 3) and counts[37].tolist() == [1, 1, 1] and counts[80].tolist() == [0, 0, 1]


def test_metrics_of_counts_read_the_class_count_from_the_array():
    counts = np.zeros((2, 81, 3), np.int64)
    counts[:, 80] = (1, 1, 1)
    np.testing.assert_allclose(miou_percent(counts), [100 / 81, 100 / 81])
    assert iou(counts).shape == precision(counts).shape == recall(counts).shape == (2, 81)


def test_coco_all_classes_present():
    rng = np.random.default_rng(8)
    class_maps = {fg_class: rng.uniform(0, 0.6, (7, 9)).astype(np.float32) for fg_class in range(80)}
    ground_truth = rng.integers(0, 81, (7, 9)).astype(np.uint8)
    np.testing.assert_array_equal(
        threshold_sweep_counts(class_maps, ground_truth, COCO14.sweep, num_classes=81),
        naive_sweep(class_maps, ground_truth, COCO14.sweep, 81),
    )
