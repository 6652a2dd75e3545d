"""Confident labels for IRNet from IRN-format CAMs (SPEC-IRN §8, IRN's step cam_to_ir_label).

    python cam_to_ir_label.py --voc12_root VOC2012 --train_list voc12/train_aug.txt \\
        --cam_out_dir out_cam_irn --ir_label_out_dir out_ir_label
    torchrun --nproc_per_node=N cam_to_ir_label.py ...   (each process takes every N-th image)

Reads <name>.npy of `infer_cam.py --out_cam_irn` (or IRN's own make_cam), writes <name>.png: a
single-channel uint8 label image, 0 background, 1..F the classes (20 VOC, 80 COCO), 255 not confident.
Per image two
dense CRFs (tool/crf.py, IRN's crf_inference_label) at --conf_fg_thres and --conf_bg_thres, combined by
tool/ir_label.py. CPU work: --num_workers processes share the images. Images whose PNG exists are
skipped, so an interrupted run resumes. The folder gets a manifest.json (engine/manifest.py) naming the
CAMs' weights and settings (from the CAM folder's own manifest, when it has one) and the two
thresholds: a run with other ones stops before any work, unless --overwrite.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from engine.cores import default_num_workers
from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, and_more, run_main
from engine.fileio import read_rgb, save_png
from engine.manifest import MANIFEST_NAME, FolderManifest, git_commit
from engine.outputs import OutputFormat, Outputs, add_overwrite_argument
from engine.parallel import map_unordered
from engine.runtime import ProcessGroup
from tool.cam import IRN_CAM_HINT, read_irn_cam
from tool.crf import crf_inference_labels, require_pydensecrf
from tool.ir_label import CONF_BG_THRES, CONF_FG_THRES, confident_labels
from voc12.data import image_paths, load_labelled_list

CAM_SUFFIX = ".npy"
UNKNOWN_CHECKSUM = "unknown"  # a CAM folder without manifest (IRN's own make_cam): its weights are unknown


# --- One image ------------------------------------------------------------------------------


def read_image_and_cam(name: str, cls_label: np.ndarray, source: DataSource, cam_dir: Path):
    """The image (uint8 H×W×3) and its CAM's (keys, high_res), of the same size."""
    image_path = source.image_path(name)
    cam_path = cam_dir / f"{name}{CAM_SUFFIX}"
    keys, high_res = read_irn_cam(cam_path, "high_res", cls_label, "--cls_labels", source.spec.class_names)
    image = np.asarray(read_rgb(image_path))
    if image.shape[:2] != high_res.shape[1:]:
        raise UserError(
            f"image {image_path} is {image.shape[0]}×{image.shape[1]} but its CAM {cam_path} is "
            f"{high_res.shape[1]}×{high_res.shape[2]}: the CAMs were made from other images; "
            "pass the --data_root (--voc12_root) they were made from"
        )
    return image, keys, high_res


def write_ir_label(result: tuple[str, np.ndarray], folder) -> None:
    name, labels = result
    save_png(folder.file(name), Image.fromarray(labels, mode="L"))


OUTPUT = OutputFormat(
    "ir_label_out_dir",
    ".png",
    write_ir_label,
    help="confident labels: <name>.png, single-channel uint8, 0 background, 1..F classes, 255 unsure",
    setting_flags=("conf_fg_thres", "conf_bg_thres"),
)


def label_one(
    item: tuple[str, np.ndarray], source: DataSource, cam_dir: Path, outputs: Outputs, fg_thres: float, bg_thres: float
) -> str:
    """SPEC-IRN §8 for one (name, class label): read, two CRFs, write. Runs in a pool process."""
    name, cls_label = item
    image, keys, high_res = read_image_and_cam(name, cls_label, source, cam_dir)
    labels = confident_labels(image, high_res, keys, crf_inference_labels, fg_thres, bg_thres)
    outputs.write((name, labels))
    return name


