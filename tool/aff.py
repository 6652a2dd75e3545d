"""AffinityNet's pairs, labels, loss and random walk (SPEC_AFF §1-4): the stage that turns CAMs into pseudo masks
by walking them along learnt pixel affinities (SEAM's `train_aff.py`/`infer_aff.py`, after PSA's AffinityNet).

Pure functions of arrays and tensors: each runs on the device its inputs are on. Every map here lives on the
stride-8 grid g_h×g_w; a pair set is a `PairIndex` of flat (row-major) grid indices."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tool import irn, walk

RADIUS = 5  # SPEC_AFF §1: the pairs' radius, 34 directions
GRID_STRIDE = 8  # SPEC_AFF §1-2: the network's output stride, the label's and the CAM's 8×8 pooling
NOT_CONFIDENT = 255  # SPEC_AFF §2: the confident label's "no label"
NO_SCORE = 1e-5  # SPEC_AFF §2: a block whose every pooled marginal is below this lies wholly in the crop's padding
LOG_EPSILON = 1e-5  # SPEC_AFF §3: inside −log(aff + ε) and −log(1 + ε − aff)
COUNT_EPSILON = 1e-5  # SPEC_AFF §3: added to each label count
LOSS_WEIGHTS = {"bg": 0.25, "fg": 0.25, "neg": 0.5}  # SPEC_AFF §3: loss = L_bg/4 + L_fg/4 + L_neg/2
# SPEC_AFF §4 and §7: the walk's settings, SEAM's (infer_aff.py's defaults) and PSA's where they differ.
WALK_BETA = 8
WALK_ALPHA = 6.0
WALK_LOGT = 6
PSA_WALK_ALPHA = 16.0
PSA_WALK_LOGT = 8


# ---------------------------------------------------------------- §1 pairs and affinities


class PairIndex(NamedTuple):
    """SPEC_AFF §1's pairs on a g_h×g_w grid as flat grid indices (int64): `src_indices` (M) the sources
    grid[0:g_h−r+1, r−1:g_w−r+1] row-major; `dst_indices` (D×M) the target of each direction from each source,
    directions in generation order (`irn.path_directions`, the same list as IRN's; IRN orders its D axis by path
    length instead). The field names are `irn.PathIndex`'s, so `irn.affinity_labels` reads either."""

    src_indices: Tensor
    dst_indices: Tensor
    grid: tuple[int, int]
    radius: int


def pair_index(grid: tuple[int, int], radius: int = RADIUS, device: torch.device | str = "cpu") -> PairIndex:
    """SPEC_AFF §1: the pairs of radius `radius` on a `grid` = (g_h, g_w) map; M = (g_h − r + 1)(g_w − 2r + 2)."""
    height, width = int(grid[0]), int(grid[1])
    margin = radius - 1
    assert height > margin and width > 2 * margin, f"a {height}×{width} grid is too small for radius {radius}"
    full = torch.arange(height * width, device=device).view(height, width)
    src = full[: height - margin, margin : width - margin].reshape(-1)
    offsets = torch.tensor([dy * width + dx for dy, dx in irn.path_directions(radius)], device=device)
    return PairIndex(src, src + offsets[:, None], (height, width), radius)


def network_radius(grid: tuple[int, int], radius: int = RADIUS) -> int:
    """SPEC_AFF §6.10 quirk, kept: SEAM's network shrinks its radius to (min side − 1) // 2 on a grid whose smaller
    side is under 2r + 1 (an image side ≤ 80 px); the label extractor does not."""
    min_side = min(grid)
    return (min_side - 1) // 2 if min_side < 2 * radius + 1 else radius


def pair_affinities(features: Tensor, pairs: PairIndex) -> Tensor:
    """SPEC_AFF §1: aff[n, d, m] = exp(−mean over channels of |f[dst[d, m]] − f[src[m]]|), in (0, 1].
    features N×C×g_h×g_w → N×D×M."""
    flat = features.flatten(2)
    at_src = flat[:, :, pairs.src_indices].unsqueeze(2)  # N×C×1×M
    at_dst = flat[:, :, pairs.dst_indices.flatten()].view(*flat.shape[:2], *pairs.dst_indices.shape)  # N×C×D×M
    return torch.exp(-torch.mean(torch.abs(at_dst - at_src), dim=1))


# ---------------------------------------------------------------- §2 affinity labels


