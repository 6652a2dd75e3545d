"""Pseudo labels by AffinityNet's random walk (SPEC_AFF §4), SEAM's infer_aff.py: each image's CAMs walk along the
affinities AffinityNet predicts, the walk's argmax becomes a label map.

One GPU:   python infer_aff.py --weights resnet38_aff.pth --voc12_root VOC2012 --cam_dir out_cam \\
               --infer_list voc12/train_aug.txt --out_rw out_rw
COCO 2014: python infer_aff.py --dataset coco14 --data_root COCO ... (the same flags; SEAM has no COCO)
Several:   torchrun --nproc_per_node=N infer_aff.py ...  (each process takes every N-th image)

Per image, single scale, no flip: the normalised image zero-padded to multiples of 8 gives AffinityNet's
affinities on its stride-8 grid; the CAM file's maps with a background (1 − max)^alpha, 8×8-pooled, walk
x·T^(2^logt), T = A^beta column-normalised, as 2^logt sparse steps on the network's device (never the reference's
dense (n)×(n) matrix, same product); bilinear ×8, argmax, crop → <out_rw>/<name>.png, single-channel uint8
0..F as the reference writes (F = 20 VOC, 80 COCO). SEAM's --alpha 6 --beta 8 --logt 6; --psa: PSA's 16, 8, 8.

The CAM files are infer_cam.py --out_cam's dicts, read as written: those are CPN's halved maps (SPEC_AFF §5),
on which the background wins where SEAM's un-halved maps would not; --double_cams restores SEAM's scale.
Images whose PNG exists are skipped, so an interrupted run resumes; the folder's manifest.json (engine/manifest.py)
refuses a rerun with other weights, walk settings, CAM scale or CAMs (the CPN weights in the CAM folder's
manifest), unless --overwrite.
"""

from __future__ import annotations

import argparse
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from engine.cores import cores_per_process
from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, and_more, run_main
from engine.fileio import load_npy_dict, read_rgb, save_png
from engine.manifest import InputManifest
from engine.outputs import OutputFormat, Outputs, add_overwrite_argument
from engine.runtime import ProcessGroup, Runtime, add_runtime_arguments, autocast, memory_format_for
from engine.stage import Share, require_files
from network.weights import load_network, weights_width
from tool import aff
from tool.cam import REFERENCE_CAM_DIVISOR
from tool.imutils import Normalize
from voc12.data import first_item, image_paths, load_image_list

AFF_NETWORK = "network.resnet38_aff"
CAM_SUFFIX = ".npy"
CAM_HINT = "write the CAMs with infer_cam.py --out_cam DIR and pass that DIR as --cam_dir"


# --- Inputs: the image and its CAM file -------------------------------------------------------


def read_cam_dict(path: Path, image_size: tuple[int, int], num_fg_classes: int) -> dict[int, np.ndarray]:
    """SPEC_AFF §5's CAM file: {class 0..F−1: float32 H×W} for the present classes, checked against the image's
    size and the data set's F; anything else is a UserError naming the file."""
    content = load_npy_dict(path, "CAM file", CAM_HINT)
    if "keys" in content or "cam" in content:
        raise UserError(f"CAM file {path} is in IRN's format (infer_cam.py --out_cam_irn); {CAM_HINT}")
    cams = {}
    for key, values in content.items():
        values = np.asarray(values)
        if not (isinstance(key, numbers.Integral) and 0 <= key < num_fg_classes):
            raise UserError(
                f"CAM file {path} has key {key!r}; expected class indices 0..{num_fg_classes - 1} "
                "(pass the --dataset the CAMs were made for)"
            )
        if values.shape != image_size or values.dtype.kind != "f":
            raise UserError(
                f"CAM file {path}: class {key} is a {values.dtype} map of shape {values.shape}, but the image is "
                f"{image_size[0]}×{image_size[1]}: the CAMs were made from other images; {CAM_HINT}"
            )
        cams[int(key)] = values.astype(np.float32, copy=False)
    return cams


