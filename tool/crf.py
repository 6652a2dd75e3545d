"""Dense CRFs: the score-map CRF of SPEC §7 / SPEC_AFF §5 and the SEAM-style pseudo labels built on it;
IRN's CRF of label maps (SPEC-IRN §8); the segmentation stage's test-time CRF (SPEC_SEG §4). Each CRF's
pairwise terms and iterations are one `CrfSettings` named after whose it is (`CRF_SETTINGS`, one table),
and `dense_crf` builds a pydensecrf CRF from any of them.

CPN's code kept two copies of `crf_inference` with different bilateral ranges (50 in tool/imutils.py,
SPEC §7; 80 in tool/visualization.py); SEAM's, which made the CRF label files AffinityNet trains on,
is sxy 80 with 10 iterations (SPEC_AFF §5). Here there is one function and both settings by name.
pydensecrf is imported inside the functions so that the rest of the project works without it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import UserError


@dataclass(frozen=True)
class CrfSettings:
    """A dense CRF's pairwise terms (pydensecrf's Potts compatibilities, its default kernel and
    normalisation) and its number of mean-field iterations."""

    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    iterations: int


# SPEC §7: CPN's crf_inference (CPN: tool/imutils.py), bilateral sxy 50, 5 iterations.
CPN_CRF = CrfSettings(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=13, bilateral_compat=10, iterations=5
)
# SPEC_AFF §5: SEAM's crf_inference (SEAM: tool/imutils.py:220-237), which made infer_SEAM.py's CRF label
# files for train_aff: CPN_CRF's terms but bilateral sxy 80 and 10 iterations.
SEAM_CRF = CrfSettings(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10, iterations=10
)
SEAM_CRF_ALPHAS = (4.0, 24.0)  # SPEC_AFF §5: SEAM's background exponents (infer_SEAM.py:31)
# SPEC-IRN §8: IRN's crf_inference_label: CPN_CRF's terms but colour range 5 and 10 iterations; its unary
# comes from labels, trusted with IRN_LABEL_GT_PROB.
IRN_LABEL_CRF = CrfSettings(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10, iterations=10
)
IRN_LABEL_GT_PROB = 0.7
# SPEC_SEG §4: the segmentation stage's test-time CRF (the reference's DenseCRF.py): CPN_CRF's terms but
# bilateral range 32, one mean-field iteration.
DEEPLAB_CRF = CrfSettings(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=32, bilateral_srgb=13, bilateral_compat=10, iterations=1
)
# The table, by owner: the names README's "CRF settings" and the output manifests use.
CRF_SETTINGS = {"cpn": CPN_CRF, "seam": SEAM_CRF, "irn_label": IRN_LABEL_CRF, "deeplab": DEEPLAB_CRF}
SCORE_CRF_OWNERS = ("seam", "cpn")  # the CRFs of score maps (unary from probabilities): infer_cam --crf_settings


def require_pydensecrf():
    """pydensecrf's (densecrf module, unary_from_softmax), or a UserError saying how to install it."""
    try:
        import pydensecrf.densecrf as densecrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise UserError(
            "the dense CRF needs pydensecrf, which is not installed; "
            "run `pip install pydensecrf2` or leave out the CRF option"
        ) from None
    return densecrf, unary_from_softmax


def dense_crf(image: np.ndarray, num_labels: int, settings: CrfSettings):
    """A pydensecrf DenseCRF2D over `image` (uint8 H×W×3 RGB) and num_labels labels, with the pairwise
    terms of `settings`; the caller sets the unary and runs `settings.iterations` mean-field steps."""
    densecrf, _ = require_pydensecrf()
    height, width = image.shape[:2]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8, (image.shape, image.dtype)
    crf = densecrf.DenseCRF2D(width, height, num_labels)
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    # A copy: pydensecrf refuses read-only buffers, such as np.asarray of a PIL image.
    crf.addPairwiseBilateral(
        sxy=settings.bilateral_sxy,
        srgb=settings.bilateral_srgb,
        rgbim=image.copy(order="C"),
        compat=settings.bilateral_compat,
    )
    return crf


