"""Evaluation speed: the one-pass threshold sweep of evaluation_cam.py against the reference's
per-threshold loop (every file re-read and re-argmaxed for each of the 40 thresholds), and
against plain file loading.

    python -m bench.eval_sweep                        # 1,464 VOC-train-sized synthetic CAMs
    python -m bench.eval_sweep --images 200 --naive_images 20

Synthetic predictions (~500×375 CAM dicts of 1–3 classes with VOC-like ground truth PNGs) are
generated once into --data_dir and reused. The naive loop runs on a subset of images and
thresholds and is extrapolated to the full sweep; its counts are checked against the fast
ones on that subset. Prints one table and appends it, with the CPU, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.results import RESULTS_PATH, cpu_name, publish
from evaluation_cam import count_all, evaluate_image, read_class_maps
from tool.constants import IGNORE_INDEX, NUM_CLASSES, SWEEP_THRESHOLDS, VOC_PALETTE, VOC_TRAIN_IMAGES
from tool.cores import usable_cores
from tool.fileio import read_label_png, save_npy, save_png
from tool.metrics import GROUND_TRUTH, PREDICTED, TRUE_POSITIVE, accumulate_counts

IMAGE_SIZES = ((375, 500), (500, 375), (333, 500), (500, 500))  # (H, W), VOC's most common
SIZE_WEIGHTS = (0.6, 0.25, 0.1, 0.05)
CLASSES_PER_IMAGE_WEIGHTS = (0.6, 0.3, 0.1)  # 1, 2 or 3 classes
OBJECT_LEVELS = (0.45, 0.8)  # ground truth object where its CAM exceeds a fraction of its peak drawn from here
BORDER = 2  # VOC's void band around objects, in pixels each side


def blob_map(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth CAM-like map in 0..1: a few separable Gaussians, shifted so the tails are exact zeros."""
    ys, xs = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    total = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(1, 4)):
        centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
        sigma_y, sigma_x = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        total += rng.uniform(0.5, 1.0) * np.outer(
            np.exp(-0.5 * ((ys - centre_y) / sigma_y) ** 2), np.exp(-0.5 * ((xs - centre_x) / sigma_x) ** 2)
        )
    total = np.maximum(total - 0.1 * total.max(), 0)
    return total / total.max()


