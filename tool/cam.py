"""The CAM of one image (SPEC §5) and what the outputs make of it: the reference's and IRN's CAM
dicts (SPEC_IRN §11), threshold label maps (SPEC §6) and SEAM's CRF labels (SPEC_AFF §5).

Pure functions of tensors and arrays: no I/O, no device decisions (the CAMs are computed where the
model's parameters are)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.fileio import load_npy_dict
from engine.runtime import autocast
from tool.crf import CrfSettings, seam_crf_scores

CAM_NORMALISATION_EPSILON = 1e-5  # SPEC §5: the min/max normalisation's epsilon
LABEL_PRESENT_THRESHOLD = 1e-5  # the reference keeps class i when label[i] > 1e-5
# SPEC §5 quirk: the reference stores norm / 2 ("compresses the foreground seeds" so the
# background sweep 0.20..0.59 covers them). Evaluation thresholds refer to the halved maps.
REFERENCE_CAM_DIVISOR = 2.0
IRN_CAM_STRIDE = 4  # SPEC_IRN §11: IRN's `cam` entry lies on the network's stride-4 grid


# --- SPEC §5: the CAM of one image ------------------------------------------------------


def normalize_cams(summed: torch.Tensor) -> torch.Tensor:
    """SPEC §5: relu; per channel mn, mx; values < mn + eps set to 0; then
    (x - mn - eps) / (mx - mn + eps), eps = CAM_NORMALISATION_EPSILON, before the reference's
    halving. C×H×W -> C×H×W.

    Quirk kept: the zeroed values come out slightly negative, -(mn + eps) / (mx - mn + eps)
    (-1 everywhere for an all-zero channel), exactly as the reference computes them."""
    eps = CAM_NORMALISATION_EPSILON
    positive = F.relu(summed)
    channel_min = positive.amin(dim=(1, 2), keepdim=True)
    channel_max = positive.amax(dim=(1, 2), keepdim=True)
    positive = torch.where(positive < channel_min + eps, torch.zeros_like(positive), positive)
    return (positive - channel_min - eps) / (channel_max - channel_min + eps)


def multiscale_cam(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    label: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[torch.Tensor]:
    """SPEC §5, at each of `sizes` from the same forwards: the foreground channels of the second
    output of every input, bilinearly resized to the size (align_corners=False), flipped back where
    flipped, summed, times the class vector, normalised (`normalize_cams`, not yet halved) over the
    size's own pixels (SPEC_IRN §11). Returns per size float32 F×h×w on the model's device (F
    foreground classes: 20 VOC, 80 COCO).

    model: a CPN, whose forward returns (cam, cam_rv); inputs: per scale a 2×3×h×w batch (the
    image, its horizontal flip), run as one forward; label: float[F]. Resizing, summing and normalising
    are in float32 whatever `amp_dtype`."""
    device = next(model.parameters()).device
    totals = [torch.zeros((len(label), *size), dtype=torch.float32, device=device) for size in sizes]
    for pair in inputs:
        assert pair.ndim == 4 and pair.shape[0] == 2, pair.shape
        batch = pair.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast(device, amp_dtype):
            outputs = model(batch)
        assert isinstance(outputs, tuple) and len(outputs) == 2, "SPEC §5 reads a CPN's (cam, cam_rv)"
        cam_rv = outputs[1][:, 1:].float()  # SPEC §5: the second output (`final`), foreground channels
        for total, size in zip(totals, sizes):
            foreground = F.interpolate(cam_rv, size, mode="bilinear", align_corners=False)
            total += foreground[0] + foreground[1].flip(-1)
    # The reference multiplies each of the 8 maps by the 0/1 class vector before summing;
    # multiplying the sum once is the same.
    class_vector = label.to(device, torch.float32)[:, None, None]
    return [normalize_cams(total * class_vector) for total in totals]


def present_classes(label) -> np.ndarray:
    """Foreground indices (0..F−1) of the classes in the image (the reference's `label[i] > 1e-5`), int64."""
    return np.flatnonzero(np.asarray(label) > LABEL_PRESENT_THRESHOLD).astype(np.int64)


def present_class_cams(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    label: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    **forward_options,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """`multiscale_cam` (its arguments and options) as the output formats take it: the present
    classes (int64 K, 0..F−1) and, at each of `sizes`, their maps copied to the CPU (float32 K×h×w)."""
    keys = present_classes(label)
    cams = multiscale_cam(model, inputs, label, sizes, **forward_options)
    present = torch.from_numpy(keys).to(cams[0].device)
    return keys, [cam[present].cpu().numpy() for cam in cams]


def irn_cam_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """SPEC_IRN §11: the size of IRN's `cam`, ((H-1)//4+1, (W-1)//4+1) (IRN's get_strided_size)."""
    height, width = image_size
    return (height - 1) // IRN_CAM_STRIDE + 1, (width - 1) // IRN_CAM_STRIDE + 1


# --- What the outputs make of it (numpy: run in infer_cam.py's writer processes) ----------
# fg_maps: the present classes' normalised, un-halved maps (K×H×W), keys: their indices 0..F−1.


def reference_cam_dict(fg_maps: np.ndarray, keys: np.ndarray) -> dict[int, np.ndarray]:
    """The reference's .npy content (SPEC §5): {class index: normalised map / 2, float32 H×W}."""
    return {int(key): (fg_map / REFERENCE_CAM_DIVISOR).astype(np.float32) for key, fg_map in zip(keys, fg_maps)}


def unit_maps(fg_maps: np.ndarray) -> np.ndarray:
    """The normalised maps clipped to 0..1 (dropping the quirk's tiny negatives): the
    score maps IRN, the CRF and the heat maps expect."""
    return np.clip(fg_maps, 0.0, 1.0).astype(np.float32)


def irn_cam_dict(fg_maps: np.ndarray, irn_fg_maps: np.ndarray, keys: np.ndarray) -> dict:
    """IRN's make_cam format (SPEC_IRN §11): `keys` 0-based class indices (IRN pads `keys + 1`
    with a background 0), `high_res` K×H×W float32 in 0..1 (IRN pads a background threshold),
    `cam` K×h×w on the stride-4 grid (`irn_fg_maps`), a float32 CPU torch tensor because
    make_sem_seg_labels calls `.cuda()` on it."""
    return {
        "keys": keys.astype(np.int64),
        "cam": torch.from_numpy(unit_maps(irn_fg_maps)),
        "high_res": unit_maps(fg_maps),
    }


def threshold_label(fg_maps: np.ndarray, keys: np.ndarray, background: float, num_classes: int) -> np.ndarray:
    """SPEC §6's prediction: argmax of (background score, halved map of each present class,
    zeros for absent ones; num_classes in all), the first maximum winning. uint8 H×W class indices."""
    scores = np.zeros((num_classes, *fg_maps.shape[1:]), np.float32)
    scores[0] = background
    for key, fg_map in zip(keys, fg_maps):
        scores[key + 1] = fg_map / REFERENCE_CAM_DIVISOR
    return scores.argmax(axis=0).astype(np.uint8)


def seam_crf_label(
    image: np.ndarray, fg_maps: np.ndarray, keys: np.ndarray, alpha: float, settings: CrfSettings
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """SPEC_AFF §5, SEAM's CRF label files: a CRF of `settings` over (background (1 - max fg)^alpha,
    fg maps) from the un-halved maps, as infer_SEAM.py (CPN's halved dicts would move the crossovers).
    Clipping to 0..1 (`unit_maps`) leaves the CRF's unary, -log(clip(p, 1e-5, 1)), unchanged.
    Returns the uint8 label map (class indices, 0 background) and SEAM's dict of the CRF's marginals
    {0: background, class index + 1: float32 H×W}, in that order."""
    scores = seam_crf_scores(image, unit_maps(fg_maps), alpha, settings)
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return labels[scores.argmax(axis=0)], {int(label): score for label, score in zip(labels, scores)}


# --- Reading IRN-format files (SPEC-IRN §11), for the IRN stage's scripts ------------------

IRN_CAM_HINT = "write IRN-format CAMs with infer_cam.py --out_cam_irn DIR and pass that DIR as --cam_out_dir"
IRN_CAM_SUFFIX = ".npy"  # <name>.npy in the --cam_out_dir folder


def class_names(classes: Sequence[int], names: Sequence[str]) -> str:
    """Foreground class indices as the data set's names (`names`, background first), for messages."""
    return ", ".join(names[index + 1] if 0 <= index < len(names) - 1 else f"#{index}" for index in classes) or "none"


def read_irn_cam(
    path: str | os.PathLike, entry: str, label, labels_source: str, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, maps) of one IRN-format CAM file: `keys` the int64 present classes 0..F−1 (a torch
    tensor in IRN's own files), `maps` the float32 K×… array of `entry` ("high_res" K×H×W or "cam"
    K×h×w). The keys must be the image's classes (`label`, float[F] multi-hot, from
    `labels_source`; `names` the data set's class names); any other content is a UserError naming the file."""
    content = load_npy_dict(path, "CAM file", IRN_CAM_HINT)
    missing = [key for key in (entry, "keys") if key not in content]
    if missing:
        raise UserError(
            f"CAM file {path} has no {' or '.join(map(repr, missing))} entry: it was written by infer_cam.py "
            f"--out_cam (the reference's format), an older infer_cam.py or another tool; {IRN_CAM_HINT}"
        )
    keys = np.asarray(content["keys"]).astype(np.int64).reshape(-1)
    maps = np.asarray(content[entry], dtype=np.float32)
    if maps.ndim != 3 or len(maps) != len(keys):
        raise UserError(
            f"CAM file {path}: {entry!r} has shape {maps.shape} for {len(keys)} keys; expected one map per key; "
            f"{IRN_CAM_HINT}"
        )
    present = present_classes(label)
    if not np.array_equal(np.sort(keys), present):
        raise UserError(
            f"CAM file {path} holds classes ({class_names(keys, names)}) other than the image's class labels in "
            f"{labels_source} ({class_names(present, names)}): make the CAMs with the same --cls_labels"
        )
    return keys, maps