# --- Script ---------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # IRN's flags and defaults (its --train_list default is voc12/train_aug.txt: IRNet trains on train_aug).
    add_dataset_arguments(parser)  # --dataset, --data_root and IRN's --voc12_root
    parser.add_argument(
        "--train_list",
        help="images to label: IRNet trains on train_aug, so its CAMs are needed for train_aug; "
        + list_default_help("train"),
    )
    parser.add_argument("--cam_out_dir", required=True, help="IRN-format CAMs: infer_cam.py --out_cam_irn's folder")
    parser.add_argument(f"--{OUTPUT.flag}", required=True, metavar="DIR", help=OUTPUT.help)
    parser.add_argument(
        "--conf_fg_thres",
        type=float,
        default=CONF_FG_THRES,
        help="CAM score above which a pixel is confident foreground (default %(default)s, IRN's, on its CAMs' 0..1)",
    )
    parser.add_argument(
        "--conf_bg_thres",
        type=float,
        default=CONF_BG_THRES,
        help="CAM score below which a pixel is confident background (default %(default)s, IRN's)",
    )
    parser.add_argument(
        "--num_workers", type=int, default=None, help="processes running the CRFs (default: the usable cores; 0: none)"
    )
    # Ours.
    parser.add_argument("--cls_labels", help=list_default_help("cls_labels"))
    parser.add_argument("--device", default=None, help="accepted as by every stage; this one runs on the CPU")
    add_overwrite_argument(parser)
    return fill_list_defaults(parser.parse_args(argv), here, train_list="train", cls_labels="cls_labels")


def cam_source(cam_dir: Path) -> tuple[str, str, dict | None]:
    """(weights path, its sha256, the CAM settings) from the CAM folder's manifest; without one (IRN's
    own make_cam), the folder itself and an unknown checksum."""
    try:
        content = json.loads((cam_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        return content["weights"], content["weights_sha256"], content["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return str(cam_dir), UNKNOWN_CHECKSUM, None


def check_inputs(names: list[str], source: DataSource, cam_dir: Path, args: argparse.Namespace) -> None:
    """Every image and CAM file of `names` exists (listed, a few at a time, when not)."""
    if not cam_dir.is_dir():
        raise UserError(f"CAM folder not found: {cam_dir}; {IRN_CAM_HINT}")
    present = {entry.name for entry in os.scandir(cam_dir)}
    missing = [name for name in names if name + CAM_SUFFIX not in present]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(names)} images of {args.train_list} have no CAM file in {cam_dir}: "
            f"{and_more(missing, 3)}; run infer_cam.py --out_cam_irn {cam_dir} on this list"
        )
    image_paths(source, names)


def main(argv=None) -> None:
    args = parse_args(argv)
    # ---- checks: everything a user can get wrong fails here, before any work ----
    outputs = Outputs.from_args((OUTPUT,), args)
    outputs.check()
    group = ProcessGroup.from_env()
    source, cam_dir = data_source(args), Path(args.cam_out_dir)
    num_workers = args.num_workers
    if num_workers is None:  # the cores, shared by this node's torchrun processes
        num_workers = default_num_workers()
    if num_workers < 0:
        raise UserError(f"--num_workers {num_workers} is negative; use 0 to run in this process")
    require_pydensecrf()
    all_names, cls_labels = load_labelled_list(args.train_list, args.cls_labels, source.spec)
    weights, checksum, cam_settings = cam_source(cam_dir)
    settings = {
        "output": OUTPUT.flag,
        "dataset": source.spec.name,
        "cam_settings": cam_settings,
        **outputs.folders[0].settings,
    }
    manifest = FolderManifest(
        outputs.folders[0].path,
        weights=weights,
        weights_sha256=checksum,
        settings=settings,
        input_list=args.train_list,
        version=git_commit(),
    )
    manifest.check(args.overwrite)

    # ---- this process's images ----
    names = all_names[group.rank :: group.world_size]
    todo = names if args.overwrite else [name for name in names if not outputs.done(name)]
    check_inputs(todo, source, cam_dir, args)
    if group.is_main:
        shard = f" (this process's share of {len(all_names)})" if group.distributed else ""
        print(
            f"{len(names)} images{shard}: {len(names) - len(todo)} already done, {len(todo)} to do; "
            f"{max(1, num_workers)} CRF processes, thresholds fg {args.conf_fg_thres:g} bg {args.conf_bg_thres:g}"
        )
    if not todo:
        return
    # A CAM folder of another format fails on its first file, before the manifest is written.
    read_image_and_cam(todo[0], cls_labels[todo[0]], source, cam_dir)
    manifest.write()

    # ---- two CRFs per image, in a pool ----
    job = functools.partial(
        label_one,
        source=source,
        cam_dir=cam_dir,
        outputs=outputs,
        fg_thres=args.conf_fg_thres,
        bg_thres=args.conf_bg_thres,
    )
    items = [(name, cls_labels[name]) for name in todo]
    start = time.perf_counter()
    done = map_unordered(job, items, num_workers)
    for _ in tqdm(
        done, total=len(todo), desc="cam_to_ir_label", unit="img", dynamic_ncols=True, disable=not group.is_main
    ):
        pass
    seconds = time.perf_counter() - start
    if group.is_main:
        print(f"done: {len(todo)} images in {seconds:.1f} s ({len(todo) / seconds:.2f} images/s)")


if __name__ == "__main__":
    run_main(main)
