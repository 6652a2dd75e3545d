"""SPEC §5 written the reference's way, slow and obvious: the numpy normalisation and the loop that
forwards each of the 8 inputs alone. tests/test_cam.py and tests/test_infer_cam.py compare against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.fileio import read_rgb
from tool.imutils import Normalize, scale_image


def reference_normalize(sum_cam: np.ndarray) -> np.ndarray:
    """SPEC §5 as the reference writes it in numpy, before the halving."""
    sum_cam = sum_cam.copy()
    sum_cam[sum_cam < 0] = 0
    cam_max = np.max(sum_cam, (1, 2), keepdims=True)
    cam_min = np.min(sum_cam, (1, 2), keepdims=True)
    sum_cam[sum_cam < cam_min + 1e-5] = 0
    return (sum_cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


def direct_loop_cam(model, image_path: Path, label: np.ndarray, scales, size=None) -> np.ndarray:
    """The reference's loop: every scale and its flip forwarded alone, the second output's
    foreground channels resized to `size` (default: the original size), times the label,
    flipped back, summed, normalised."""
    image = read_rgb(image_path)
    height, width = size or (image.height, image.width)
    normalize = Normalize()
    maps = []
    for scale in scales:
        chw = torch.from_numpy(normalize(np.asarray(scale_image(image, scale))).transpose(2, 0, 1).copy())
        for flipped in (False, True):
            x = (chw.flip(-1) if flipped else chw)[None]
            with torch.no_grad():
                _, cam_rv = model(x)
            cam = F.interpolate(cam_rv[:, 1:], (height, width), mode="bilinear", align_corners=False)[0]
            cam = cam.numpy() * label.reshape(-1, 1, 1)
            maps.append(np.flip(cam, -1) if flipped else cam)
    return reference_normalize(np.sum(maps, axis=0))
