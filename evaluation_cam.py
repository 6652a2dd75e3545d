"""Evaluate CAMs (or label PNGs) against VOC ground truth: mIoU over a sweep of background
thresholds (SPEC §6).

    python evaluation_cam.py --list VOC2012/ImageSets/Segmentation/train.txt --predict_dir out_cam \\
        --gt_dir VOC2012/SegmentationClass --json eval.json --plot eval.png
    python evaluation_cam.py ... --t 0.32                  # one threshold
    python evaluation_cam.py ... --type png --predict_dir out_labels

Every file is read once: one pass gives the counts at all thresholds (tool/metrics.py), exactly
those of the reference's per-threshold argmax.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import numbers
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from tool.constants import NUM_FG_CLASSES, SWEEP_THRESHOLDS, VOC_CLASSES
from tool.fileio import UserError, atomic_path, load_npy_dict, read_label_png, run_main
from tool.metrics import (InvalidLabelsError, accumulate_counts, best_threshold_index, iou, label_counts,
                          miou_percent, threshold_sweep_counts)
from tool.runtime import default_num_workers
from voc12.data import load_image_list

PREDICTION_SUFFIX = {"npy": ".npy", "png": ".png"}
GT_SUFFIX = ".png"
MISSING_SHOWN = 5          # names quoted when files are missing; the rest are counted
CAM_FORMAT = "np.save of a dict {class index 0..19: H×W float map}, as infer_cam.py writes"


def parse_bool(text: str) -> bool:
    """The reference declares `--curve` with type=bool, so `--curve True` is how its users write it."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mIoU of CAMs (or label PNGs) against VOC ground truth (SPEC §6). With --type npy and "
                    "no --t, sweeps the background threshold over 0.20, 0.21, ..., 0.59 in one pass over "
                    "the files and reports the best; with --t, evaluates that threshold only.")
    parser.add_argument("--list", required=True, help="image list, one name per line (e.g. .../train.txt)")
    parser.add_argument("--predict_dir", default="out_cam", help="folder of <name>.npy CAM dicts or <name>.png labels")
    parser.add_argument("--gt_dir", required=True, help="VOC2012/SegmentationClass (palette PNGs, 255 ignored)")
    parser.add_argument("--logfile", default="./eval.txt",
                        help="text log the result is appended to, as the reference does ('' for none)")
    parser.add_argument("--comment", default="", help="written with the result to --logfile")
    parser.add_argument("--type", default="npy", choices=("npy", "png"),
                        help=f"npy: CAMs ({CAM_FORMAT}); png: label images of class indices (255 = no class)")
    parser.add_argument("--t", type=float, default=None,
                        help="evaluate this background threshold only (npy); without it the sweep runs")
    parser.add_argument("--curve", type=parse_bool, nargs="?", const=True, default=None, metavar="True|False",
                        help="the reference's switch, kept for its command lines: '--curve' or '--curve True' "
                             "asks for the sweep (the default without --t), '--curve False' for --t alone")
    parser.add_argument("--json", default=None, help="write thresholds, mIoU and per-class IoU at each, "
                                                     "and the best threshold to this JSON file")
    parser.add_argument("--plot", default=None, help="write a PNG of mIoU against the threshold, best marked")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="processes reading and counting files (default: the usable cores; 0 = none)")
    return parser.parse_args(argv)


def chosen_thresholds(args: argparse.Namespace) -> tuple[float, ...] | None:
    """The thresholds to evaluate: the sweep, --t alone, or None for label PNGs."""
    if args.type == "png":
        if args.t is not None or args.curve:
            raise UserError("--t and --curve choose background thresholds for CAMs; --type png predictions "
                            "are labels already, drop them")
        if args.plot:
            raise UserError("--plot draws mIoU against the background threshold; --type png has none, drop --plot")
        return None
    if args.t is not None and args.curve:
        raise UserError("--t evaluates one threshold and --curve the sweep; give one of them")
    if args.t is None and args.curve is False:
        raise UserError("--curve False needs --t T (the threshold to evaluate)")
    if args.t is None:
        return SWEEP_THRESHOLDS
    if not math.isfinite(args.t):
        raise UserError(f"--t {args.t} is not a number; give a background score such as 0.3")
    return (args.t,)