def crf_inference(image: np.ndarray, probs: np.ndarray, settings: CrfSettings) -> np.ndarray:
    """SPEC §7, SPEC_AFF §5: refine per-class scores with a fully connected CRF of `settings`.

    image: uint8 H×W×3 RGB; probs: C×H×W non-negative scores, used as probabilities
    (unary = -log(clip(probs, 1e-5, 1)), no renormalisation, as the reference).
    Returns float32 C×H×W marginals."""
    _, unary_from_softmax = require_pydensecrf()
    num_labels, height, width = probs.shape
    assert image.shape[:2] == (height, width), (image.shape, probs.shape)
    crf = dense_crf(image, num_labels, settings)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    marginals = crf.inference(settings.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def seam_background_score(fg_maps: np.ndarray, alpha: float) -> np.ndarray:
    """SPEC_AFF §5: SEAM's background score `(1 - max over classes)^alpha`, H×W.

    fg_maps: K×H×W foreground maps in 0..1; with no class every pixel scores 1."""
    if len(fg_maps) == 0:
        return np.ones(fg_maps.shape[1:], np.float32)
    return np.power(1.0 - fg_maps.max(axis=0), alpha).astype(np.float32)


def seam_crf_scores(image: np.ndarray, fg_maps: np.ndarray, alpha: float, settings: CrfSettings) -> np.ndarray:
    """SPEC_AFF §5 (infer_SEAM.py's `_crf_with_alpha`): channel 0 the background score of
    `seam_background_score`, channels 1..K the foreground maps, refined by `crf_inference` with
    `settings` (SEAM's: SEAM_CRF). (K+1)×H×W float32 marginals."""
    background = seam_background_score(fg_maps, alpha)[None]
    scores = np.concatenate([background, fg_maps.astype(np.float32)], axis=0)
    if len(scores) == 1:
        return scores  # background only: nothing for the CRF to decide (SEAM's np.max fails here)
    return crf_inference(image, scores, settings)


def label_unary(labels: np.ndarray, num_labels: int, gt_prob: float = IRN_LABEL_GT_PROB) -> np.ndarray:
    """SPEC-IRN §8: pydensecrf's `unary_from_labels(labels, num_labels, gt_prob, zero_unsure=False)`:
    -log(gt_prob) for each pixel's own label, -log((1 - gt_prob) / (num_labels - 1)) for every other.
    labels: H×W ints in 0..num_labels-1 (num_labels >= 2). Returns float32 num_labels×(H·W)."""
    assert num_labels >= 2 and 0 < gt_prob < 1, (num_labels, gt_prob)
    flat = labels.reshape(-1)
    unary = np.full((num_labels, flat.size), -np.log((1.0 - gt_prob) / (num_labels - 1)), np.float32)
    unary[flat, np.arange(flat.size)] = -np.log(gt_prob)
    return unary


def crf_inference_labels(image: np.ndarray, label_maps: Sequence[np.ndarray], num_labels: int) -> list[np.ndarray]:
    """SPEC-IRN §8, IRN's `crf_inference_label` for each of several label maps of one image: a dense
    CRF with IRN_LABEL_CRF whose unary trusts each pixel's label with probability IRN_LABEL_GT_PROB
    (`label_unary`), the argmax of Q (the first maximum winning).

    One CRF serves every map: its pairwise terms (the bilateral lattice, most of the cost) are built
    once and each map's unary is set in turn. Mean field starts from the unary alone, so each result
    is that of a CRF of its own, as IRN builds per call.

    image: uint8 H×W×3 RGB; label_maps: H×W ints in 0..num_labels-1. Returns int64 H×W labels per
    map. With a single label the answer is that label everywhere (IRN's unary divides by zero there)."""
    height, width = image.shape[:2]
    assert image.shape == (height, width, 3) and image.dtype == np.uint8, (image.shape, image.dtype)
    assert all(labels.shape == (height, width) for labels in label_maps), (image.shape, len(label_maps))
    if num_labels == 1:
        return [np.zeros((height, width), np.int64) for _ in label_maps]
    crf = dense_crf(image, num_labels, IRN_LABEL_CRF)
    refined = []
    for labels in label_maps:
        crf.setUnaryEnergy(label_unary(labels, num_labels))
        marginals = np.asarray(crf.inference(IRN_LABEL_CRF.iterations)).reshape(num_labels, height, width)
        refined.append(marginals.argmax(axis=0))
    return refined
