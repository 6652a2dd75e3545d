"""Pseudo labels by random walk (SPEC-IRN §9), IRN's make_sem_seg_labels step: IRNet's class boundaries
spread each image's CAMs, the walk's result becomes a label map.

One GPU:   python make_sem_seg_labels.py --voc12_root VOC2012 --infer_list voc12/train_aug.txt \\
               --cam_out_dir out_cam_irn --irn_weights_name CPN/res50_irn.pth --sem_seg_out_dir sem_seg
COCO 2014: python make_sem_seg_labels.py --dataset coco14 --data_root COCO ... (the same flags)
Several:   torchrun --nproc_per_node=N make_sem_seg_labels.py ...  (each process takes every N-th image)

Per image: the image and its flip, zero-padded to 512×512 as IRN does (a side over 512, where IRN fails,
to the next multiple of 512), give the boundary probability; the stride-4 `cam` of the image's CAM file
(infer_cam.py --out_cam_irn, IRN's make_cam format) walks over it, x·T^(2^exp_times) as sparse steps
(never IRN's dense (hw)×(hw) matrix, same product); the result, upsampled and divided by its maximum,
against a background of --sem_seg_bg_thres gives <name>.png: single-channel uint8 0..F, as IRN writes
(F = 20 VOC, 80 COCO).
The walk runs on the network's device. Images whose PNG exists are skipped, so an interrupted run
resumes; the folder's manifest.json (engine/manifest.py) refuses a rerun with other weights, walk
settings or CAMs (by the checksum of the CPN weights in the CAM folder's manifest), unless --overwrite.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from engine.cores import cores_per_process
from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, run_main
from engine.fileio import save_png
from engine.manifest import InputManifest
from engine.outputs import OutputFormat, Outputs, add_overwrite_argument
from engine.runtime import (
    ProcessGroup,
    Runtime,
    add_runtime_arguments,
    autocast,
    memory_format_for,
)
from engine.stage import Share, require_files
from network.resnet50_irn import INFERENCE_PAD, boundary_probability
from network.weights import load_network, weights_width
from tool.cam import IRN_CAM_HINT, IRN_CAM_SUFFIX, irn_cam_size, read_irn_cam
from tool.irn import SEM_SEG_BG_THRES, WALK_BETA, WALK_EXP_TIMES, random_walk, rw_to_labels
from voc12.data import InferDataset, first_item, load_labelled_list

IRN_NETWORK = "network.resnet50_irn"


# --- Inputs: the image pair and its CAM file ------------------------------------------------


def read_stride4_cam(
    path: Path, label: np.ndarray, image_size: tuple[int, int], cls_labels_path, class_names: tuple[str, ...]
) -> dict:
    """SPEC-IRN §11's `cam` of one image, checked against the image's class labels and size:
    {"keys": int64 K, the present classes; "cam": float32 K×h×w tensor on the stride-4 grid}."""
    keys, cam = read_irn_cam(path, "cam", label, str(cls_labels_path), class_names)
    expected = (len(keys), *irn_cam_size(image_size))
    if cam.shape != expected:
        raise UserError(
            f"CAM file {path}: 'cam' has shape {cam.shape}, but the {image_size[0]}×{image_size[1]} image "
            f"needs {expected} (K classes on the stride-4 grid): the CAMs were made from other images; {IRN_CAM_HINT}"
        )
    return {"keys": keys, "cam": torch.from_numpy(cam)}


class CamImageDataset(Dataset):
    """An image at scale 1 with its flip (`image_pair`, 2×3×H×W, normalised) and its CAM file's
    `keys` and `cam`, read in the loader's workers."""

    def __init__(self, source: DataSource, names: list[str], cls_labels, cam_dir: Path):
        self.images = InferDataset(source, names, cls_labels, scales=(1.0,))
        self.cam_dir = cam_dir
        self.cls_labels_path = getattr(cls_labels, "path", "the class labels")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        sample = self.images[index]
        image_pair = sample["inputs"][0]
        cam_file = read_stride4_cam(
            self.cam_dir / f"{sample['name']}{IRN_CAM_SUFFIX}",
            sample["label"].numpy(),
            tuple(image_pair.shape[2:]),
            self.cls_labels_path,
            self.images.source.spec.class_names,
        )
        return {"name": sample["name"], "image_pair": image_pair, **cam_file}


# --- One image -------------------------------------------------------------------------------


@torch.inference_mode()
def sem_seg_label(
    model: torch.nn.Module,
    image_pair: torch.Tensor,
    cam: torch.Tensor,
    keys: np.ndarray,
    beta: float = WALK_BETA,
    exp_times: int = WALK_EXP_TIMES,
    bg_threshold: float = SEM_SEG_BG_THRES,
    amp_dtype: torch.dtype | None = None,
    pad_to: int = INFERENCE_PAD,
) -> np.ndarray:
    """SPEC-IRN §9 for one image: boundary probability of `image_pair` (2×3×H×W, the normalised image and
    its flip, on the model's device), the random walk of `cam` (K×h×w) over it, labels through `keys`
    (the K present classes, 0..F−1) → H×W uint8, 0..F. Only the network runs under autocast."""
    with autocast(image_pair.device, amp_dtype):
        boundary = boundary_probability(model, image_pair, pad_to).float()
    walked = random_walk(cam.to(boundary.device, torch.float32), boundary, beta, exp_times)
    return rw_to_labels(walked, keys, tuple(image_pair.shape[2:]), bg_threshold)


# --- Output: the label PNGs ------------------------------------------------------------------


@dataclass
class ImageLabel:
    name: str
    label: np.ndarray = field(repr=False)


