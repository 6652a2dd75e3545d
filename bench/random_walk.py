"""The random walk of SPEC-IRN §9 (radius 5, β = 10, T^256): the reference's dense (hw)×(hw) form (the tests'
oracle, tests/reference_walk.py) against tool/irn.py's 256 sparse steps, in time, agreement of the final labels
and memory.

    python -m bench.random_walk                        # the default device; dense at full size on a GPU
    python -m bench.random_walk --device cpu           # dense timed at half the sides, extrapolated by FLOPs
    python -m bench.random_walk --device cpu --threads 16   # a CPU of one's own
    python -m bench.random_walk --device cpu --dense-size 94 125 --repeats 2   # a smoke run

Inputs stand in for IRN's: the boundary probability is the Sobel edge magnitude of scikit-image's photos
at the stride-4 grid, scaled to 0..1; the CAMs are Gaussian blobs. Run from the repository root. Prints
one table and appends it, with the device name, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import time

import numpy as np
import torch
from PIL import Image
from skimage.filters import sobel

from bench.photos import SAMPLE_PHOTOS, sample_photos
from bench.results import cpu_name, publish
from engine.cores import usable_cores
from engine.errors import run_main
from engine.runtime import resolve_device
from tests.reference_walk import random_walk_dense
from tool import irn

BLOB_CENTRES = ((0.4, 0.3), (0.6, 0.7))  # CAM blobs, as fractions of (height, width)
BLOB_SIGMA = 0.2  # of the shorter side
KEYS = np.array([7, 14])  # present classes (0-based): cat, person
MEMORY_SIZE = (480, 640)  # the memory goal: a 640×480 image in < 1 GB


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


def walk_inputs(photo: Image.Image, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cam K×h×w, boundary h×w) for `photo` resized to height×width: Sobel magnitude of the grey image at
    the stride-4 grid over its maximum, and one Gaussian blob per class."""
    grid_h, grid_w = stride4_size(height, width)
    grey = np.asarray(photo.resize((width, height), Image.BICUBIC).convert("L").resize((grid_w, grid_h), Image.BOX))
    edges = sobel(grey.astype(np.float64) / 255)
    boundary = torch.from_numpy(edges / edges.max())
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    sigma = BLOB_SIGMA * min(grid_h, grid_w)
    cam = torch.stack(
        [torch.exp(-((rows - y * grid_h) ** 2 + (cols - x * grid_w) ** 2) / (2 * sigma**2)) for y, x in BLOB_CENTRES]
    )
    return cam.to(device, dtype), boundary.to(device, dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(walk, cam, boundary, device) -> tuple[float, torch.Tensor]:
    synchronize(device)
    start = time.perf_counter()
    rw = walk(cam, boundary)
    synchronize(device)
    return time.perf_counter() - start, rw


def dense_gflop(pixels: int, classes: int) -> float:
    """exp_times squarings of the (hw)×(hw) matrix, 2·n³ each, then the K×n by n×n product."""
    return (irn.WALK_EXP_TIMES * 2 * pixels**3 + 2 * classes * pixels**2) / 1e9


def sparse_gflop(transposed: torch.Tensor, classes: int) -> float:
    return 2**irn.WALK_EXP_TIMES * 2 * transposed.values().numel() * classes / 1e9


def table_row(walk: str, image_size, seconds: float, gflop: float, how: str) -> str:
    grid_h, grid_w = stride4_size(*image_size)
    return (
        f"| {walk} | {image_size[1]}×{image_size[0]} | {grid_h}×{grid_w} ({grid_h * grid_w:,}) "
        f"| {seconds:,.3g} | {gflop:,.1f} | {how} |\n"
    )


def peak_memory_mib(cam, boundary, device) -> tuple[float, str]:
    """The sparse walk's peak: allocated GPU memory, or on the CPU the growth of the process's peak RSS
    (an upper bound: run first, before any larger allocation)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        irn.random_walk(cam, boundary)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "peak GPU memory allocated"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    irn.random_walk(cam, boundary)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10, "growth of peak RSS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"), help="image size")
    parser.add_argument(
        "--dense-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="image size of the dense runs (default: --size on a GPU, half its sides on the CPU)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed sparse walks (the minimum is reported)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: on shared cores more threads wait)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    height, width = args.size
    dense_height, dense_width = args.dense_size or ((height, width) if on_gpu else (height // 2, width // 2))
    device_name = (
        torch.cuda.get_device_name(device)
        if on_gpu
        else f"CPU ({cpu_name()}, {args.threads} torch thread(s), {usable_cores()} cores usable)"
    )
    photos = sample_photos()
    classes = len(BLOB_CENTRES)

    # ---- memory first, while the process's peak is still the import's
    memory_cam, memory_boundary = walk_inputs(photos[0], *MEMORY_SIZE, device, torch.float32)
    memory_mib, memory_kind = peak_memory_mib(memory_cam, memory_boundary, device)

    # ---- sparse at full size
    cam, boundary = walk_inputs(photos[0], height, width, device, torch.float32)
    irn.random_walk(cam, boundary)  # warm-up
    sparse_s = min(timed(irn.random_walk, cam, boundary, device)[0] for _ in range(args.repeats))
    pixels = cam.shape[1] * cam.shape[2]
    sparse_work = sparse_gflop(irn.walk_transition(boundary), classes)

    # ---- dense, and label agreement at the dense size on every photo
    dense_pixels = np.prod(stride4_size(dense_height, dense_width))
    dense_times, same_fp32, same_fp64, total = [], 0, 0, 0
    for photo in photos:
        cam, boundary = walk_inputs(photo, dense_height, dense_width, device, torch.float32)
        seconds, dense = timed(random_walk_dense, cam, boundary, device)
        dense_times.append(seconds)
        labels = irn.rw_to_labels(dense, KEYS, (dense_height, dense_width))
        sparse_fp32 = irn.random_walk(cam, boundary)
        sparse_fp64 = irn.random_walk(cam.double(), boundary.double())
        same_fp32 += int((irn.rw_to_labels(sparse_fp32, KEYS, (dense_height, dense_width)) == labels).sum())
        same_fp64 += int((irn.rw_to_labels(sparse_fp64, KEYS, (dense_height, dense_width)) == labels).sum())
        total += labels.size
    dense_measured_s = min(dense_times)
    extrapolated = (dense_height, dense_width) != (height, width)
    dense_full_s = dense_measured_s * dense_gflop(pixels, classes) / dense_gflop(dense_pixels, classes)

    rows = [
        table_row(
            "sparse fp32: 256 CSR steps (`random_walk`)",
            args.size,
            sparse_s,
            sparse_work,
            f"measured, min of {args.repeats}",
        ),
        table_row(
            "dense fp32: reference (`random_walk_dense`)",
            (dense_height, dense_width),
            dense_measured_s,
            dense_gflop(dense_pixels, classes),
            f"measured, min of {len(photos)}",
        ),
    ]
    if extrapolated:
        rows.append(
            table_row(
                "dense fp32: reference",
                args.size,
                dense_full_s,
                dense_gflop(pixels, classes),
                f"extrapolated from {dense_width}×{dense_height} by FLOPs",
            )
        )
    table = (
        f"\n### random_walk — {device_name} — {datetime.date.today()}\n\n"
        f"SPEC-IRN §9 random walk, radius {irn.WALK_RADIUS}, β {irn.WALK_BETA}, T^{2**irn.WALK_EXP_TIMES}, "
        f"K = {classes} Gaussian CAM blobs; boundary = Sobel magnitude / max of scikit-image's "
        f"{', '.join(SAMPLE_PHOTOS)} at the stride-4 grid; torch {torch.__version__}\n\n"
        "| walk | image | grid h×w (hw) | s | GFLOP | how |\n|---|---|---|---|---|---|\n"
        + "".join(rows)
        + f"\nsparse speed-up over dense at {width}×{height}: {dense_full_s / sparse_s:,.0f}×"
        + (f" (dense extrapolated by FLOPs at its rate at {dense_width}×{dense_height})" if extrapolated else "")
        + f"\n\nlabels identical to the dense fp32 walk's ({len(photos)} photos at {dense_width}×{dense_height}, "
        f"{total:,} pixels after ×4 upsampling and argmax): sparse fp32 {100 * same_fp32 / total:.3f} %, "
        f"sparse fp64 {100 * same_fp64 / total:.3f} %\n\n"
        f"sparse walk at {MEMORY_SIZE[1]}×{MEMORY_SIZE[0]} "
        f"({'×'.join(map(str, stride4_size(*MEMORY_SIZE)))} grid): {memory_mib:.0f} MiB ({memory_kind}); "
        f"the dense form holds (hw)² fp32 = {np.prod(stride4_size(*MEMORY_SIZE)) ** 2 * 4 / 2**30:.1f} GiB per matrix\n"
    )
    publish(table)


if __name__ == "__main__":
    run_main(main)
