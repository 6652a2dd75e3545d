"""Confident labels from IRN-format CAMs (SPEC-IRN §8, IRN's `cam_to_ir_label`): the pixels IRNet
learns from. Pure functions of arrays; the CRF is passed in, so that the rule is testable without it.

Labels are class indices: 0 background, 1..F the classes, IGNORE_INDEX (255) not confident."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from engine.datasets import IGNORE_INDEX

# SPEC-IRN §8: IRN's defaults, tuned on the 0..1 scale of IRN's own CAMs.
CONF_FG_THRES = 0.30
CONF_BG_THRES = 0.05

# crf(image uint8 H×W×3, label maps H×W in 0..n-1, n) -> each map refined, H×W in 0..n-1
# (tool.crf.crf_inference_labels: IRN's crf_inference_label of each map)
LabelCrf = Callable[[np.ndarray, Sequence[np.ndarray], int], Sequence[np.ndarray]]


def threshold_labels(high_res: np.ndarray, threshold: float) -> np.ndarray:
    """SPEC-IRN §8: argmax of (a constant `threshold` plane, high_res), the first maximum winning, as
    indices 0..K into keys' (0 the background). high_res: K×H×W. Returns int64 H×W.

    The plane is first, so it wins its ties: a pixel is foreground iff its best score exceeds the
    threshold, compared in high_res's dtype as IRN's np.pad does."""
    if len(high_res) == 0:
        return np.zeros(high_res.shape[1:], np.int64)
    best = high_res.max(axis=0)
    return np.where(best > high_res.dtype.type(threshold), high_res.argmax(axis=0) + 1, 0)


def confident_labels(
    image: np.ndarray,
    high_res: np.ndarray,
    keys: np.ndarray,
    crf: LabelCrf,
    fg_thres: float = CONF_FG_THRES,
    bg_thres: float = CONF_BG_THRES,
) -> np.ndarray:
    """SPEC-IRN §8: at fg_thres and at bg_thres, `threshold_labels` refined by `crf` over K+1 labels
    and mapped through keys' = [0, keys + 1] to classes, giving fg and bg; the label is fg's class
    where fg found one, background where neither did, IGNORE_INDEX where only bg did.

    image: uint8 H×W×3; high_res: K×H×W in 0..1, in the order of keys (present classes 0..19).
    Returns uint8 H×W in {0, 1..F, 255}."""
    class_of_index = np.concatenate([[0], np.asarray(keys, np.int64) + 1])
    label_maps = [threshold_labels(high_res, threshold) for threshold in (fg_thres, bg_thres)]
    fg, bg = (class_of_index[refined] for refined in crf(image, label_maps, len(class_of_index)))
    confident = fg.astype(np.uint8)
    confident[fg == 0] = IGNORE_INDEX
    confident[(fg == 0) & (bg == 0)] = 0
    return confident
