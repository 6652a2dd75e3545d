"""IRN's inter-pixel relations (SPEC-IRN §3–6, §9): the path index, affinities from class boundaries,
affinity labels, loss terms and the loss of IRNet's outputs for training, and the random walk that turns
CAMs into pseudo labels.

Pure functions of tensors: each runs on the device its inputs are on (a `PathIndex` is built on the
device its caller names, once: the trainer keeps its own, the walk caches one per grid size).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tool import walk

TRAIN_RADIUS = 10  # SPEC-IRN §6: path radius of the training affinities (crop/4 grid)
WALK_RADIUS = 5  # SPEC-IRN §9: path radius of the random walk
WALK_BETA = 10  # SPEC-IRN §9: T is built from A^β
WALK_EXP_TIMES = 8  # SPEC-IRN §9: T squared this many times, T^(2^8) = T^256
SEM_SEG_BG_THRES = 0.25  # SPEC-IRN §9: the background plane put before the argmax
LABEL_SCALE = 0.25  # SPEC-IRN §5: labels are reduced to the stride-4 grid
LOG_EPSILON = 1e-5  # SPEC-IRN §6: inside −log(aff + ε) and −log(1 + ε − aff)
SUM_EPSILON = 1e-5  # SPEC-IRN §6: added to every label-count denominator


# ---------------------------------------------------------------- §3 path index


def path_directions(radius: int) -> list[tuple[int, int]]:
    """SPEC-IRN §3: the search directions (dy, dx) in generation order: (0, x) for x = 1 … r−1, then
    y = 1 … r−1 (outer), x = −r+1 … r−1 (inner) with x² + y² < r². 34 directions at r = 5."""
    directions = [(0, dx) for dx in range(1, radius)]
    directions += [
        (dy, dx) for dy in range(1, radius) for dx in range(1 - radius, radius) if dx * dx + dy * dy < radius * radius
    ]
    return directions


def direction_path(direction: tuple[int, int]) -> np.ndarray:
    """SPEC-IRN §3: the path of one direction, L×2 (y, x) int64 offsets from the source: the grid points
    of the box spanned by (0, 0) and (dy, dx) whose squared distance to the line through both is < 1,
    sorted by −(|y| + |x|) with ties in generation order, so the destination is first and (0, 0) last."""
    dy, dx = direction
    ys, xs = np.meshgrid(np.arange(min(0, dy), max(0, dy) + 1), np.arange(min(0, dx), max(0, dx) + 1), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()  # generation order: y outer, x inner
    near_line = (dy * xs - dx * ys) ** 2 < dy * dy + dx * dx  # (dy·x − dx·y)² / (dy² + dx²) < 1, in integers
    points = np.stack([ys[near_line], xs[near_line]], axis=1).astype(np.int64)
    return points[np.argsort(-np.abs(points).sum(axis=1), kind="stable")]


def paths_by_length(radius: int) -> list[np.ndarray]:
    """SPEC-IRN §3: the paths grouped by length, groups in increasing length, directions within a group in
    generation order: one P×L×2 array per length L."""
    paths = [direction_path(direction) for direction in path_directions(radius)]
    lengths = sorted({len(path) for path in paths})
    return [np.stack([path for path in paths if len(path) == length]) for length in lengths]


def search_dst(radius: int) -> np.ndarray:
    """SPEC-IRN §3: the destinations (dy, dx) of all paths in group order, D×2 int64: the order of every
    D axis (affinities, labels, displacement targets)."""
    return np.concatenate([group[:, 0] for group in paths_by_length(radius)])


class PathIndex:
    """SPEC-IRN §3 on an Hp×Wp map, as flat (row-major) indices of that map, int64 tensors:

    - `src_indices` (M = ch·cw): the sources full[0:ch, rf:rf+cw], ch = Hp − rf, cw = Wp − 2·rf;
    - `dst_indices` (D×M): the destination of each direction from each source, `search_dst` order;
    - `path_indices`: per path-length group, P×L×M: point l of path p from source m (what §4 reads);
      the groups' paths, concatenated, are the D directions.
    `search_dst` (D×2) holds each direction's (dy, dx). Built on `device`.
    """

    def __init__(self, radius: int, size: tuple[int, int], device: torch.device | str = "cpu"):
        self.radius = radius
        self.radius_floor = int(np.ceil(radius)) - 1
        self.size = (int(size[0]), int(size[1]))
        height, width = self.size
        self.crop_size = (height - self.radius_floor, width - 2 * self.radius_floor)
        assert min(self.crop_size) > 0, f"a {height}×{width} map is too small for radius {radius}"
        groups = paths_by_length(radius)
        self.search_dst = torch.from_numpy(np.concatenate([group[:, 0] for group in groups])).to(device)
        crop_h, crop_w = self.crop_size
        full = torch.arange(height * width, device=device).view(height, width)
        self.src_indices = full[:crop_h, self.radius_floor : self.radius_floor + crop_w].reshape(-1)
        # point (dy, dx) of the path from source m is m + dy·Wp + dx (the slice full[dy:dy+ch, rf+dx:rf+dx+cw])
        self.path_indices = [
            self.src_indices + torch.from_numpy(group[..., 0] * width + group[..., 1]).to(device)[..., None]
            for group in groups
        ]
        self.dst_indices = torch.cat([group[:, 0] for group in self.path_indices])

    @property
    def num_directions(self) -> int:
        return len(self.search_dst)


# ---------------------------------------------------------------- §4 affinity


def edge_to_affinity(boundary: Tensor, path_index: PathIndex) -> Tensor:
    """SPEC-IRN §4: aff[..., d, m] = 1 − the maximum boundary probability over the points of path d from
    source m (source and destination included). boundary (..., Hp, Wp), e.g. N×Hp×Wp → aff (..., D, M)."""
    flat = boundary.flatten(-2)
    affinities = []
    for group in path_index.path_indices:
        on_path = flat[..., group.to(flat.device)]  # (..., P, L, M)
        # max(dim).values: on ties the first maximum takes the gradient, as the reference's max_pool2d
        affinities.append(1 - on_path.max(dim=-2).values)
    return torch.cat(affinities, dim=-2)


# ---------------------------------------------------------------- §5 affinity labels


def quarter_label(label: np.ndarray) -> np.ndarray:
    """SPEC-IRN §5: an H×W label map reduced to (round(H/4), round(W/4)) (numpy's round, half to even) by
    nearest neighbour as PIL picks it: output row y reads input row floor((y + 0.5)·H / h), columns alike."""
    height, width = label.shape[:2]
    out_h, out_w = int(np.round(height * LABEL_SCALE)), int(np.round(width * LABEL_SCALE))
    rows = np.floor((np.arange(out_h) + 0.5) * (height / out_h)).astype(np.int64)
    cols = np.floor((np.arange(out_w) + 0.5) * (width / out_w)).astype(np.int64)
    return label[rows[:, None], cols]


def affinity_labels(label: Tensor | np.ndarray, path_index: PathIndex, num_classes: int) -> dict[str, Tensor]:
    """SPEC-IRN §5: from the quarter label map (..., Hp, Wp) (0 background, 1…K−1, 255 unknown), with
    from = label at each source and to = label at each destination, float 0/1 maps (..., D, M):
    `bg_pos` valid ∧ from == to == 0, `fg_pos` valid ∧ from == to > 0, `neg` valid ∧ from ≠ to,
    valid = both < num_classes (the reference hard-codes VOC's 21, i.e. "not 255"; COCO's is 81)."""
    flat = torch.as_tensor(label).flatten(-2)
    from_label = flat[..., path_index.src_indices.to(flat.device)].unsqueeze(-2)  # (..., 1, M)
    to_label = flat[..., path_index.dst_indices.to(flat.device)]  # (..., D, M)
    valid = (from_label < num_classes) & (to_label < num_classes)
    same = from_label == to_label
    return {
        "bg_pos": (valid & same & (from_label == 0)).float(),
        "fg_pos": (valid & same & (from_label > 0)).float(),
        "neg": (valid & ~same).float(),
    }


# ---------------------------------------------------------------- §6 loss


def displacement_pairs(disp: Tensor, path_index: PathIndex) -> Tensor:
    """SPEC-IRN §6: disp at each source minus disp at each destination: N×2×Hp×Wp → N×2×D×M."""
    flat = disp.flatten(-2)
    at_source = flat[..., path_index.src_indices.to(flat.device)].unsqueeze(-2)
    return at_source - flat[..., path_index.dst_indices.to(flat.device)]


def irn_loss_terms(
    aff: Tensor, disp: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor, path_index: PathIndex
) -> dict[str, Tensor]:
    """SPEC-IRN §6 over the whole batch: aff (N×D×M, §4), disp (N×2×Hp×Wp), the §5 labels (N×D×M) →
    {"pos_aff", "neg_aff", "dp_fg", "dp_bg", "total"} (scalars)."""
    pos_log = -torch.log(aff + LOG_EPSILON)
    neg_log = -torch.log(1 + LOG_EPSILON - aff)
    bg_pos_aff = torch.sum(bg_pos * pos_log) / (torch.sum(bg_pos) + SUM_EPSILON)
    fg_pos_aff = torch.sum(fg_pos * pos_log) / (torch.sum(fg_pos) + SUM_EPSILON)
    pos_aff = bg_pos_aff / 2 + fg_pos_aff / 2
    neg_aff = torch.sum(neg * neg_log) / (torch.sum(neg) + SUM_EPSILON)

    pair = displacement_pairs(disp, path_index)
    target = path_index.search_dst.to(pair).T.unsqueeze(-1)  # 2×D×1: each direction's (dy, dx)
    # the 2· counts the two displacement channels
    dp_fg = torch.sum((pair - target).abs() * fg_pos.unsqueeze(1)) / (2 * torch.sum(fg_pos) + SUM_EPSILON)
    dp_bg = torch.sum(pair.abs() * bg_pos.unsqueeze(1)) / (2 * torch.sum(bg_pos) + SUM_EPSILON)
    total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    return {"pos_aff": pos_aff, "neg_aff": neg_aff, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}


def irn_loss(
    edge: Tensor, disp: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor, path_index: PathIndex
) -> dict[str, Tensor]:
    """SPEC-IRN §6 training loss of one batch from IRNet's outputs, as IRN's loop computes it: edge N×1×Hp×Wp
    (logits), disp N×2×Hp×Wp; boundary = sigmoid(edge), affinities on `path_index` (§4: radius 10 on the
    crop/4 grid), the terms against the §5 labels (N×D×M, 0/1). The terms are computed in float32 whatever
    precision the network ran in. → dict(loss, pos_aff, neg_aff, dp_fg, dp_bg) of scalars."""
    aff = edge_to_affinity(torch.sigmoid(edge.float()[:, 0]), path_index)
    terms = irn_loss_terms(aff, disp.float(), bg_pos, fg_pos, neg, path_index)
    return {"loss": terms["total"], **{name: terms[name] for name in ("pos_aff", "neg_aff", "dp_fg", "dp_bg")}}


# ---------------------------------------------------------------- §9 random walk


WALK_INDEX_CACHE = 8  # path indices kept (~27 MB each at 500×375): VOC's few common sizes, COCO's


@functools.lru_cache(maxsize=WALK_INDEX_CACHE)
def walk_path_index(radius: int, size: tuple[int, int], device: torch.device) -> PathIndex:
    """The walk's path index of one padded grid size, built on `device` once and shared by every image of
    that size (read only): make_sem_seg_labels walks thousands of images of a handful of sizes."""
    return PathIndex(radius, size, device)


def walk_affinity(boundary: Tensor, radius: int = WALK_RADIUS) -> tuple[Tensor, PathIndex]:
    """SPEC-IRN §9 step 1: the h×w boundary map padded with 1.0 (radius columns left and right, radius rows
    at the bottom), its path index and its affinities (D×M) on the padded (h+r)×(w+2r) grid. The padding
    makes every real pixel a source; a path between two real pixels stays inside their box, so the padded
    values never reach the walk's T (step 2 drops the padded pixels)."""
    padded = F.pad(boundary, (radius, radius, 0, radius), value=1.0)
    path_index = walk_path_index(radius, tuple(padded.shape), padded.device)
    return edge_to_affinity(padded, path_index), path_index


def walk_transition(boundary: Tensor, beta: float = WALK_BETA, radius: int = WALK_RADIUS) -> Tensor:
    """SPEC-IRN §9 steps 1–3 as a sparse matrix (tool/walk.py's): Tᵀ, (hw)×(hw) CSR, about 2·D + 1 entries a row
    (69 at r = 5), so that x·T = (Tᵀ·xᵀ)ᵀ. Tᵀ[j, i] = A[i, j]^β / Σ_i' A[i', j]^β over the real pixels."""
    height, width = boundary.shape
    pixels = height * width
    aff, path_index = walk_affinity(boundary, radius)
    # each padded pixel's flat index on the real h×w grid, −1 on the padding (step 2 drops those)
    real_index = torch.full(path_index.size, -1, dtype=torch.int64, device=boundary.device)
    real_index[:height, radius : radius + width] = torch.arange(pixels, device=boundary.device).view(height, width)
    real_index = real_index.flatten()
    dst = real_index[path_index.dst_indices]
    src = real_index[path_index.src_indices].expand_as(dst)
    kept = (src >= 0) & (dst >= 0)
    # the paths go forward only (dy ≥ 0, and dx > 0 where dy = 0): each unordered pair once, as walk's T needs
    return walk.sparse_transition(src[kept], dst[kept], aff[kept] ** beta, pixels)


def random_walk(
    cam: Tensor,
    boundary: Tensor,
    beta: float = WALK_BETA,
    exp_times: int = WALK_EXP_TIMES,
    radius: int = WALK_RADIUS,
) -> Tensor:
    """SPEC-IRN §9 without the (hw)×(hw) matrix: rw = (cam · (1 − boundary)) · T^(2^exp_times) as
    2^exp_times sparse steps x ← x·T (tool/walk.py's). cam K×h×w, boundary h×w → K×h×w."""
    height, width = boundary.shape
    seeds = (cam * (1 - boundary)).flatten(-2)  # step 5: cam · (1 − boundary), K×hw
    return walk.walk(walk_transition(boundary, beta, radius), seeds, 2**exp_times).reshape(-1, height, width)


def rw_to_labels(
    rw: Tensor, keys: np.ndarray, image_size: tuple[int, int], bg_threshold: float = SEM_SEG_BG_THRES
) -> np.ndarray:
    """SPEC-IRN §9 last step: rw (K×h×w) upsampled ×4 (bilinear, align_corners=False), cropped to H×W and
    divided by its global maximum; a constant bg_threshold plane put first; argmax (first maximum wins);
    mapped through keys' = [0, keys + 1] (keys: the K present classes, 0-based) → H×W uint8 class indices."""
    height, width = image_size
    upsampled = F.interpolate(rw.unsqueeze(0), scale_factor=4, mode="bilinear", align_corners=False)[0]
    upsampled = upsampled[:, :height, :width]
    upsampled = upsampled / upsampled.max()
    with_background = F.pad(upsampled, (0, 0, 0, 0, 1, 0), value=bg_threshold)
    plane_label = np.pad(np.asarray(keys) + 1, (1, 0))
    return plane_label[with_background.argmax(dim=0).cpu().numpy()].astype(np.uint8)
