"""Evaluation speed: the one-pass threshold sweep of evaluation_cam.py against plain file reading
(one process and a pool over every usable core) and against the reference's per-threshold loop
(every file re-read and re-argmaxed for each threshold).

    python -m bench.eval_sweep                        # 1,464 VOC-train-sized synthetic CAMs
    python -m bench.eval_sweep --images 200 --naive_images 20
    python -m bench.eval_sweep --dataset coco14       # 400 COCO-like images, 81 classes, 640×480

Synthetic predictions (CAM dicts of a few classes with ground truth PNGs: VOC ~500×375 with 1–3
classes, COCO 640×480 with 1–5, about 3) are generated once into --data_dir and reused. The pooled
rows use the same processes and chunks for reading alone and for the sweep, whose goal is at most
2× the reading time; the full list (VOC train's 1,464 images, COCO val2014's 40,504) is
extrapolated from them. The naive loop runs on a subset of images and thresholds and is
extrapolated to the full sweep; its counts are checked against the fast ones on that subset.
Prints one table and appends it, with the CPU, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.results import cpu_name, publish, results_path
from engine.cores import usable_cores
from engine.datasets import COCO14, IGNORE_INDEX, PALETTE, VOC12, VOC_TRAIN_IMAGES, DatasetSpec, get_dataset
from engine.fileio import read_label_png, save_npy, save_png
from engine.parallel import map_unordered
from evaluation_cam import count_all, evaluate_image, read_class_maps
from tool.metrics import GROUND_TRUTH, PREDICTED, TRUE_POSITIVE, accumulate_counts

COCO_VAL_IMAGES = 40504  # val2014: the list a COCO CAM evaluation reads


@dataclass(frozen=True)
class SyntheticSet:
    """How the synthetic predictions of one data set look, and the real list they stand in for."""

    image_sizes: tuple[tuple[int, int], ...]  # (H, W)
    size_weights: tuple[float, ...]
    classes_per_image_weights: tuple[float, ...]  # 1, 2, … classes
    default_images: int
    full_list: int  # images of the list the timing is extrapolated to
    full_list_name: str


SYNTHETIC = {
    # VOC's most common sizes; 1–3 classes
    VOC12.name: SyntheticSet(
        ((375, 500), (500, 375), (333, 500), (500, 500)),
        (0.6, 0.25, 0.1, 0.05),
        (0.6, 0.3, 0.1),
        VOC_TRAIN_IMAGES,
        VOC_TRAIN_IMAGES,
        "VOC train",
    ),
    # COCO's usual 640×480; 1–5 classes, 2.95 on average (COCO: 2.9 categories per image)
    COCO14.name: SyntheticSet(((480, 640),), (1.0,), (0.15, 0.2, 0.3, 0.2, 0.15), 400, COCO_VAL_IMAGES, "COCO val2014"),
}
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


def make_predictions(data_dir: Path, spec: DatasetSpec, count: int, seed: int = 0) -> list[str]:
    """Write <data_dir>/cams/<name>.npy (reference CAM dicts, values 0..0.5 as SPEC §5 ends) and
    <data_dir>/gt/<name>.png once; later runs with the same data set, count and seed reuse them."""
    synthetic = SYNTHETIC[spec.name]
    stamp = data_dir / f"done-{spec.name}-{count}-{seed}"
    names = [f"synthetic_{index:05d}" for index in range(count)]
    if stamp.is_file():
        return names
    rng = np.random.default_rng(seed)
    for name in names:
        height, width = synthetic.image_sizes[rng.choice(len(synthetic.image_sizes), p=synthetic.size_weights)]
        weights = synthetic.classes_per_image_weights
        num_classes = rng.choice(len(weights), p=weights) + 1
        classes = sorted(rng.choice(spec.num_fg_classes, size=num_classes, replace=False).tolist())
        cams = {fg_class: blob_map(rng, height, width) for fg_class in classes}
        strongest = np.argmax(np.stack(list(cams.values())), axis=0)
        object_mask = np.max(np.stack(list(cams.values())), axis=0) > rng.uniform(*OBJECT_LEVELS)
        labels = np.where(object_mask, np.asarray(classes)[strongest] + 1, 0).astype(np.uint8)
        labels[void_border(labels)] = IGNORE_INDEX
        ground_truth = Image.fromarray(labels, mode="P")
        ground_truth.putpalette(PALETTE.reshape(-1).tolist())
        save_npy(
            data_dir / "cams" / f"{name}.npy",
            {fg_class: (cam / 2).astype(np.float32) for fg_class, cam in cams.items()},
        )
        save_png(data_dir / "gt" / f"{name}.png", ground_truth)
    stamp.touch()
    return names


def read_image(name: str, data_dir: Path, dataset: str) -> None:
    """What evaluate_image reads of one image, and nothing else: np.load of the CAM dict and its
    checks, the PNG decode."""
    read_class_maps(data_dir / "cams" / f"{name}.npy", get_dataset(dataset))
    read_label_png(data_dir / "gt" / f"{name}.png")


def read_all(names: list[str], read_one: Callable[[str], None], num_workers: int) -> None:
    """read_one over the list as count_all runs count_one: in this process (0), or a pool of
    num_workers processes taking up to 16 images at a time (count_all's batches)."""
    for _ in map_unordered(read_one, names, num_workers, max_chunk=16):
        pass


def reference_counts(data_dir: Path, name: str, threshold: float, num_classes: int) -> np.ndarray:
    """One image at one threshold the reference's way (SPEC §6): read both files, stack, argmax,
    three masked sums per class."""
    class_maps = np.load(data_dir / "cams" / f"{name}.npy", allow_pickle=True).item()
    height, width = next(iter(class_maps.values())).shape
    stack = np.zeros((num_classes, height, width), np.float32)
    for fg_class, values in class_maps.items():
        stack[fg_class + 1] = values
    stack[0] = threshold
    prediction = np.argmax(stack, axis=0).astype(np.uint8)
    ground_truth = np.array(Image.open(data_dir / "gt" / f"{name}.png"))
    counted = ground_truth < IGNORE_INDEX
    correct = (prediction == ground_truth) * counted
    counts = np.zeros((num_classes, 3), np.int64)
    for class_index in range(num_classes):
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
    parser.add_argument("--dataset", choices=tuple(SYNTHETIC), default=VOC12.name, help="default: voc12")
    parser.add_argument("--data_dir", default=None, help="default: <tmp>/cpn_eval_sweep_bench[_coco14]")
    parser.add_argument("--images", type=int, default=None, help="default: 1,464 (voc12), 400 (coco14)")
    parser.add_argument("--naive_images", type=int, default=None, help="images the naive loop is timed on (50, 10)")
    parser.add_argument("--naive_thresholds", type=int, default=3, help="thresholds the naive loop is timed on")
    parser.add_argument("--workers", type=int, default=usable_cores(), help="pool processes (default: usable cores)")
    parser.add_argument("--results", default=str(results_path()), help="markdown file the table is appended to")
    args = parser.parse_args()

    spec, synthetic = get_dataset(args.dataset), SYNTHETIC[args.dataset]
    suffix = "" if spec is VOC12 else f"_{spec.name}"
    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"cpn_eval_sweep_bench{suffix}")
    num_images = args.images or synthetic.default_images
    naive_images = args.naive_images or (50 if spec is VOC12 else 10)
    print(f"synthetic predictions in {data_dir} ...", flush=True)
    names = make_predictions(data_dir, spec, num_images)
    thresholds = spec.sweep
    count_one = functools.partial(
        evaluate_image,
        predict_dir=data_dir / "cams",
        gt_dir=data_dir / "gt",
        prediction_type="npy",
        thresholds=thresholds,
        dataset=spec.name,
    )
    read_one = functools.partial(read_image, data_dir=data_dir, dataset=spec.name)

    read_all(names, read_one, 0)  # warm the page cache
    load_time = min(seconds(lambda: read_all(names, read_one, 0)) for _ in range(2))
    fast_time = min(seconds(lambda: count_all(names, count_one, num_workers=0)) for _ in range(2))
    pooled_load_time = pooled_time = None
    if args.workers > 1:
        pooled_load_time = min(seconds(lambda: read_all(names, read_one, args.workers)) for _ in range(2))
        pooled_time = min(seconds(lambda: count_all(names, count_one, args.workers)) for _ in range(2))

    naive_names = names[:naive_images]
    naive_picks = np.linspace(0, len(thresholds) - 1, args.naive_thresholds).round().astype(int)
    naive_thresholds = [thresholds[index] for index in naive_picks]
    naive_start = time.perf_counter()
    naive_counts = {
        threshold: sum(reference_counts(data_dir, name, threshold, spec.num_classes) for name in naive_names)
        for threshold in naive_thresholds
    }
    naive_time = time.perf_counter() - naive_start
    fast_subset = accumulate_counts(map(count_one, naive_names))
    for index, threshold in zip(naive_picks, naive_thresholds):
        assert np.array_equal(fast_subset[index], naive_counts[threshold]), f"counts differ at t={threshold}"
    naive_full = naive_time / (len(naive_names) * len(naive_thresholds)) * len(names) * len(thresholds)

    per_image = 1000 / len(names)
    rows = [
        ("read only (np.load + PNG decode), 1 process", load_time, ""),
        (f"sweep, {len(thresholds)} thresholds, 1 process", fast_time, f"{fast_time / load_time:.2f}× read"),
    ]
    if pooled_time is not None:
        rows += [
            (f"read only, {args.workers} processes", pooled_load_time, ""),
            (
                f"sweep, {args.workers} processes",
                pooled_time,
                f"{pooled_time / pooled_load_time:.2f}× read ({args.workers} processes)",
            ),
        ]
    rows.append(
        (
            f"naive per-threshold loop (extrapolated from {len(naive_names)} images × "
            f"{len(naive_thresholds)} thresholds)",
            naive_full,
            f"{naive_full / fast_time:.0f}× sweep (1 process)",
        )
    )
    sizes = ", ".join(f"{width}×{height}" for height, width in synthetic.image_sizes[:1])
    table = [
        f"| {spec.name}: {len(names)} images, ~{sizes}, {spec.num_classes} classes | total s | ms / image | ratio |",
        "|---|---:|---:|---|",
    ]
    table += [f"| {label} | {total:.2f} | {total * per_image:.2f} | {ratio} |" for label, total, ratio in rows]
    workers, sweep_time, read_time = (
        (args.workers, pooled_time, pooled_load_time) if pooled_time is not None else (1, fast_time, load_time)
    )
    full = synthetic.full_list / len(names)
    table += [
        "",
        f"{synthetic.full_list_name} ({synthetic.full_list:,} images) at this rate with {workers} process(es): "
        f"sweep {sweep_time * full:.0f} s, reading alone {read_time * full:.0f} s "
        f"(sweep / read {sweep_time / read_time:.2f}×, goal ≤ 2×).",
        f"naive: the reference's loop in one process (per threshold and image: read both files, "
        f"{spec.num_classes}-channel argmax, {3 * spec.num_classes} masked sums); its counts equal the fast ones "
        f"at t = {naive_thresholds} on {len(naive_names)} images.",
    ]
    text = "\n".join(table)

    header = (
        f"\n### eval_sweep — CPU ({cpu_name()}, {usable_cores()} cores usable, "
        f"files in the page cache) — {datetime.date.today()}\n\n"
    )
    publish(header + text + "\n", args.results)


if __name__ == "__main__":
    main()