def void_border(labels: np.ndarray) -> np.ndarray:
    """Pixels within BORDER of a label change."""
    band = np.zeros(labels.shape, bool)
    band[:-1] |= labels[:-1] != labels[1:]
    band[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    for _ in range(BORDER):
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def make_predictions(data_dir: Path, count: int, seed: int = 0) -> list[str]:
    """Write <data_dir>/cams/<name>.npy (reference CAM dicts, values 0..0.5 as SPEC §5 ends) and
    <data_dir>/gt/<name>.png once; later runs with the same count and seed reuse them."""
    stamp = data_dir / f"done-{count}-{seed}"
    names = [f"synthetic_{index:05d}" for index in range(count)]
    if stamp.is_file():
        return names
    rng = np.random.default_rng(seed)
    for name in names:
        height, width = IMAGE_SIZES[rng.choice(len(IMAGE_SIZES), p=SIZE_WEIGHTS)]
        num_classes = rng.choice(len(CLASSES_PER_IMAGE_WEIGHTS), p=CLASSES_PER_IMAGE_WEIGHTS) + 1
        classes = sorted(rng.choice(NUM_CLASSES - 1, size=num_classes, replace=False).tolist())
        cams = {fg_class: blob_map(rng, height, width) for fg_class in classes}
        strongest = np.argmax(np.stack(list(cams.values())), axis=0)
        object_mask = np.max(np.stack(list(cams.values())), axis=0) > rng.uniform(*OBJECT_LEVELS)
        labels = np.where(object_mask, np.asarray(classes)[strongest] + 1, 0).astype(np.uint8)
        labels[void_border(labels)] = IGNORE_INDEX
        ground_truth = Image.fromarray(labels, mode="P")
        ground_truth.putpalette(VOC_PALETTE.reshape(-1).tolist())
        save_npy(
            data_dir / "cams" / f"{name}.npy",
            {fg_class: (cam / 2).astype(np.float32) for fg_class, cam in cams.items()},
        )
        save_png(data_dir / "gt" / f"{name}.png", ground_truth)
    stamp.touch()
    return names


def load_only(data_dir: Path, names: list[str]) -> None:
    for name in names:
        read_class_maps(data_dir / "cams" / f"{name}.npy")
        read_label_png(data_dir / "gt" / f"{name}.png")


def reference_counts(data_dir: Path, name: str, threshold: float) -> np.ndarray:
    """One image at one threshold the reference's way (SPEC §6): read both files, stack, argmax,
    three masked sums per class."""
    class_maps = np.load(data_dir / "cams" / f"{name}.npy", allow_pickle=True).item()
    height, width = next(iter(class_maps.values())).shape
    stack = np.zeros((NUM_CLASSES, height, width), np.float32)
    for fg_class, values in class_maps.items():
        stack[fg_class + 1] = values
    stack[0] = threshold
    prediction = np.argmax(stack, axis=0).astype(np.uint8)
    ground_truth = np.array(Image.open(data_dir / "gt" / f"{name}.png"))
    counted = ground_truth < IGNORE_INDEX
    correct = (prediction == ground_truth) * counted
    counts = np.zeros((NUM_CLASSES, 3), np.int64)
    for class_index in range(NUM_CLASSES):
        counts[class_index, PREDICTED] = np.sum((prediction == class_index) * counted)
        counts[class_index, GROUND_TRUTH] = np.sum((ground_truth == class_index) * counted)
        counts[class_index, TRUE_POSITIVE] = np.sum((ground_truth == class_index) * correct)
    return counts


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(Path(tempfile.gettempdir()) / "cpn_eval_sweep_bench"))
    parser.add_argument("--images", type=int, default=VOC_TRAIN_IMAGES)
    parser.add_argument("--naive_images", type=int, default=50, help="images the naive loop is timed on")
    parser.add_argument("--naive_thresholds", type=int, default=3, help="thresholds the naive loop is timed on")
    parser.add_argument("--workers", type=int, default=2, help="also time the sweep with this many processes")
    parser.add_argument("--results", default=str(RESULTS_PATH), help="markdown file the table is appended to")
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    print(f"synthetic predictions in {data_dir} ...", flush=True)
    names = make_predictions(data_dir, args.images)
    num_thresholds = len(SWEEP_THRESHOLDS)
    count_one = functools.partial(
        evaluate_image,
        predict_dir=data_dir / "cams",
        gt_dir=data_dir / "gt",
        prediction_type="npy",
        thresholds=SWEEP_THRESHOLDS,
    )

    load_only(data_dir, names)  # warm the page cache
    load_time = min(seconds(lambda: load_only(data_dir, names)) for _ in range(2))
    fast_time = min(seconds(lambda: count_all(names, count_one, num_workers=0)) for _ in range(2))
    pooled_time = seconds(lambda: count_all(names, count_one, args.workers)) if args.workers > 1 else None

    naive_names = names[: args.naive_images]
    naive_picks = np.linspace(0, num_thresholds - 1, args.naive_thresholds).round().astype(int)
    naive_thresholds = [SWEEP_THRESHOLDS[index] for index in naive_picks]
    naive_start = time.perf_counter()
    naive_counts = {
        threshold: sum(reference_counts(data_dir, name, threshold) for name in naive_names)
        for threshold in naive_thresholds
    }
    naive_time = time.perf_counter() - naive_start
    fast_subset = accumulate_counts(map(count_one, naive_names))
    for index, threshold in zip(naive_picks, naive_thresholds):
        assert np.array_equal(fast_subset[index], naive_counts[threshold]), f"counts differ at t={threshold}"
    naive_full = naive_time / (len(naive_names) * len(naive_thresholds)) * len(names) * num_thresholds

    per_image = 1000 / len(names)
    rows = [
        ("load only (np.load + PNG decode)", load_time, ""),
        (f"fast sweep, {num_thresholds} thresholds, 1 process", fast_time, f"{fast_time / load_time:.2f}× load"),
    ]
    if pooled_time is not None:
        rows.append((f"fast sweep, {args.workers} processes", pooled_time, f"{pooled_time / load_time:.2f}× load"))
    rows.append(
        (
            f"naive per-threshold loop (extrapolated from {len(naive_names)} images × "
            f"{len(naive_thresholds)} thresholds)",
            naive_full,
            f"{naive_full / fast_time:.0f}× fast (1 process)",
        )
    )
    table = [f"| {len(names)} images, ~500×375 | total s | ms / image | ratio |", "|---|---:|---:|---|"]
    table += [f"| {label} | {total:.2f} | {total * per_image:.2f} | {ratio} |" for label, total, ratio in rows]
    table += [
        "",
        f"naive: the reference's loop in one process (per threshold and image: read both files, "
        f"21-channel argmax, 63 masked sums); its counts equal the fast ones at t = {naive_thresholds} "
        f"on {len(naive_names)} images.",
    ]
    text = "\n".join(table)

    header = (
        f"\n### eval_sweep — CPU ({cpu_name()}, {usable_cores()} cores usable, "
        f"files in the page cache) — {datetime.date.today()}\n\n"
    )
    publish(header + text + "\n", args.results)


if __name__ == "__main__":
    main()
