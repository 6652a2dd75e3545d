"""Complementary patch pairs (SPEC §3) per second at 448×448, for both strategies, with the
superpixel strategy split into SLIC and masking, and the reference's per-pixel Python
masking loop timed on a few samples for comparison.

    python -m bench.complementary_patch
    python -m bench.complementary_patch --samples 10 --reference-samples 2

One torch thread, as in a DataLoader worker. The inputs are training crops
(`train_transform`) of the photographs bundled with scikit-image.
Prints one table and appends it, with the CPU name and the date, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import numpy as np
import torch

from bench.photos import SAMPLE_PHOTOS, sample_photos
from bench.results import cpu_name, publish
from tool import imutils
from tool.constants import CROP_SIZE


def training_crops(count: int) -> list[torch.Tensor]:
    """Training crops (3×448×448, normalised, `train_transform`) of scikit-image's bundled
    photographs: real images, so SLIC meets real boundaries and texture."""
    photos = sample_photos()
    torch.manual_seed(0)
    return [imutils.train_transform(photos[index % len(photos)]) for index in range(count)]


def reference_loop_masking(img: torch.Tensor, labels: np.ndarray, rng: np.random.Generator):
    """The reference's masking: a dict of drawn labels, then a Python loop over every
    pixel writing zeros into a torch mask one pixel at a time."""
    largest = int(labels.max())
    drawn = {int(label): 0 for label in rng.integers(0, largest + 1, (largest + 1) // 2)}
    mask = torch.ones(img.shape)
    hidden_count = kept_count = 0
    for row in range(img.shape[1]):
        for col in range(img.shape[2]):
            if labels[row, col] in drawn:
                mask[:, row, col] = 0
                hidden_count += 1
            else:
                kept_count += 1
    kept_fraction = kept_count / (kept_count + hidden_count)
    return img * mask, img * (1 - mask), kept_fraction, 1 - kept_fraction


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="timed superpixel pairs")
    parser.add_argument("--grid-samples", type=int, default=200, help="timed grid pairs")
    parser.add_argument("--reference-samples", type=int, default=3, help="timed reference-loop maskings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = training_crops(args.samples)
    rng = np.random.default_rng(0)

    slic_s, masking_s, pair_s, superpixel_counts = [], [], [], []
    for img in images:
        seconds, labels = timed(imutils.superpixel_labels, img.permute(1, 2, 0).numpy())
        slic_s.append(seconds)
        superpixel_counts.append(int(labels.max()))
        masking_s.append(
            timed(lambda img=img, labels=labels: imutils.split_by_mask(img, imutils.hide_superpixels(labels, rng)))[0]
        )
        pair_s.append(timed(imutils.complementary_patch, img, "superpixel", rng)[0])
    reference_s = []
    for img in images[: args.reference_samples]:
        labels = imutils.superpixel_labels(img.permute(1, 2, 0).numpy())
        reference_s.append(timed(reference_loop_masking, img, labels, rng)[0])
    grid_s = [
        timed(imutils.complementary_patch, images[index % len(images)], "grid", rng)[0]
        for index in range(args.grid_samples)
    ]

    rows = [
        ("superpixel: SLIC (`superpixel_labels`)", slic_s),
        ("superpixel: masking (`hide_superpixels` + `split_by_mask`)", masking_s),
        ("superpixel: whole pair (`complementary_patch`)", pair_s),
        ("superpixel: reference per-pixel loop masking", reference_s),
        ("grid: whole pair (`complementary_patch`)", grid_s),
    ]
    speedup = statistics.mean(reference_s) / statistics.mean(masking_s)
    table = (
        f"\n### complementary_patch — CPU ({cpu_name()}, 1 torch thread) — {datetime.date.today()}\n\n"
        f"{CROP_SIZE}×{CROP_SIZE} training crops of scikit-image's {', '.join(SAMPLE_PHOTOS)}; "
        "superpixels per image (M): "
        f"{min(superpixel_counts)}–{max(superpixel_counts)}, mean {statistics.mean(superpixel_counts):.0f}\n\n"
        "| step | samples | ms/sample (mean) | ms/sample (min) | samples/s |\n|---|---|---|---|---|\n"
    )
    table += "".join(
        f"| {label} | {len(times)} | {1e3 * statistics.mean(times):.2f} | {1e3 * min(times):.2f} | "
        f"{1 / statistics.mean(times):.1f} |\n"
        for label, times in rows
    )
    table += f"\nmasking speed-up over the reference loop: {speedup:.0f}×\n"
    publish(table)


if __name__ == "__main__":
    main()
