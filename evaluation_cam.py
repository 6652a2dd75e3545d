"""Evaluate CAMs (or label PNGs) against VOC or COCO ground truth: mIoU over a sweep of background
thresholds (SPEC §6).

    python evaluation_cam.py --list VOC2012/ImageSets/Segmentation/train.txt --predict_dir out_cam \\
        --gt_dir VOC2012/SegmentationClass --json eval.json --plot eval.png
    python evaluation_cam.py --dataset coco14 --list coco14/val.txt --predict_dir out_cam \\
        --gt_dir coco/SegmentationClass      # 81 classes, background scores 0.05 … 0.59
    python evaluation_cam.py ... --sweep 0.10 0.40 0.02    # another sweep
    python evaluation_cam.py ... --t 0.32                  # one threshold
    python evaluation_cam.py ... --type png --predict_dir out_labels
    python evaluation_cam.py ... --type png --predict_dir out_ir_label --prediction_void background   # IRN's rule

Every file is read once: one pass gives the counts at all thresholds (tool/metrics.py), exactly
those of the reference's per-threshold argmax. --dataset (engine/datasets.py) sets the classes,
their names and the default sweep; each file is counted in time that grows with its pixels and
the classes it holds, so COCO's 81 classes cost little more than VOC's 21.

Every output states the protocol, since most "lower than the paper" mIoUs come from it: the data
set, the list and its size, the ground-truth and prediction folders, the prediction type, and how
the background score was chosen (the sweep's best on these ground-truth labels, as the paper does,
over which range, or a fixed --t). Per class it reports IoU, precision and recall at that score,
and it warns on stderr about ground truth or lists the data set's published CAM figures were not
measured on. Numpy only: no torch import.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.cores import default_num_workers
from engine.datasets import (
    CAM_STAGE,
    DATASETS,
    SEGMENTATION_FOLDER,
    SEGMENTATION_STAGE,
    DatasetSpec,
    add_dataset_arguments,
    get_dataset,
    sweep_thresholds,
)
from engine.errors import UserError, and_more, run_main
from engine.fileio import atomic_path, load_npy_dict, read_label_png
from engine.manifest import InputManifest
from engine.parallel import map_unordered
from tool.metrics import (
    InvalidLabelsError,
    accumulate_counts,
    best_threshold_index,
    iou,
    label_counts,
    miou_percent,
    precision,
    recall,
    threshold_sweep_counts,
)
from voc12.lists import load_image_list

PREDICTION_SUFFIX = {"npy": ".npy", "png": ".png"}
GT_SUFFIX = ".png"
MISSING_SHOWN = 5  # names quoted when files are missing; the rest are counted
CLASS_COLUMN = 11  # console width of the class names; longer (COCO) names widen it
PREDICTION_KIND = {"npy": "npy CAMs", "png": "png labels"}
# How the reported background score was chosen (SPEC §6); the paper reports the sweep's best.
BEST_ON_GROUND_TRUTH = "best on these ground-truth labels (the paper's protocol)"
FIXED_THRESHOLD = "fixed --t"
NO_THRESHOLD = "none (png labels)"
# What a 255 in a png prediction counts as (tool.metrics.label_counts' void_label): no class, as
# CPN's reference evaluation counts it, or background, as IRN's eval_sem_seg does (SPEC-IRN §10).
PREDICTION_VOID = {"no_class": None, "background": 0}
SEGMENTATION_OUTPUT = "out_seg"  # infer_seg.py's label folder, as its manifest's "output" names it


def cam_format(spec: DatasetSpec) -> str:
    """What a CAM file of this data set holds, for error messages."""
    return f"np.save of a dict {{class index 0..{spec.num_fg_classes - 1}: H×W float map}}, as infer_cam.py writes"


def sweep_range(thresholds: tuple[float, ...]) -> dict:
    """A sweep's first and last threshold and its step (every sweep is evenly spaced)."""
    start, stop = thresholds[0], thresholds[-1]
    return {"start": start, "stop": stop, "step": round((stop - start) / (len(thresholds) - 1), 6)}


