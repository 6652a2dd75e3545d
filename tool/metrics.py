"""Segmentation metrics of SPEC §6: per-class confusion counts, IoU, precision and recall, for
CAM dicts over a sweep of background thresholds (one pass over the pixels gives every
threshold) and for label images.

Counts arrays are int64 with a last axis of size 3, indexed by TRUE_POSITIVE, PREDICTED and
GROUND_TRUTH, over the NUM_CLASSES classes (background first); ignored pixels (IGNORE_INDEX
in the ground truth) count nowhere. Pure functions: no I/O, no globals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tool.constants import IGNORE_INDEX, NUM_CLASSES, NUM_FG_CLASSES

TRUE_POSITIVE, PREDICTED, GROUND_TRUTH = range(3)  # last axis of a counts array
IOU_EPSILON = 1e-10  # SPEC §6: IoU = TP / (T + P - TP + 1e-10)
LABEL_VALUES = 256  # uint8 label images: every possible value


class InvalidLabelsError(ValueError):
    """A label image or CAM holds values the metric cannot count (the caller names the file)."""


def threshold_array(thresholds: Sequence[float]) -> np.ndarray:
    """Thresholds as the reference compares them: it writes t into a float32 stack (SPEC §6),
    so float32(t) is compared with float32 CAM values."""
    return np.asarray(thresholds, dtype=np.float64).astype(np.float32).reshape(-1)


def _check_label_values(histogram: np.ndarray, what: str) -> None:
    stray = np.flatnonzero(histogram[NUM_CLASSES:IGNORE_INDEX]) + NUM_CLASSES
    if stray.size:
        raise InvalidLabelsError(
            f"{what} holds label value {stray[0]} ({stray.size} values outside "
            f"0..{NUM_CLASSES - 1} and {IGNORE_INDEX}); it is not a VOC class-index image"
        )


def _truth_counts(ground_truth: np.ndarray, likely_labels: Iterable[int]) -> np.ndarray:
    """Ground-truth pixels per class, ignored pixels left out (int64[NUM_CLASSES]); values other
    than 0..20 and IGNORE_INDEX are an error. Counting the labels the image most likely holds with
    vectorised compares is several times faster than a histogram, which is the fallback when
    they do not cover every pixel."""
    truth = np.zeros(NUM_CLASSES, np.int64)
    for label in likely_labels:
        truth[label] = np.count_nonzero(ground_truth == label)
    if truth.sum() + np.count_nonzero(ground_truth == IGNORE_INDEX) == ground_truth.size:
        return truth
    histogram = np.bincount(ground_truth.reshape(-1), minlength=LABEL_VALUES)
    _check_label_values(histogram, "ground truth")
    return histogram[:NUM_CLASSES]


def _best_foreground(candidates: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray | int]:
    """(score, fg class) per pixel over (class, map) pairs given in class order: the maximum and
    the first class reaching it, as argmax over the reference's stack picks (SPEC §6). The class
    is a plain int when there is one candidate."""
    score = candidates[0][1]
    for _, values in candidates[1:]:
        score = np.maximum(score, values)  # NaN propagates: one check below finds any
    if np.isnan(score.max()):
        raise InvalidLabelsError("prediction holds NaN scores; the CAM is broken, re-run inference")
    if len(candidates) == 1:
        return score, candidates[0][0]
    fg_class = np.empty(score.shape, np.uint8)
    for fg_label, values in reversed(candidates):  # the lowest class reaching the maximum is written last
        np.copyto(fg_class, fg_label, where=values == score)
    return score, fg_class


def threshold_sweep_counts(
    class_maps: Mapping[int, np.ndarray], ground_truth: np.ndarray, thresholds: Sequence[float]
) -> np.ndarray:
    """Counts [len(thresholds), NUM_CLASSES, 3] of one CAM against its ground truth at each
    background threshold t, equal to evaluating the reference's argmax prediction once per t.

    class_maps: {fg class 0..19: float32 H×W} (other dtypes are cast to float32, as the
    reference's stack does); absent classes score 0. ground_truth: uint8 H×W class indices.
    SPEC §6: prediction = argmax of [t, map_0, …, map_19], the first maximum winning, so a
    pixel is background at t iff float32(t) >= its best foreground score. Each pixel is binned
    once by how many thresholds lie below its best score; cumulative sums over the bins give
    the counts at every threshold. Pixels whose best score is at most the lowest threshold are
    background everywhere and take no part beyond the ground-truth counts.
    InvalidLabelsError: NaN scores, or ground-truth values other than 0..20 and IGNORE_INDEX
    (the reference would count them silently in an arbitrary way).
    """
    assert ground_truth.dtype == np.uint8 and ground_truth.ndim == 2, (ground_truth.dtype, ground_truth.shape)
    maps = {int(fg_class): np.asarray(values, dtype=np.float32) for fg_class, values in class_maps.items()}
    assert all(0 <= fg_class < NUM_FG_CLASSES for fg_class in maps), sorted(maps)
    assert all(values.shape == ground_truth.shape for values in maps.values()), ground_truth.shape
    threshold_values = threshold_array(thresholds)
    order = np.argsort(threshold_values, kind="stable")
    sorted_thresholds = threshold_values[order]
    num_thresholds = sorted_thresholds.size
    assert num_thresholds > 0 and np.isfinite(sorted_thresholds).all(), thresholds
    lowest = sorted_thresholds[0]

    candidates = [(fg_class, maps[fg_class]) for fg_class in sorted(maps)]
    absent = [fg_class for fg_class in range(NUM_FG_CLASSES) if fg_class not in maps]
    # The first absent class stands in for all (later ones lose its ties). Its 0 only matters
    # where 0 beats a threshold, or when no class is present.
    if absent and (not candidates or np.float32(0) > lowest):
        candidates.append((absent[0], np.zeros(ground_truth.shape, np.float32)))
        candidates.sort(key=lambda candidate: candidate[0])
    score, fg_class = _best_foreground(candidates)
    truth = _truth_counts(ground_truth, [0, *(present + 1 for present in maps)])

    pixels = np.flatnonzero((score > lowest) & (ground_truth != IGNORE_INDEX))
    # Bin b >= 1 (the pixel is foreground at the b lowest thresholds, background above), fg class
    # and ground truth joined into one histogram index, in place to spare temporaries.
    joint = np.searchsorted(sorted_thresholds, score.reshape(-1)[pixels], side="left")
    joint *= NUM_FG_CLASSES
    joint += fg_class if isinstance(fg_class, int) else fg_class.reshape(-1)[pixels]
    joint *= NUM_CLASSES
    joint += ground_truth.reshape(-1)[pixels]
    histogram = np.bincount(joint, minlength=(num_thresholds + 1) * NUM_FG_CLASSES * NUM_CLASSES)
    histogram = histogram.reshape(num_thresholds + 1, NUM_FG_CLASSES, NUM_CLASSES)[1:]
    # foreground[k, c, g]: pixels of ground truth g predicted fg class c at the k-th lowest threshold
    foreground = np.cumsum(histogram[::-1], axis=0)[::-1]

    counts_sorted = np.empty((num_thresholds, NUM_CLASSES, 3), np.int64)
    counts_sorted[:, :, GROUND_TRUTH] = truth
    counts_sorted[:, 1:, PREDICTED] = foreground.sum(axis=2)
    counts_sorted[:, 0, PREDICTED] = truth.sum() - counts_sorted[:, 1:, PREDICTED].sum(axis=1)
    fg_labels = np.arange(NUM_FG_CLASSES)
    counts_sorted[:, 1:, TRUE_POSITIVE] = foreground[:, fg_labels, fg_labels + 1]
    counts_sorted[:, 0, TRUE_POSITIVE] = truth[0] - foreground[:, :, 0].sum(axis=1)
    counts = np.empty_like(counts_sorted)
    counts[order] = counts_sorted
    return counts


def label_counts(prediction: np.ndarray, ground_truth: np.ndarray, void_label: int | None = None) -> np.ndarray:
    """Counts [NUM_CLASSES, 3] of a label image (uint8 H×W class indices) against its ground
    truth. A prediction of IGNORE_INDEX counts as class `void_label`; with None (the default) it
    predicts no class: like the CPN reference, such a pixel counts in the ground truth but in no
    prediction. IRN's eval_sem_seg counts it as background, void_label 0 (SPEC-IRN §10)."""
    assert prediction.dtype == np.uint8 and ground_truth.dtype == np.uint8, (prediction.dtype, ground_truth.dtype)
    assert prediction.shape == ground_truth.shape, (prediction.shape, ground_truth.shape)
    assert void_label is None or 0 <= void_label < NUM_CLASSES, void_label
    if void_label is not None:
        prediction = np.where(prediction == IGNORE_INDEX, np.uint8(void_label), prediction)
    joint = prediction.reshape(-1).astype(np.intp) * LABEL_VALUES + ground_truth.reshape(-1)
    confusion = np.bincount(joint, minlength=LABEL_VALUES * LABEL_VALUES).reshape(LABEL_VALUES, LABEL_VALUES)
    _check_label_values(confusion.sum(axis=1), "prediction")
    _check_label_values(confusion.sum(axis=0), "ground truth")
    counted = confusion[:NUM_CLASSES, :NUM_CLASSES]  # [prediction, ground truth], ignore pixels left out
    counts = np.empty((NUM_CLASSES, 3), np.int64)
    counts[:, TRUE_POSITIVE] = np.diagonal(counted)
    counts[:, PREDICTED] = counted.sum(axis=1)
    counts[:, GROUND_TRUTH] = confusion[:, :NUM_CLASSES].sum(axis=0)
    return counts


def accumulate_counts(counts_per_image: Iterable[np.ndarray]) -> np.ndarray:
    """The sum of per-image counts, holding one image's counts at a time."""
    total = None
    for counts in counts_per_image:
        if total is None:
            total = np.array(counts, dtype=np.int64)
        else:
            total += counts
    assert total is not None, "no images to accumulate"
    return total


def iou(counts: np.ndarray) -> np.ndarray:
    """Per-class IoU in 0..1, shape counts.shape[:-1] (SPEC §6)."""
    true_positive = counts[..., TRUE_POSITIVE]
    union = counts[..., GROUND_TRUTH] + counts[..., PREDICTED] - true_positive
    return true_positive / (union + IOU_EPSILON)


def _ratio_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=denominator > 0)


def precision(counts: np.ndarray) -> np.ndarray:
    """Per-class precision TP / PREDICTED in 0..1, shape counts.shape[:-1]. NaN for a class no
    pixel was predicted as: undefined, unlike IoU, whose SPEC §6 epsilon makes an empty class 0."""
    return _ratio_or_nan(counts[..., TRUE_POSITIVE], counts[..., PREDICTED])


def recall(counts: np.ndarray) -> np.ndarray:
    """Per-class recall TP / GROUND_TRUTH in 0..1, shape counts.shape[:-1]. NaN for a class with
    no ground-truth pixels (ignored pixels do not count)."""
    return _ratio_or_nan(counts[..., TRUE_POSITIVE], counts[..., GROUND_TRUTH])


def miou_percent(counts: np.ndarray) -> np.ndarray:
    """Mean IoU over all NUM_CLASSES classes, in percent (SPEC §6), shape counts.shape[:-2]."""
    assert counts.shape[-2:] == (NUM_CLASSES, 3), counts.shape
    return iou(counts).mean(axis=-1) * 100


def best_threshold_index(mious: np.ndarray) -> int:
    """Index of the best mIoU of a sweep; the first (lowest listed threshold) wins a tie."""
    return int(np.argmax(mious))
