"""AffinityNet's random walk (SPEC_AFF §4: radius 5, α 6, β 8, T^64) on a 500×375 image: the reference's dense
(g_h g_w)² transition squared six times (tests/reference_aff.py, over the reference's 21 channels) against
tool/aff.py's 64 sparse steps over the background and present channels, in time and agreement of the labels.

    python -m bench.aff_walk                     # the CPU, 1 torch thread
    python -m bench.aff_walk --threads 16        # a CPU of one's own
    python -m bench.aff_walk --device cuda       # a GPU (TF32 off, as the reference's torch)
    python -m bench.aff_walk --photos 1 --repeats 1   # a smoke run

Inputs stand in for the network's and the CAM stage's: the affinities are exp(−4 · mean |Δ colour|) of the
photo's 8×8-mean RGB (0..1) on the stride-8 grid, the CAMs two Gaussian blobs. Run from the repository root.
Prints one table and appends it, with the device name, to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.photos import SAMPLE_PHOTOS, sample_photos
from bench.results import cpu_name, publish
from engine.cores import usable_cores
from engine.runtime import resolve_device
from tests.reference_aff import walk_labels_dense
from tool import aff

BLOB_CENTRES = ((0.4, 0.3), (0.6, 0.7))  # CAM blobs, as fractions of (height, width)
BLOB_SIGMA = 0.2  # of the shorter side
KEYS = (7, 14)  # present classes (0-based): cat, person
FEATURE_SCALE = 4.0  # affinities exp(−4 · mean |Δ colour|): about 0.9 inside a region, 0.3 across an edge
NUM_CLASSES = 21  # VOC, background included: the reference walks all 21 channels


def walk_inputs(photo, height: int, width: int, device):
    """SPEC_AFF §4 step 2's 21×H×W scores, the class of each kept channel, the kept channels (`aff.walk_scores`),
    the affinities D×M and their pairs."""
    grid = (-(-height // aff.GRID_STRIDE), -(-width // aff.GRID_STRIDE))
    rgb = torch.from_numpy(np.asarray(photo.resize((width, height)), dtype=np.float32) / 255).permute(2, 0, 1)
    padded = F.pad(rgb, (0, grid[1] * aff.GRID_STRIDE - width, 0, grid[0] * aff.GRID_STRIDE - height))
    colour = F.avg_pool2d(padded, aff.GRID_STRIDE)[None] * FEATURE_SCALE
    pairs = aff.pair_index(grid, device=device)
    affinities = aff.pair_affinities(colour.to(device), pairs)[0]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    sigma = BLOB_SIGMA * min(height, width)
    cams = {
        key: np.exp(-((rows - y * height) ** 2 + (cols - x * width) ** 2) / (2 * sigma**2)).astype(np.float32)
        for key, (y, x) in zip(KEYS, BLOB_CENTRES)
    }
    kept, scores = aff.walk_scores(cams, NUM_CLASSES)
    full = torch.zeros(NUM_CLASSES, height, width)
    full[kept] = torch.from_numpy(scores)
    return full.to(device), kept, torch.from_numpy(scores).to(device), affinities, pairs


def timed(device, walk, *args) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    labels = walk(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"), help="image size")
    parser.add_argument("--photos", type=int, default=len(SAMPLE_PHOTOS), help="photos walked both ways")
    parser.add_argument("--repeats", type=int, default=5, help="timed sparse walks per photo (the minimum is kept)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: on shared cores more threads wait)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # SPEC_AFF §4: the reference's float32 cuBLAS had no TF32
    device = resolve_device(args.device)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({cpu_name()}, {args.threads} torch thread(s), {usable_cores()} cores usable)"
    )
    height, width = args.size
    dense_times, sparse_times, same, total = [], [], 0, 0
    for photo in sample_photos()[: args.photos]:
        full, kept, scores, affinities, pairs = walk_inputs(photo, height, width, device)
        seconds, dense = timed(
            device, walk_labels_dense, full, affinities, pairs.grid, aff.RADIUS, aff.WALK_BETA, aff.WALK_LOGT
        )
        dense_times.append(seconds)
        aff.walk_labels(scores, affinities, pairs)  # warm-up
        runs = [timed(device, aff.walk_labels, scores, affinities, pairs) for _ in range(args.repeats)]
        sparse_times.append(min(seconds for seconds, _ in runs))
        same += int((torch.from_numpy(kept).to(device)[runs[0][1]] == dense).sum())
        total += dense.numel()
    grid_h, grid_w = pairs.grid
    nodes = grid_h * grid_w
    nnz = aff.walk_transition(affinities, pairs).values().numel()
    dense_gflop = (aff.WALK_LOGT * 2 * nodes**3 + 2 * NUM_CLASSES * nodes**2) / 1e9
    sparse_gflop = 2**aff.WALK_LOGT * 2 * nnz * len(kept) / 1e9
    dense_s, sparse_s = min(dense_times), min(sparse_times)
    table = (
        f"\n### aff_walk — {device_name} — {datetime.date.today()}\n\n"
        f"SPEC_AFF §4 random walk, radius {aff.RADIUS}, α {aff.WALK_ALPHA}, β {aff.WALK_BETA}, "
        f"T^{2**aff.WALK_LOGT}, from the affinities to the labels (×8 upsampling, argmax); {width}×{height} image, "
        f"grid {grid_h}×{grid_w} ({nodes:,} nodes, {pairs.dst_indices.numel():,} pairs, T has {nnz:,} non-zeros); "
        f"affinities exp(−{FEATURE_SCALE:g}·mean |Δ colour|) of scikit-image's "
        f"{', '.join(SAMPLE_PHOTOS[: args.photos])}, 2 Gaussian CAM blobs; torch {torch.__version__}\n\n"
        "| walk | channels | s (min over photos) | GFLOP |\n|---|---|---|---|\n"
        f"| dense fp32: reference, {aff.WALK_LOGT} squarings of the {nodes:,}² T (`walk_labels_dense`) "
        f"| {NUM_CLASSES} | {dense_s:,.3g} | {dense_gflop:,.1f} |\n"
        f"| sparse fp32: {2**aff.WALK_LOGT} CSR steps (`tool.aff.walk_labels`), min of {args.repeats} "
        f"| {len(kept)} | {sparse_s:,.3g} | {sparse_gflop:,.2f} |\n"
        f"\nsparse speed-up over dense: {dense_s / sparse_s:,.0f}×; labels identical to the dense walk's on "
        f"{100 * same / total:.4f} % of {total:,} pixels\n"
    )
    publish(table)


if __name__ == "__main__":
    main()