def sweep_text(thresholds: tuple[float, ...]) -> str:
    """A sweep as --sweep takes it: START STOP STEP."""
    return "{start:g} {stop:g} {step:g}".format(**sweep_range(thresholds))


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
        description="mIoU of CAMs (or label PNGs) against VOC or COCO ground truth (SPEC §6). With --type "
        "npy and no --t, sweeps the background threshold (over the data set's range, or --sweep's) in one "
        "pass over the files and reports the best; with --t, evaluates that threshold only."
    )
    add_dataset_arguments(parser, root=False)
    parser.add_argument("--list", required=True, help="image list, one name per line (e.g. .../train.txt)")
    parser.add_argument("--predict_dir", default="out_cam", help="folder of <name>.npy CAM dicts or <name>.png labels")
    parser.add_argument(
        "--gt_dir",
        required=True,
        help=f"the data set's {SEGMENTATION_FOLDER} folder: VOC2012/{SEGMENTATION_FOLDER}, or the one "
        f"coco14/make_cls_labels.py paints (palette PNGs of class indices, 255 ignored)",
    )
    parser.add_argument(
        "--logfile",
        default="./eval.txt",
        help="text log the result is appended to, as the reference does ('' for none)",
    )
    parser.add_argument("--comment", default="", help="written with the result to --logfile")
    parser.add_argument(
        "--type",
        default="npy",
        choices=("npy", "png"),
        help="npy: CAMs (np.save of a dict {foreground class index: H×W float map}, as infer_cam.py writes; "
        + ", ".join(f"{spec.name}: 0..{spec.num_fg_classes - 1}" for spec in DATASETS.values())
        + "); png: label images of class indices (for 255 see --prediction_void)",
    )
    parser.add_argument(
        "--prediction_void",
        choices=tuple(PREDICTION_VOID),
        default="no_class",
        help="what a 255 in a --type png prediction counts as: no_class (default, CPN's reference "
        "evaluation: the pixel is missed for its true class and predicts none) or background (IRN's "
        "eval_sem_seg, SPEC-IRN §10: for IRN's confident or pseudo labels)",
    )
    parser.add_argument(
        "--t", type=float, default=None, help="evaluate this background threshold only (npy); without it the sweep runs"
    )
    parser.add_argument(
        "--sweep",
        type=float,
        nargs=3,
        default=None,
        metavar=("START", "STOP", "STEP"),
        help="background scores the sweep tries: START, START+STEP, ..., STOP (default: the data set's, "
        + "; ".join(f"{spec.name}: {sweep_text(spec.sweep)}" for spec in DATASETS.values())
        + ")",
    )
    parser.add_argument(
        "--curve",
        type=parse_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="True|False",
        help="the reference's switch, kept for its command lines: '--curve' or '--curve True' "
        "asks for the sweep (the default without --t), '--curve False' for --t alone",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="write the protocol, any warnings, thresholds, mIoU and per-class IoU at each, the "
        "best threshold and per-class IoU, precision and recall at it to this JSON file",
    )
    parser.add_argument("--plot", default=None, help="write a PNG of mIoU against the threshold, best marked")
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="processes reading and counting files (default: the usable cores; 0 = none)",
    )
    return parser.parse_args(argv)