class CamImageDataset(Dataset):
    """An image at scale 1 (`image`, 3×H×W, normalised as SPEC_AFF §4 step 1: uint8/255 in float64, then float32)
    and its CAM dict (`cams`), read in the loader's workers."""

    def __init__(self, source: DataSource, names: list[str], cam_dir: Path):
        self.names = list(names)
        self.image_paths = image_paths(source, self.names)  # checked before any work
        self.cam_dir = cam_dir
        self.num_fg_classes = source.spec.num_fg_classes
        self.normalize = Normalize()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        image = self.normalize(np.asarray(read_rgb(self.image_paths[index])))
        cams = read_cam_dict(self.cam_dir / f"{name}{CAM_SUFFIX}", image.shape[:2], self.num_fg_classes)
        return {"name": name, "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "cams": cams}


# --- One image -------------------------------------------------------------------------------


@torch.inference_mode()
def walk_label(
    model: torch.nn.Module,
    image: torch.Tensor,
    cams: dict[int, np.ndarray],
    num_classes: int,
    alpha: float = aff.WALK_ALPHA,
    beta: float = aff.WALK_BETA,
    logt: int = aff.WALK_LOGT,
    cam_scale: float = 1.0,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> np.ndarray:
    """SPEC_AFF §4 for one image: `image` (3×H×W, normalised, on the model's device) through AffinityNet, the walk
    of `cams` ({class 0..F−1: H×W}, each map times `cam_scale` first) along its affinities → H×W uint8 class
    indices 0..num_classes−1. Only the network runs under autocast; the walk is float32."""
    height, width = image.shape[1:]
    if not cams:  # no class in the image: every channel but the background is 0, and the walk keeps it so
        return np.zeros((height, width), np.uint8)
    grid = (-(-height // aff.GRID_STRIDE), -(-width // aff.GRID_STRIDE))
    # SPEC_AFF §6.7 quirk, kept: the zero padding comes after the normalisation, so it is the mean colour
    # (black in training, where the crop is padded before it)
    padded = F.pad(image, (0, grid[1] * aff.GRID_STRIDE - width, 0, grid[0] * aff.GRID_STRIDE - height))
    with autocast(image.device, amp_dtype):
        affinities = model(padded.unsqueeze(0).contiguous(memory_format=memory_format))[0].float()
    # SPEC_AFF §6.10 quirk, kept: on a grid side under 11 (an image side ≤ 80 px) the network's radius shrinks
    # and the walk follows the network's pairs; §6.9: the 10 nodes in no pair keep their own pooled CAM
    pairs = model.pairs(grid, image.device)
    # SPEC_AFF §6.12 quirk, kept: the background is made at the image size, before the padding (walk_labels pads
    # all channels with zeros, which enter the 8×8 means)
    kept, scores = aff.walk_scores({key: cam * np.float32(cam_scale) for key, cam in cams.items()}, num_classes, alpha)
    # SPEC_AFF §6.11: the walk averages (x·T, T column-normalised) over 2^logt steps, 64 at SEAM's logt 6
    channel = aff.walk_labels(torch.from_numpy(scores).to(image.device), affinities, pairs, beta, logt)
    return kept[channel.cpu().numpy()].astype(np.uint8)


# --- Output: the label PNGs ------------------------------------------------------------------


@dataclass
class ImageLabel:
    name: str
    label: np.ndarray = field(repr=False)


def write_label(result: ImageLabel, folder) -> None:
    # SPEC_AFF §4 step 8: uint8 H×W, mode L (grayscale, no palette), as scipy.misc.imsave wrote the reference's
    save_png(folder.file(result.name), Image.fromarray(result.label))


RW_OUTPUT = OutputFormat(
    "out_rw",
    ".png",
    write_label,
    help="pseudo labels: <name>.png, single-channel uint8 class indices 0..20 (the reference's format)",
    setting_flags=("alpha", "beta", "logt", "double_cams"),
)


# --- Script ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference's flags (SPEC_AFF §4). Its --weights, --cam_dir and --out_rw have no usable defaults, so they
    # are required here; --crf is left out (see README, SPEC_AFF §6.13).
    parser.add_argument("--weights", required=True, help="AffinityNet weights: train_aff.py's output or SEAM's")
    add_dataset_arguments(parser)  # --dataset, --data_root and the reference's --voc12_root
    parser.add_argument("--infer_list", help="images to walk; " + list_default_help("val"))
    parser.add_argument("--cam_dir", required=True, help="CAM dicts: infer_cam.py --out_cam's folder")
    parser.add_argument("--out_rw", required=True, metavar="DIR", help=RW_OUTPUT.help)
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help=f"background (1 − max CAM)^alpha (default {aff.WALK_ALPHA:g}, SEAM's; --psa: {aff.PSA_WALK_ALPHA:g})",
    )
    parser.add_argument(
        "--beta", type=float, default=float(aff.WALK_BETA), help="T = A^beta, column-normalised (default 8)"
    )
    parser.add_argument(
        "--logt",
        type=int,
        default=None,
        help=f"the walk is T^(2^logt) (default {aff.WALK_LOGT}: 64 steps, SEAM's; --psa: {aff.PSA_WALK_LOGT}, 256)",
    )
    parser.add_argument(
        "--psa",
        action="store_true",
        help="PSA's walk (SPEC_AFF §7): --alpha 16 --logt 8 where they are not given (beta 8 is both's)",
    )
    parser.add_argument(
        "--double_cams",
        action="store_true",
        help="multiply the CAMs by 2 (exact in float32), undoing infer_cam.py --out_cam's halving: SEAM's scale "
        "(SPEC_AFF §5); by default they are read as written",
    )
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="loader processes per GPU process, each reading the next images and CAM files "
        "(default: half the cores, shared among torchrun's processes)",
    )
    # Ours. fp32 by default, as the reference; --amp covers the network only, the walk stays fp32.
    add_runtime_arguments(parser)
    add_overwrite_argument(parser)
    args = fill_list_defaults(parser.parse_args(argv), here, infer_list="val")
    if args.alpha is None:
        args.alpha = aff.PSA_WALK_ALPHA if args.psa else aff.WALK_ALPHA
    if args.logt is None:
        args.logt = aff.PSA_WALK_LOGT if args.psa else aff.WALK_LOGT
    if args.alpha <= 0 or args.logt < 0:
        parser.error("--alpha must be positive and --logt at least 0")
    return args


def load_model(weights: str, device: torch.device, group: ProcessGroup) -> torch.nn.Module:
    """AffinityNet (SPEC_AFF §1) with trained weights, in eval mode on `device`, at the width its file holds.
    load_network refuses CPN, IRN and DeepLab files by name; an ImageNet ResNet-38, which lacks the trained head,
    is refused here."""
    model, report = load_network(AFF_NETWORK, weights)
    if report.from_scratch:
        raise UserError(
            f"weights file {weights} has no trained AffinityNet head ({and_more(report.from_scratch, 3)}): an "
            "ImageNet ResNet-38 is where train_aff.py starts; pass the AffinityNet weights it wrote"
        )
    if group.is_main:
        print(report.summary())
    return model.eval().to(device, memory_format=memory_format_for(device))


def cam_scale_line(double_cams: bool, cam_manifest: InputManifest | None) -> str:
    """What scale the walk reads the CAMs at, and what their folder's manifest says of them."""
    made_by = f"infer_cam.py --{cam_manifest.settings.get('output')}" if cam_manifest else "unknown (no manifest)"
    if double_cams:
        return f"CAMs doubled (--double_cams): SEAM's un-halved scale (SPEC_AFF §5); made by {made_by}"
    return (
        f"CAMs read as written (made by {made_by}): infer_cam.py --out_cam's are CPN's halved maps, on which the "
        "background takes more of each map than on SEAM's scale (SPEC_AFF §5); --double_cams restores SEAM's"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    # ---- checks: everything a user can get wrong fails here, before any work ----
    outputs = Outputs.from_args([RW_OUTPUT], args)
    outputs.check()
    group = ProcessGroup.from_env()
    source = data_source(args)
    all_names = load_image_list(args.infer_list)
    share = Share.of(all_names, group, outputs, args.overwrite)
    # The CAMs: a file per image to do; the CPN weights that made them, from their folder's manifest.
    cam_dir = Path(args.cam_dir)
    require_files(cam_dir, share.todo, CAM_SUFFIX, "CAM", CAM_HINT)
    cam_manifest = InputManifest.read(cam_dir, CAM_HINT, warn=group.is_main)
    runtime = Runtime.decide(args, group, fixed_input_size=False)  # images of many sizes: no autotuning
    device, amp_dtype, precision = runtime.device, runtime.amp_dtype, runtime.precision
    run_settings = {
        "dataset": source.spec.name,
        "precision": precision,
        "width": weights_width(AFF_NETWORK, args.weights),  # refuses another network's file by name
        "cam_weights_sha256": cam_manifest.weights_sha256 if cam_manifest else None,
    }
    cams_made_by = None
    if cam_manifest is not None:
        cams_made_by = {"weights": cam_manifest.weights, "settings": cam_manifest.settings}
    provenance = {"cam_dir": str(cam_dir.resolve()), "cams_made_by": cams_made_by}
    (manifest,) = outputs.manifests(args.weights, run_settings, args.infer_list, provenance=provenance)
    manifest.check(args.overwrite)
    walk = f"alpha {args.alpha:g}, beta {args.beta:g}, logt {args.logt} ({2**args.logt} steps)"
    share.report(f"device {device}, {precision}, {walk}")
    if group.is_main:
        print(cam_scale_line(args.double_cams, cam_manifest))
    if not share.todo:
        return

    # ---- affinities and walks on the device, one image at a time ----
    model = load_model(args.weights, device, group)
    num_workers = cores_per_process() // 2 if args.num_workers is None else args.num_workers
    loader = DataLoader(
        CamImageDataset(source, share.todo, cam_dir),
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=first_item,
        pin_memory=device.type == "cuda",
    )
    cam_scale = REFERENCE_CAM_DIVISOR if args.double_cams else 1.0
    for index, sample in enumerate(tqdm(loader, desc="infer_aff", unit="img", disable=not group.is_main)):
        label = walk_label(
            model,
            sample["image"].to(device, non_blocking=True),
            sample["cams"],
            source.spec.num_classes,
            alpha=args.alpha,
            beta=args.beta,
            logt=args.logt,
            cam_scale=cam_scale,
            amp_dtype=amp_dtype,
            memory_format=memory_format_for(device),
        )
        if index == 0:  # with the folder's first file: a run that fails before leaves none
            manifest.write()
        outputs.write(ImageLabel(sample["name"], label))
    if group.is_main:
        print(f"done: {len(share.todo)} images written")


if __name__ == "__main__":
    run_main(main)
