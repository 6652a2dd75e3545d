"""Dense CRF refinement of class scores (SPEC §7) and the SEAM-style pseudo labels
built on it.

The reference kept two copies of `crf_inference` with different bilateral ranges
(50 in tool/imutils.py, 80 in tool/visualization.py); SPEC §7 is the first, and this is
the only one. pydensecrf is imported inside the functions so that the rest of the
project works without it."""

from __future__ import annotations

import numpy as np

from tool.errors import UserError

# SPEC §7: pairwise terms and mean-field iterations of the reference's crf_inference.
GAUSSIAN_SXY = 3
GAUSSIAN_COMPAT = 3
BILATERAL_SXY = 50
BILATERAL_SRGB = 13
BILATERAL_COMPAT = 10
CRF_ITERATIONS = 5
SEAM_CRF_ALPHAS = (4.0, 24.0)  # SPEC §7: SEAM's background exponents


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


def crf_inference(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = CRF_ITERATIONS,
    scale_factor: float = 1.0,
    labels: int | None = None,
) -> np.ndarray:
    """SPEC §7: refine per-class scores with a fully connected CRF.

    image: uint8 H×W×3 RGB; probs: C×H×W non-negative scores, used as probabilities
    (unary = -log(clip(probs, 1e-5, 1)), no renormalisation, as the reference);
    labels: C, kept for the reference's signature. Returns float32 C×H×W marginals."""
    densecrf, unary_from_softmax = require_pydensecrf()
    num_labels, height, width = probs.shape
    assert labels is None or labels == num_labels, (labels, probs.shape)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8, (image.shape, image.dtype)

    crf = densecrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY / scale_factor, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY / scale_factor,
        srgb=BILATERAL_SRGB,
        rgbim=np.ascontiguousarray(image),
        compat=BILATERAL_COMPAT,
    )
    marginals = crf.inference(iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def seam_background_score(fg_maps: np.ndarray, alpha: float) -> np.ndarray:
    """SPEC §7: SEAM's background score `(1 - max over classes)^alpha`, H×W.

    fg_maps: K×H×W foreground maps in 0..1; with no class every pixel scores 1."""
    if len(fg_maps) == 0:
        return np.ones(fg_maps.shape[1:], np.float32)
    return np.power(1.0 - fg_maps.max(axis=0), alpha).astype(np.float32)


def seam_crf_scores(
    image: np.ndarray, fg_maps: np.ndarray, alpha: float, iterations: int = CRF_ITERATIONS
) -> np.ndarray:
    """SEAM-style CRF scores: channel 0 the background score of `seam_background_score`,
    channels 1..K the foreground maps, refined by `crf_inference`. (K+1)×H×W float32."""
    background = seam_background_score(fg_maps, alpha)[None]
    scores = np.concatenate([background, fg_maps.astype(np.float32)], axis=0)
    if len(scores) == 1:
        return scores  # background only: nothing for the CRF to decide
    return crf_inference(image, scores, iterations=iterations)