def block_means(marginals: np.ndarray, block: int = GRID_STRIDE) -> np.ndarray:
    """SPEC_AFF §2 step 4: H×W×C float32 → (H/block)×(W/block)×C block means (skimage's `block_reduce(·, (8, 8, 1),
    np.mean)` on the reference's channels-last crop; H and W are multiples of `block`, as the 448 crop is)."""
    height, width, channels = marginals.shape
    assert height % block == 0 and width % block == 0, f"{height}×{width} is not a multiple of {block}"
    blocks = marginals.reshape(height // block, block, width // block, block, channels)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def confident_label(la: np.ndarray, ha: np.ndarray) -> np.ndarray:
    """SPEC_AFF §2: the uint8 g_h×g_w label from the block-mean CRF marginals of the low and the high alpha,
    (K+1)×g_h×g_w each in dict order (0 = background). Values are dict positions, not class ids (§6.4): only
    equality counts. la's foreground where la and ha agree it is not background; background where ha says so
    (ha overrides la, §6.5); NOT_CONFIDENT where la says background and ha does not, and on blocks wholly in the
    crop's padding (every marginal of both < NO_SCORE)."""
    la_label = np.argmax(la, axis=0)
    ha_label = np.argmax(ha, axis=0)
    no_score = np.maximum(la.max(axis=0), ha.max(axis=0)) < NO_SCORE
    label = la_label.astype(np.uint8)
    label[la_label == 0] = NOT_CONFIDENT
    label[ha_label == 0] = 0
    label[no_score] = NOT_CONFIDENT
    return label


def affinity_labels(label: np.ndarray | Tensor, radius: int = RADIUS) -> tuple[Tensor, Tensor, Tensor]:
    """SPEC_AFF §2 (the reference's ExtractAffinityLabelInRadius): from the (…×)g_h×g_w confident label (a batch
    of them: N×D×M each, on the label's device), float32 D×M
    maps on `pair_index` (radius `radius`, never shrunk, §6.10): (bg_pos, fg_pos, neg) = both ends background;
    both the same foreground value; different values; pairs touching NOT_CONFIDENT are in none (bg_pos is
    unmasked in the reference, which is the same since 0 < 255, §6.5)."""
    label = label if isinstance(label, Tensor) else torch.as_tensor(np.asarray(label))
    pairs = pair_index(label.shape[-2:], radius, label.device)
    # irn.affinity_labels counts a value as valid below its num_classes: here every value below NOT_CONFIDENT
    maps = irn.affinity_labels(label, pairs, num_classes=NOT_CONFIDENT)
    return maps["bg_pos"], maps["fg_pos"], maps["neg"]


# ---------------------------------------------------------------- §3 loss


def affinity_loss(aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
    """SPEC_AFF §3 over the whole batch: aff (N×D×M, in (0, 1]) and the §2 labels (N×D×M, 0/1) →
    {"loss", "bg", "fg", "neg"} scalars; each term is its pairs' mean cross-entropy, loss = bg/4 + fg/4 + neg/2."""
    pos_log = -torch.log(aff + LOG_EPSILON)
    terms = {
        "bg": torch.sum(bg_pos * pos_log) / (torch.sum(bg_pos) + COUNT_EPSILON),
        "fg": torch.sum(fg_pos * pos_log) / (torch.sum(fg_pos) + COUNT_EPSILON),
        "neg": torch.sum(neg * -torch.log(1 + LOG_EPSILON - aff)) / (torch.sum(neg) + COUNT_EPSILON),
    }
    return {"loss": sum(LOSS_WEIGHTS[name] * term for name, term in terms.items()), **terms}


# ---------------------------------------------------------------- §4 random walk


def walk_scores(
    cams: dict[int, np.ndarray], num_classes: int, alpha: float = WALK_ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """SPEC_AFF §4 step 2 from a CAM dict {class k (0-based): H×W float32}: the reference's num_classes×H×W array
    (C[k+1] = map of k, C[0] = (1 − max_{c≥1} C[c])^alpha, absent classes 0) reduced to its background and present
    channels, since an absent channel stays 0 through the walk and never beats the background's walked value
    (≥ 0) to a first maximum. → (the class id of each kept channel, (K+1)×H×W float32)."""
    assert cams, "a CAM dict without classes"
    kept = np.array([0, *sorted(key + 1 for key in cams)], dtype=np.int64)
    full = np.zeros((num_classes, *next(iter(cams.values())).shape), dtype=np.float32)
    for key, cam in cams.items():
        full[key + 1] = cam
    full[0] = (1 - np.max(full[1:], axis=0)) ** np.float32(alpha)
    return kept, full[kept]


def walk_transition(aff: Tensor, pairs: PairIndex, beta: float = WALK_BETA) -> Tensor:
    """SPEC_AFF §4 steps 3-4 without the dense matrix: Tᵀ (CSR, (g_h g_w)², ≤ 2D + 1 entries a row) of
    T = A^β / column sums, A the symmetric affinity of one image's aff (D×M) with ones on the diagonal. A node in
    no pair (§6.9) keeps its own value."""
    src = pairs.src_indices.expand_as(pairs.dst_indices)
    num_nodes = pairs.grid[0] * pairs.grid[1]
    return walk.sparse_transition(src.flatten(), pairs.dst_indices.flatten(), aff.flatten() ** beta, num_nodes)


def random_walk(x: Tensor, aff: Tensor, pairs: PairIndex, beta: float = WALK_BETA, logt: int = WALK_LOGT) -> Tensor:
    """SPEC_AFF §4 steps 3-6: rw = x·T^(2^logt) as 2^logt sparse steps (the same product as the reference's logt
    squarings, rounded differently); x C×(g_h g_w), aff D×M on `pairs` → C×(g_h g_w)."""
    return walk.walk(walk_transition(aff, pairs, beta), x, 2**logt)


def walk_labels(
    scores: Tensor, aff: Tensor, pairs: PairIndex, beta: float = WALK_BETA, logt: int = WALK_LOGT
) -> Tensor:
    """SPEC_AFF §4 steps 3-7 on one image: scores C×H×W (§4 step 2's channels, at the image size), aff D×M on
    `pairs` (the Hp×Wp = 8·grid padded image's) → the H×W int64 index of the walked channel with the largest
    score (first maximum). Steps: zero-pad to Hp×Wp, 8×8 block means, `random_walk`, bilinear ×8 (align_corners
    False), argmax, crop."""
    height, width = scores.shape[1:]
    grid_h, grid_w = pairs.grid
    padded = F.pad(scores, (0, grid_w * GRID_STRIDE - width, 0, grid_h * GRID_STRIDE - height))
    pooled = F.avg_pool2d(padded.unsqueeze(0), GRID_STRIDE)[0]
    walked = random_walk(pooled.flatten(1), aff, pairs, beta, logt)
    upsampled = F.interpolate(
        walked.view(1, -1, grid_h, grid_w), scale_factor=GRID_STRIDE, mode="bilinear", align_corners=False
    )
    # max(dim).indices: the first maximum, as argmax, and on the CPU ~20× faster than argmax over a leading dim
    return upsampled[0, :, :height, :width].max(dim=0).indices