def check_files(names: list[str], folder: Path, suffix: str, what: str, hint: str) -> str | None:
    """None when every listed name has `<name><suffix>` in `folder`, else a one-line complaint."""
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}; {hint}")
    present = {entry.name for entry in os.scandir(folder)}
    missing = [name for name in names if name + suffix not in present]
    if not missing:
        return None
    shown = ", ".join(missing[:MISSING_SHOWN]) + (f" and {len(missing) - MISSING_SHOWN} more"
                                                  if len(missing) > MISSING_SHOWN else "")
    return f"{len(missing)} of {len(names)} listed images have no {what} {folder}/<name>{suffix}: {shown}"


def read_class_maps(path: Path) -> dict[int, np.ndarray]:
    """A CAM file in the reference format, as {fg class 0..19: float32 H×W}."""
    content = load_npy_dict(path, "CAM", f"expected {CAM_FORMAT} (label PNGs are evaluated with --type png)")
    class_maps = {}
    for key, values in content.items():
        values = np.asarray(values)
        if not (isinstance(key, numbers.Integral) and 0 <= key < NUM_FG_CLASSES):
            raise UserError(f"prediction {path} has key {key!r}; expected class indices 0..{NUM_FG_CLASSES - 1}")
        if values.ndim != 2 or values.dtype.kind not in "biuf":
            raise UserError(f"prediction {path}: class {key} is a {values.dtype} array of shape {values.shape}; "
                            "expected an H×W float map")
        class_maps[int(key)] = values
    shapes = {values.shape for values in class_maps.values()}
    if len(shapes) > 1:
        raise UserError(f"prediction {path} holds maps of different sizes {sorted(shapes)}; expected one H×W")
    return class_maps


def evaluate_image(name: str, predict_dir: Path, gt_dir: Path, prediction_type: str,
                   thresholds: tuple[float, ...] | None) -> np.ndarray:
    """Counts of one listed image: [len(thresholds), 21, 3] for CAMs, [1, 21, 3] for label PNGs."""
    prediction_path = predict_dir / f"{name}{PREDICTION_SUFFIX[prediction_type]}"
    gt_path = gt_dir / f"{name}{GT_SUFFIX}"
    ground_truth = read_label_png(gt_path)
    if prediction_type == "npy":
        prediction = read_class_maps(prediction_path)
        shape = next(iter(prediction.values())).shape if prediction else ground_truth.shape
    else:
        prediction = read_label_png(prediction_path)
        shape = prediction.shape
    if shape != ground_truth.shape:
        raise UserError(f"prediction {prediction_path} is {shape[0]}×{shape[1]} but its ground truth {gt_path} is "
                        f"{ground_truth.shape[0]}×{ground_truth.shape[1]}; they must be the same image's size")
    try:
        if prediction_type == "npy":
            return threshold_sweep_counts(prediction, ground_truth, thresholds)
        return label_counts(prediction, ground_truth)[None]
    except InvalidLabelsError as error:
        raise UserError(f"{name}: {error} (prediction {prediction_path}, ground truth {gt_path})") from None