def write_label(result: ImageLabel, folder) -> None:
    save_png(folder.file(result.name), Image.fromarray(result.label))  # uint8 H×W: mode L, as IRN writes


SEM_SEG_OUTPUT = OutputFormat(
    "sem_seg_out_dir",
    ".png",
    write_label,
    help="pseudo labels: <name>.png, single-channel uint8 0..20 (IRN's format)",
    setting_flags=("beta", "exp_times", "sem_seg_bg_thres"),
)


# --- Script ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # IRN's flags (run_sample.py). Its defaults for the three paths are relative session folders,
    # so they are required here, as infer_cam.py's --weights.
    add_dataset_arguments(parser)  # --dataset, --data_root and IRN's --voc12_root
    parser.add_argument("--infer_list", help=list_default_help("infer"))
    parser.add_argument("--cam_out_dir", required=True, help="IRN-format CAMs (infer_cam.py --out_cam_irn)")
    parser.add_argument(
        "--irn_weights_name", required=True, help="IRNet weights: train_irn.py's output or IRN's res50_irn.pth"
    )
    parser.add_argument("--sem_seg_out_dir", required=True, metavar="DIR", help=SEM_SEG_OUTPUT.help)
    parser.add_argument(
        "--beta", type=float, default=float(WALK_BETA), help="T = A^beta, column-normalised (default 10)"
    )
    parser.add_argument(
        "--exp_times", type=int, default=WALK_EXP_TIMES, help="the walk is T^(2^exp_times) (default 8: 256 steps)"
    )
    parser.add_argument(
        "--sem_seg_bg_thres",
        type=float,
        default=SEM_SEG_BG_THRES,
        help="background score against the walk's maps, each divided by their maximum (default 0.25)",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="loader processes per GPU process, each reading the next images and CAM files "
        "(default: half the cores, IRN's, shared among torchrun's processes)",
    )
    # Ours.
    # fp32 by default, as IRN; --amp covers the network only, the walk stays fp32.
    add_runtime_arguments(parser)
    parser.add_argument("--cls_labels", help=list_default_help("cls_labels"))
    add_overwrite_argument(parser)
    return fill_list_defaults(parser.parse_args(argv), here, infer_list="infer", cls_labels="cls_labels")


def load_model(args: argparse.Namespace, device: torch.device, group: ProcessGroup) -> torch.nn.Module:
    model, report = load_network(IRN_NETWORK, args.irn_weights_name)  # at the width the file holds
    if group.is_main:
        print(report.summary())
    untrained = [key for key in report.from_scratch if key.startswith("edge_branch.")]
    if untrained:
        raise UserError(
            f"weights file {args.irn_weights_name} lacks IRNet's boundary head ({', '.join(untrained[:3])} ...): "
            "not an IRNet weights file; pass the .pth written by train_irn.py or IRN's res50_irn.pth"
        )
    return model.eval().to(device, memory_format=memory_format_for(device))


def main(argv=None) -> None:
    args = parse_args(argv)
    # ---- checks: everything a user can get wrong fails here, before any work ----
    outputs = Outputs.from_args([SEM_SEG_OUTPUT], args)
    outputs.check()
    group = ProcessGroup.from_env()
    source = data_source(args)
    all_names, cls_labels = load_labelled_list(args.infer_list, args.cls_labels, source.spec)
    share = Share.of(all_names, group, outputs, args.overwrite)
    # The CAMs: a file per image to do; the CPN weights that made them, from their folder's manifest.
    cam_dir = Path(args.cam_out_dir)
    require_files(cam_dir, share.todo, IRN_CAM_SUFFIX, "CAM", IRN_CAM_HINT)
    cam_manifest = InputManifest.read(cam_dir, IRN_CAM_HINT, warn=group.is_main)
    runtime = Runtime.decide(args, group, fixed_input_size=False)  # images of many sizes: no autotuning
    device, amp_dtype, precision = runtime.device, runtime.amp_dtype, runtime.precision
    run_settings = {
        "dataset": source.spec.name,
        "precision": precision,
        "width": weights_width(IRN_NETWORK, args.irn_weights_name),
        "cam_weights_sha256": cam_manifest.weights_sha256 if cam_manifest else None,
    }
    (manifest,) = outputs.manifests(args.irn_weights_name, run_settings, args.infer_list)
    manifest.check(args.overwrite)
    walk = f"beta {args.beta:g}, exp_times {args.exp_times}, sem_seg_bg_thres {args.sem_seg_bg_thres:g}"
    share.report(f"device {device}, {precision}, {walk}")
    if not share.todo:
        return

    # ---- boundaries and walks on the device, one image at a time ----
    model = load_model(args, device, group)
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = cores_per_process() // 2
    loader = DataLoader(
        CamImageDataset(source, share.todo, cls_labels, cam_dir),
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=first_item,
        pin_memory=device.type == "cuda",
    )
    memory_format = memory_format_for(device)
    for index, sample in enumerate(tqdm(loader, desc="make_sem_seg_labels", unit="img", disable=not group.is_main)):
        image_pair = sample["image_pair"].to(device, non_blocking=True, memory_format=memory_format)
        label = sem_seg_label(
            model,
            image_pair,
            sample["cam"],
            sample["keys"],
            beta=args.beta,
            exp_times=args.exp_times,
            bg_threshold=args.sem_seg_bg_thres,
            amp_dtype=amp_dtype,
        )
        if index == 0:  # with the folder's first file: a run that fails before leaves none
            manifest.write()
        outputs.write(ImageLabel(sample["name"], label))
    if group.is_main:
        print(f"done: {len(share.todo)} images written")


if __name__ == "__main__":
    run_main(main)