def chosen_thresholds(args: argparse.Namespace, spec: DatasetSpec) -> tuple[float, ...] | None:
    """The thresholds to evaluate: --sweep's or the data set's sweep, --t alone, or None for label PNGs."""
    if args.type == "png":
        if args.t is not None or args.curve or args.sweep is not None:
            raise UserError(
                "--t, --sweep and --curve choose background thresholds for CAMs; --type png predictions "
                "are labels already, drop them"
            )
        if args.plot:
            raise UserError("--plot draws mIoU against the background threshold; --type png has none, drop --plot")
        return None
    if args.prediction_void != "no_class":
        raise UserError("--prediction_void says what a 255 in a label PNG counts as; it needs --type png")
    if args.t is not None and args.curve:
        raise UserError("--t evaluates one threshold and --curve the sweep; give one of them")
    if args.t is not None and args.sweep is not None:
        raise UserError("--t evaluates one threshold and --sweep a range of them; give one of them")
    if args.t is None and args.curve is False:
        raise UserError("--curve False needs --t T (the threshold to evaluate)")
    if args.t is None and args.sweep is None:
        return spec.sweep
    if args.t is None:
        start, stop, step = args.sweep
        if not all(math.isfinite(value) for value in args.sweep):
            raise UserError(f"--sweep {start} {stop} {step}: give three numbers such as {sweep_text(spec.sweep)}")
        thresholds = sweep_thresholds(start, stop, step)
        if len(thresholds) == 1:
            raise UserError(f"--sweep {start} {stop} {step} holds one threshold; evaluate it with --t {thresholds[0]}")
        return thresholds
    if not math.isfinite(args.t):
        raise UserError(f"--t {args.t} is not a number; give a background score such as 0.3")
    return (args.t,)


def threshold_choice(thresholds: tuple[float, ...] | None) -> str:
    """How the reported background score is chosen: the sweep's best, --t, or none for label PNGs."""
    if thresholds is None:
        return NO_THRESHOLD
    return FIXED_THRESHOLD if len(thresholds) == 1 else BEST_ON_GROUND_TRUTH


def is_segmentation(predict_dir: Path) -> bool:
    """Whether the label PNGs are the segmentation network's (SPEC_SEG §4): infer_seg.py's --out_seg folder,
    by its manifest. Its score is the reference's do_python_eval, the same counts as the CAMs' (SPEC §6)."""
    manifest = InputManifest.read(predict_dir, "rewrite the predictions or remove the manifest", warn=False)
    return manifest is not None and manifest.settings.get("output") == SEGMENTATION_OUTPUT


def evaluation_protocol(args: argparse.Namespace, num_images: int, thresholds: tuple[float, ...] | None) -> dict:
    """What is scored against what, stated by every output: list, folders (absolute), prediction
    type, how the background score is chosen, for label PNGs what a 255 in them counts as, the
    data set, for a sweep its range, and for infer_seg.py's labels the segmentation stage."""
    protocol = {
        "list": os.path.abspath(args.list),
        "num_images": num_images,
        "gt_dir": os.path.abspath(args.gt_dir),
        "predict_dir": os.path.abspath(args.predict_dir),
        "type": args.type,
        "threshold_choice": threshold_choice(thresholds),
    }
    if args.type == "png":
        protocol["prediction_void"] = args.prediction_void
    protocol["dataset"] = args.dataset
    if thresholds is not None and len(thresholds) > 1:
        protocol["sweep"] = sweep_range(thresholds)
    if args.type == "png" and is_segmentation(Path(args.predict_dir)):
        protocol["stage"] = SEGMENTATION_STAGE
    return protocol


def protocol_warnings(protocol: dict) -> list[str]:
    """One line for each way this protocol departs from the data set's published figures of its stage
    (VOC, SPEC §6: CAMs on train, SPEC_SEG §4: segmentation on val, both against SegmentationClass; COCO: none)."""
    spec = get_dataset(protocol["dataset"])
    return spec.protocol_warnings(Path(protocol["gt_dir"]), protocol["num_images"], protocol.get("stage", CAM_STAGE))


