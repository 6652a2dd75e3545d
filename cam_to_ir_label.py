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
CAMs' weights and settings (from the CAM folder's own manifest; a folder without one is a warning)
and the two thresholds: a run with other ones stops before any work, unless --overwrite.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from engine.cores import default_num_workers
from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, run_main
from engine.fileio import read_rgb, save_png
from engine.manifest import InputManifest
from engine.outputs import OutputFormat, Outputs, add_overwrite_argument
from engine.parallel import map_unordered
from engine.runtime import ProcessGroup
from engine.stage import Share, require_files
from tool.cam import IRN_CAM_HINT, IRN_CAM_SUFFIX, read_irn_cam
from tool.crf import crf_inference_labels, require_pydensecrf
from tool.ir_label import CONF_BG_THRES, CONF_FG_THRES, confident_labels
from voc12.data import image_paths, load_labelled_list

UNKNOWN_CHECKSUM = "unknown"  # a CAM folder without manifest (IRN's own make_cam): its weights are unknown


# --- One image ------------------------------------------------------------------------------


def read_image_and_cam(name: str, cls_label: np.ndarray, source: DataSource, cam_dir: Path):
    """The image (uint8 H×W×3) and its CAM's (keys, high_res), of the same size."""
    image_path = source.image_path(name)
    cam_path = cam_dir / f"{name}{IRN_CAM_SUFFIX}"
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


def cam_source(cam_dir: Path, warn: bool) -> tuple[str | Path, str, dict | None]:
    """(weights path, its sha256, the CAM settings) from the CAM folder's manifest; without one (IRN's
    own make_cam), the folder itself and an unknown checksum."""
    cam_manifest = InputManifest.read(cam_dir, IRN_CAM_HINT, warn)
    if cam_manifest is None:
        return cam_dir, UNKNOWN_CHECKSUM, None
    return cam_manifest.weights, cam_manifest.weights_sha256, cam_manifest.settings


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
    share = Share.of(all_names, group, outputs, args.overwrite)
    require_files(cam_dir, share.todo, IRN_CAM_SUFFIX, "CAM", IRN_CAM_HINT)
    image_paths(source, share.todo)
    # No network here: the manifest names the CPN weights that made the CAMs, as their folder's does.
    weights, checksum, cam_settings = cam_source(cam_dir, warn=group.is_main)
    run_settings = {"dataset": source.spec.name, "cam_settings": cam_settings}
    (manifest,) = outputs.manifests(weights, run_settings, args.train_list, checksum=checksum)
    manifest.check(args.overwrite)
    share.report(f"{max(1, num_workers)} CRF processes, thresholds fg {args.conf_fg_thres:g} bg {args.conf_bg_thres:g}")
    if not share.todo:
        return
    # A CAM folder of another format fails on its first file, before the manifest is written.
    first = share.todo[0]
    read_image_and_cam(first, cls_labels[first], source, cam_dir)
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
    items = [(name, cls_labels[name]) for name in share.todo]
    start = time.perf_counter()
    done = map_unordered(job, items, num_workers)
    for _ in tqdm(
        done, total=len(share.todo), desc="cam_to_ir_label", unit="img", dynamic_ncols=True, disable=not group.is_main
    ):
        pass
    seconds = time.perf_counter() - start
    if group.is_main:
        print(f"done: {len(share.todo)} images in {seconds:.1f} s ({len(share.todo) / seconds:.2f} images/s)")


if __name__ == "__main__":
    run_main(main)