def count_all(names: list[str], count_one: Callable[[str], np.ndarray], num_workers: int) -> np.ndarray:
    """Sum of `count_one(name)` over the list, in `num_workers` processes (0: this one)."""
    progress = functools.partial(tqdm, total=len(names), desc="evaluating", unit="img", dynamic_ncols=True)
    if num_workers == 0:
        return accumulate_counts(progress(map(count_one, names)))
    chunk_size = max(1, min(16, len(names) // (4 * num_workers)))
    with multiprocessing.Pool(num_workers) as pool:
        return accumulate_counts(progress(pool.imap_unordered(count_one, names, chunksize=chunk_size)))


def class_table(iou_by_class: dict[str, float]) -> str:
    """The reference's per-class printout: two classes a line, IoU in percent."""
    cells = [f"{class_name:>11s}:{value:7.3f}%" for class_name, value in iou_by_class.items()]
    return "\n".join("\t".join(cells[start:start + 2]) for start in range(0, len(cells), 2))


def summary(counts: np.ndarray, thresholds: tuple[float, ...] | None) -> dict:
    """What every output reports, in plain Python numbers."""
    mious = miou_percent(counts)
    best = best_threshold_index(mious)
    return {
        "classes": list(VOC_CLASSES),
        "thresholds": list(thresholds) if thresholds is not None else None,
        "miou": mious.tolist(),
        "iou": (iou(counts) * 100).tolist(),
        "best_threshold": thresholds[best] if thresholds is not None else None,
        "best_miou": float(mious[best]),
        "best_iou": dict(zip(VOC_CLASSES, (iou(counts[best]) * 100).tolist())),
    }


def log_record(result: dict) -> dict:
    """The reference's log dict: the mIoU list of a sweep, else per-class IoU and mIoU."""
    if result["thresholds"] is not None and len(result["thresholds"]) > 1:
        return {"mIoU": result["miou"], "best_t": result["best_threshold"], "best_mIoU": result["best_miou"]}
    record = dict(result["best_iou"])
    if result["thresholds"] is not None:
        record["t"] = result["best_threshold"]
    record["mIoU"] = result["best_miou"]
    return record


def append_log(path: Path, record: dict, comment: str) -> None:
    """Append in the reference's layout: time and comment, `key:value` pairs, a rule."""
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    entry = (time.strftime("%Y-%m-%d %H:%M:%S") + f"\t{comment}\n"
             + "".join(f"{key}:{value}  " for key, value in record.items()) + "\n"
             + "=====================================\n")
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(existing + entry, encoding="utf-8")


def write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def write_plot(path: Path, result: dict) -> None:
    """mIoU against the background threshold, the best one marked (matplotlib's Agg canvas, no pyplot)."""
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot(result["thresholds"], result["miou"], marker=".")
    axes.plot([result["best_threshold"]], [result["best_miou"]], marker="*", markersize=14, color="tab:red",
              linestyle="none", label=f"best: t = {result['best_threshold']:.2f}, mIoU {result['best_miou']:.2f}%")
    axes.set_xlabel("background threshold t")
    axes.set_ylabel("mIoU (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    thresholds = chosen_thresholds(args)
    num_workers = default_num_workers() if args.num_workers is None else args.num_workers
    if num_workers < 0:
        raise UserError(f"--num_workers {num_workers} is negative; use 0 to read in this process")
    names = load_image_list(args.list)
    predict_dir, gt_dir = Path(args.predict_dir), Path(args.gt_dir)
    complaints = [check_files(names, predict_dir, PREDICTION_SUFFIX[args.type], "prediction",
                              "pass --predict_dir with infer_cam.py's output"),
                  check_files(names, gt_dir, GT_SUFFIX, "ground truth", "pass --gt_dir VOC2012/SegmentationClass")]
    complaints = [complaint for complaint in complaints if complaint]
    if complaints:
        raise UserError("; ".join(complaints) + f"; fix --list {args.list} or the folders")

    count_one = functools.partial(evaluate_image, predict_dir=predict_dir, gt_dir=gt_dir,
                                  prediction_type=args.type, thresholds=thresholds)
    counts = count_all(names, count_one, num_workers)
    result = summary(counts, thresholds)

    if thresholds is not None and len(thresholds) > 1:
        for threshold, miou in zip(thresholds, result["miou"]):
            print(f"background score: {threshold:.3f}\tmIoU: {miou:.3f}%")
        print(f"per class at the best background score {result['best_threshold']:.3f}:")
    print(class_table(result["best_iou"]))
    print("======================================================")
    threshold_note = "" if thresholds is None else f" at background score {result['best_threshold']:.3f}"
    print(f"{'mIoU':>11s}:{result['best_miou']:7.3f}%{threshold_note} over {len(names)} images")

    if args.logfile:
        append_log(Path(args.logfile), log_record(result), args.comment)
    if args.json:
        write_json(Path(args.json), {"type": args.type, "list": str(args.list), "predict_dir": str(predict_dir),
                                     "gt_dir": str(gt_dir), "num_images": len(names), "comment": args.comment,
                                     **result})
    if args.plot:
        write_plot(Path(args.plot), result)
    return result


if __name__ == "__main__":
    run_main(main)