def protocol_lines(protocol: dict) -> list[str]:
    """The protocol as the console states it, just above the mIoU line."""
    spec = get_dataset(protocol["dataset"])
    kind = PREDICTION_KIND[protocol["type"]]
    if "prediction_void" in protocol:
        kind += f", 255 counts as {protocol['prediction_void'].replace('_', ' ')}"
    lines = [
        f"dataset: {spec.name} ({spec.title}, {spec.num_classes} classes)",
        f"list: {protocol['list']} ({protocol['num_images']} images)",
        f"ground truth: {protocol['gt_dir']}",
        f"predictions: {protocol['predict_dir']} ({kind})",
        f"background score: {protocol['threshold_choice']}",
    ]
    if "sweep" in protocol:
        sweep = protocol["sweep"]
        lines.append(f"sweep: {sweep['start']:g} to {sweep['stop']:g} in steps of {sweep['step']:g}")
    if "stage" in protocol:
        split, ground_truth = Path(protocol["list"]).stem, Path(protocol["gt_dir"]).name
        lines.append(f"stage: {protocol['stage']} (infer_seg.py's labels), {spec.title} {split}, {ground_truth}")
    return lines


def check_files(names: list[str], folder: Path, suffix: str, what: str, hint: str) -> str | None:
    """None when every listed name has `<name><suffix>` in `folder`, else a one-line complaint."""
    if not folder.is_dir():
        raise UserError(f"{what} folder not found: {folder}; {hint}")
    present = {entry.name for entry in os.scandir(folder)}
    missing = [name for name in names if name + suffix not in present]
    if not missing:
        return None
    return (
        f"{len(missing)} of {len(names)} listed images have no {what} {folder}/<name>{suffix}: "
        f"{and_more(missing, MISSING_SHOWN)}"
    )


def read_class_maps(path: Path, spec: DatasetSpec) -> dict[int, np.ndarray]:
    """A CAM file in the reference format, as {fg class 0..num_fg_classes-1: float32 H×W}."""
    content = load_npy_dict(path, "CAM", f"expected {cam_format(spec)} (label PNGs are evaluated with --type png)")
    class_maps = {}
    for key, values in content.items():
        values = np.asarray(values)
        if not (isinstance(key, numbers.Integral) and 0 <= key < spec.num_fg_classes):
            raise UserError(
                f"prediction {path} has key {key!r}; expected class indices 0..{spec.num_fg_classes - 1} "
                f"(--dataset {spec.name})"
            )
        if values.ndim != 2 or values.dtype.kind not in "biuf":
            raise UserError(
                f"prediction {path}: class {key} is a {values.dtype} array of shape {values.shape}; "
                "expected an H×W float map"
            )
        class_maps[int(key)] = values
    shapes = {values.shape for values in class_maps.values()}
    if len(shapes) > 1:
        raise UserError(f"prediction {path} holds maps of different sizes {sorted(shapes)}; expected one H×W")
    return class_maps


def evaluate_image(
    name: str,
    predict_dir: Path,
    gt_dir: Path,
    prediction_type: str,
    thresholds: tuple[float, ...] | None,
    *,
    dataset: str,
    void_label: int | None = None,
) -> np.ndarray:
    """Counts of one listed image: [len(thresholds), num_classes, 3] for CAMs, [1, num_classes, 3]
    for label PNGs (a 255 in them counted as class `void_label`, None: as no class). `dataset` is
    the --dataset name."""
    spec = get_dataset(dataset)
    prediction_path = predict_dir / f"{name}{PREDICTION_SUFFIX[prediction_type]}"
    gt_path = gt_dir / f"{name}{GT_SUFFIX}"
    ground_truth = read_label_png(gt_path)
    if prediction_type == "npy":
        prediction = read_class_maps(prediction_path, spec)
        shape = next(iter(prediction.values())).shape if prediction else ground_truth.shape
    else:
        prediction = read_label_png(prediction_path)
        shape = prediction.shape
    if shape != ground_truth.shape:
        raise UserError(
            f"prediction {prediction_path} is {shape[0]}×{shape[1]} but its ground truth {gt_path} is "
            f"{ground_truth.shape[0]}×{ground_truth.shape[1]}; they must be the same image's size"
        )
    try:
        if prediction_type == "npy":
            return threshold_sweep_counts(prediction, ground_truth, thresholds, num_classes=spec.num_classes)
        return label_counts(prediction, ground_truth, num_classes=spec.num_classes, void_label=void_label)[None]
    except InvalidLabelsError as error:
        raise UserError(
            f"{name}: {error} (--dataset {spec.name}; prediction {prediction_path}, ground truth {gt_path})"
        ) from None


def count_batch(names: list[str], count_one: Callable[[str], np.ndarray]) -> tuple[np.ndarray, int]:
    """The summed counts of a few images, and how many they are."""
    return accumulate_counts(map(count_one, names)), len(names)


def ticked(progress: tqdm, batches: Iterable[tuple[np.ndarray, int]]) -> Iterator[np.ndarray]:
    """Each batch's counts, the progress bar advanced by its images."""
    for counts, size in batches:
        progress.update(size)
        yield counts


def count_all(names: list[str], count_one: Callable[[str], np.ndarray], num_workers: int) -> np.ndarray:
    """Sum of `count_one(name)` over the list, in `num_workers` processes (0: this one). A worker
    sums a batch of images before sending it back: one image's counts are [thresholds, classes,
    3] int64 (107 KB for COCO's sweep), and their transfer alone would keep the main process as
    busy as a worker at 16 workers."""
    batch_size = 1 if num_workers == 0 else max(1, min(16, len(names) // (4 * num_workers)))
    batches = [names[start : start + batch_size] for start in range(0, len(names), batch_size)]
    count_batches = functools.partial(count_batch, count_one=count_one)
    with tqdm(total=len(names), desc="evaluating", unit="img", dynamic_ncols=True) as progress:
        return accumulate_counts(ticked(progress, map_unordered(count_batches, batches, num_workers)))


def percent_or_none(fraction: float) -> float | None:
    """A 0..1 score in percent; None (JSON null) for NaN, an undefined precision or recall."""
    return None if math.isnan(fraction) else float(fraction * 100)


def per_class_scores(counts: np.ndarray, class_names: tuple[str, ...]) -> list[dict]:
    """{name, iou, precision, recall} of each class in percent, from one [num_classes, 3] counts array."""
    return [
        {
            "name": name,
            "iou": float(class_iou * 100),
            "precision": percent_or_none(class_precision),
            "recall": percent_or_none(class_recall),
        }
        for name, class_iou, class_precision, class_recall in zip(
            class_names, iou(counts), precision(counts), recall(counts)
        )
    ]


def percent_cell(value: float | None) -> str:
    return f"{'n/a':>11s}" if value is None else f"{value:10.3f}%"


def class_table(per_class: list[dict]) -> str:
    """One class a line: IoU, precision and recall in percent ("n/a" where undefined)."""
    width = max(CLASS_COLUMN, *(len(scores["name"]) for scores in per_class))
    rows = [f"{'class':>{width}s}{'IoU':>11s}{'precision':>11s}{'recall':>11s}"]
    rows += [
        f"{scores['name']:>{width}s}" + "".join(percent_cell(scores[key]) for key in ("iou", "precision", "recall"))
        for scores in per_class
    ]
    return "\n".join(rows)


def summary(counts: np.ndarray, thresholds: tuple[float, ...] | None, class_names: tuple[str, ...]) -> dict:
    """What every output reports, in plain Python numbers."""
    mious = miou_percent(counts)
    best = best_threshold_index(mious)
    return {
        "classes": list(class_names),
        "thresholds": list(thresholds) if thresholds is not None else None,
        "miou": mious.tolist(),
        "iou": (iou(counts) * 100).tolist(),
        "best_threshold": thresholds[best] if thresholds is not None else None,
        "best_miou": float(mious[best]),
        "per_class": per_class_scores(counts[best], class_names),
    }


def log_record(result: dict) -> dict:
    """The reference's log dict (the mIoU list of a sweep, else per-class IoU and mIoU), then the
    protocol's fields: added after the reference's, so its readers still parse the line."""
    if result["thresholds"] is not None and len(result["thresholds"]) > 1:
        record = {"mIoU": result["miou"], "best_t": result["best_threshold"], "best_mIoU": result["best_miou"]}
    else:
        record = {scores["name"]: scores["iou"] for scores in result["per_class"]}
        if result["thresholds"] is not None:
            record["t"] = result["best_threshold"]
        record["mIoU"] = result["best_miou"]
    return {**record, **result["protocol"]}


def append_log(path: Path, record: dict, comment: str) -> None:
    """Append in the reference's layout: time and comment, `key:value` pairs, a rule."""
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    entry = (
        time.strftime("%Y-%m-%d %H:%M:%S")
        + f"\t{comment}\n"
        + "".join(f"{key}:{value}  " for key, value in record.items())
        + "\n"
        + "=====================================\n"
    )
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(existing + entry, encoding="utf-8")


def write_json(path: Path, result: dict) -> None:
    with atomic_path(path) as tmp_path:
        tmp_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def write_plot(path: Path, result: dict) -> None:
    """mIoU against the background threshold, the best one marked (matplotlib's Agg canvas, no pyplot;
    imported here so that runs without --plot never load it)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    axes.plot(result["thresholds"], result["miou"], marker=".")
    axes.plot(
        [result["best_threshold"]],
        [result["best_miou"]],
        marker="*",
        markersize=14,
        color="tab:red",
        linestyle="none",
        label=f"best: t = {result['best_threshold']:.2f}, mIoU {result['best_miou']:.2f}%",
    )
    axes.set_xlabel("background threshold t")
    axes.set_ylabel("mIoU (%)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    spec = get_dataset(args.dataset)
    thresholds = chosen_thresholds(args, spec)
    num_workers = default_num_workers() if args.num_workers is None else args.num_workers
    if num_workers < 0:
        raise UserError(f"--num_workers {num_workers} is negative; use 0 to read in this process")
    names = load_image_list(args.list)
    protocol = evaluation_protocol(args, len(names), thresholds)
    predict_dir, gt_dir = Path(args.predict_dir), Path(args.gt_dir)
    complaints = [
        check_files(
            names,
            predict_dir,
            PREDICTION_SUFFIX[args.type],
            "prediction",
            "pass --predict_dir with infer_cam.py's output",
        ),
        check_files(
            names, gt_dir, GT_SUFFIX, "ground truth", f"pass --gt_dir {spec.title}'s {SEGMENTATION_FOLDER} folder"
        ),
    ]
    complaints = [complaint for complaint in complaints if complaint]
    if complaints:
        raise UserError("; ".join(complaints) + f"; fix --list {args.list} or the folders")

    count_one = functools.partial(
        evaluate_image,
        predict_dir=predict_dir,
        gt_dir=gt_dir,
        prediction_type=args.type,
        thresholds=thresholds,
        dataset=spec.name,
        void_label=PREDICTION_VOID[args.prediction_void],
    )
    counts = count_all(names, count_one, num_workers)
    result = {
        "protocol": protocol,
        "warnings": protocol_warnings(protocol),
        **summary(counts, thresholds, spec.class_names),
    }

    if thresholds is not None and len(thresholds) > 1:
        for threshold, miou in zip(thresholds, result["miou"]):
            print(f"background score: {threshold:.3f}\tmIoU: {miou:.3f}%")
        print(f"per class at the best background score {result['best_threshold']:.3f}:")
    print(class_table(result["per_class"]))
    print("======================================================")
    print("\n".join(protocol_lines(protocol)))
    threshold_note = "" if thresholds is None else f" at background score {result['best_threshold']:.3f}"
    print(f"{'mIoU':>11s}:{result['best_miou']:7.3f}%{threshold_note} over {len(names)} images", flush=True)
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)

    if args.logfile:
        append_log(Path(args.logfile), log_record(result), args.comment)
    if args.json:
        write_json(Path(args.json), {"comment": args.comment, **result})
    if args.plot:
        write_plot(Path(args.plot), result)
    return result


if __name__ == "__main__":
    run_main(main)
