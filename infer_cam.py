"""CAM inference (SPEC §5): multi-scale, flipped CAMs from the network's second output,
written in the formats the next steps read.

One GPU:   python infer_cam.py --weights CPN/resnet38_CPN.pth --voc12_root VOC2012 --out_cam out_cam
COCO 2014: python infer_cam.py --dataset coco14 --data_root COCO --weights CPN/coco.pth --out_cam out_cam
Several:   torchrun --nproc_per_node=N infer_cam.py ...  (each process takes every N-th image)

Outputs, each optional (at least one):
  --out_cam DIR       <name>.npy, the reference's format: {class index 0..F−1: float32 H×W}, halved
  --out_cam_irn DIR   <name>.npy, IRN's make_cam format (read unchanged by its cam_to_ir_label, eval_cam
                      and make_sem_seg_labels): {"keys": present class indices 0..F−1,
                      "cam": K×h×w float32 torch tensor on the stride-4 grid, "high_res": K×H×W float32}
  --out_cam_pred DIR  <name>.png, palette label map: background = --out_cam_pred_alpha (evaluation's rule)
  --out_crf DIR       alpha_<a>/<name>.png per --crf_alphas: SEAM's dense-CRF pseudo labels; with
                      --crf_scores also alpha_<a>/<name>.npy, SEAM's CRF label files for train_aff.py:
                      {0: background, class index + 1: float32 H×W CRF marginals} (SPEC_AFF §5)
  --vis_dir DIR       <name>.jpg: the image, each class's CAM over it, and the label map
F is the data set's foreground class count: 20 for VOC, 80 for COCO (engine/datasets.py).
Images whose requested outputs all exist are skipped, so an interrupted run resumes. Each folder
gets a manifest.json (engine/manifest.py): a run whose weights or settings differ from the ones that
wrote the folder stops before any work, unless --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.datasets import DatasetSpec, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, run_main
from engine.fileio import save_jpeg, save_label_png, save_npy
from engine.outputs import OutputFolder, OutputFormat, Outputs, add_output_arguments, add_overwrite_argument
from engine.parallel import WorkerPool, default_pool_workers
from engine.runtime import (
    ProcessGroup,
    Runtime,
    add_runtime_arguments,
    memory_format_for,
)
from engine.stage import Share
from network.weights import load_network, weights_width
from tool.cam import (
    irn_cam_dict,
    irn_cam_size,
    present_class_cams,
    reference_cam_dict,
    seam_crf_label,
    threshold_label,
    unit_maps,
)
from tool.constants import INFER_SCALES
from tool.crf import CRF_SETTINGS, SCORE_CRF_OWNERS, SEAM_CRF_ALPHAS, require_pydensecrf
from tool.visualization import cam_panel
from voc12.data import InferDataset, first_item, load_labelled_list

# Background score of --out_cam_pred, on the scale of the halved maps (evaluation's t).
# 0.26 is SEAM's default for its out_cam_pred; pass the best t of evaluation_cam.py's curve.
DEFAULT_PRED_BACKGROUND = 0.26
REFERENCE_NUM_WORKERS = 4  # the reference's --num_workers default
CAM_NETWORKS = ("network.resnet38_CPN", "resnet38_CPN")  # the reference's spelling and build_network's short one
CRF_SCORES_SUFFIX = ".npy"  # --crf_scores: SEAM's dict of CRF marginals beside each CRF label PNG


# --- Output formats: one row each -----------------------------------------------------------


@dataclass
class ImageCams:
    """One image's result, sent to a writer process: the original image (uint8 H×W×3), the data set's
    class names (background first), the present classes (0..F−1) and their normalised, un-halved maps
    (K×H×W), and for --out_cam_irn the same on IRN's stride-4 grid (K×h×w)."""

    name: str
    image: np.ndarray
    class_names: tuple[str, ...] = field(repr=False)
    keys: np.ndarray
    fg_maps: np.ndarray = field(repr=False)
    irn_fg_maps: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CrfFormat(OutputFormat):
    """--out_crf: a folder alpha_<a> per --crf_alphas; its manifest records the alpha and the CRF
    settings by owner and value (tool/crf.py CRF_SETTINGS); with --crf_scores each label PNG has
    SEAM's dict of CRF marginals beside it."""

    def folders(self, args: argparse.Namespace) -> list[OutputFolder]:
        root = getattr(args, self.flag)
        if root is None:
            return []
        suffixes = (self.suffix, CRF_SCORES_SUFFIX) if args.crf_scores else (self.suffix,)
        settings = {"crf": args.crf_settings, "crf_settings": dataclasses.asdict(CRF_SETTINGS[args.crf_settings])}
        return [
            OutputFolder(self, Path(root) / f"alpha_{alpha:g}", {"crf_alpha": alpha, **settings}, suffixes)
            for alpha in args.crf_alphas
        ]


def write_reference_cam(cams: ImageCams, folder: OutputFolder) -> None:
    save_npy(folder.file(cams.name), reference_cam_dict(cams.fg_maps, cams.keys))


def write_irn_cam(cams: ImageCams, folder: OutputFolder) -> None:
    save_npy(folder.file(cams.name), irn_cam_dict(cams.fg_maps, cams.irn_fg_maps, cams.keys))


def write_threshold_label(cams: ImageCams, folder: OutputFolder) -> None:
    label = threshold_label(cams.fg_maps, cams.keys, folder.settings["out_cam_pred_alpha"], len(cams.class_names))
    save_label_png(folder.file(cams.name), label)


def write_crf_label(cams: ImageCams, folder: OutputFolder) -> None:
    crf = CRF_SETTINGS[folder.settings["crf"]]
    label, scores = seam_crf_label(cams.image, cams.fg_maps, cams.keys, folder.settings["crf_alpha"], crf)
    save_label_png(folder.file(cams.name), label)
    if CRF_SCORES_SUFFIX in folder.suffixes:
        save_npy(folder.file(cams.name, CRF_SCORES_SUFFIX), scores)


def write_panel(cams: ImageCams, folder: OutputFolder) -> None:
    background = folder.settings["out_cam_pred_alpha"]
    label = threshold_label(cams.fg_maps, cams.keys, background, len(cams.class_names))
    heat_maps = dict(zip(cams.keys.tolist(), unit_maps(cams.fg_maps)))
    panel = cam_panel(cams.image, heat_maps, label, cams.class_names, label_title=f"background {background:g}")
    save_jpeg(folder.file(cams.name), panel)


OUTPUT_FORMATS = (
    OutputFormat(
        "out_cam",
        ".npy",
        write_reference_cam,
        help="reference-format CAMs: <name>.npy = {class 0..F-1: float32 H×W, halved}",
    ),
    OutputFormat(
        "out_cam_irn",
        ".npy",
        write_irn_cam,
        help="IRN-format CAMs: <name>.npy = {'keys', 'cam', 'high_res'}, for IRN's second stage",
    ),
    OutputFormat(
        "out_cam_pred",
        ".png",
        write_threshold_label,
        help="label PNGs: argmax of (background score, halved CAMs)",
        setting_flags=("out_cam_pred_alpha",),
    ),
    CrfFormat(
        "out_crf",
        ".png",
        write_crf_label,
        help="SEAM's CRF pseudo labels (SPEC_AFF §5), DIR/alpha_<a>/<name>.png per alpha",
    ),
    OutputFormat(
        "vis_dir",
        ".jpg",
        write_panel,
        help="a JPEG per image: image, each class's CAM over it, the --out_cam_pred label map",
        setting_flags=("out_cam_pred_alpha",),
    ),
)


# --- Script -----------------------------------------------------------------------------


def float_list(text: str) -> tuple[float, ...]:
    """argparse type for "0.5,1.0,1.5,2.0"."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference's flags. Its hard-coded defaults for --weights and --voc12_root are
    # home paths, so both are required here; --out_cam has no default, as every output.
    parser.add_argument("--weights", required=True, help="trained CPN weights (.pth from train_cpn.py)")
    parser.add_argument(
        "--network", default=CAM_NETWORKS[0], choices=CAM_NETWORKS, help="the CPN, whose second output SPEC §5 reads"
    )
    parser.add_argument("--infer_list", help=list_default_help("infer"))
    parser.add_argument(
        "--num_workers",
        type=int,
        default=REFERENCE_NUM_WORKERS,
        help="loader processes per GPU process, each preparing the next images",
    )
    add_output_arguments(parser, OUTPUT_FORMATS)
    # Ours.
    add_dataset_arguments(parser)  # --dataset, --data_root and the reference's --voc12_root
    # fp32 by default: the CAMs are what gets evaluated and handed on, and fp32 already meets
    # the speed goal on one H100 (bench/RESULTS.md); --amp bf16 is ~1.7× faster.
    add_runtime_arguments(parser)
    parser.add_argument("--cls_labels", help=list_default_help("cls_labels"))
    parser.add_argument(
        "--scales",
        type=float_list,
        default=INFER_SCALES,
        metavar="S,S,...",
        help="image scales, each also flipped (default: 0.5,1.0,1.5,2.0, SPEC §5)",
    )
    parser.add_argument(
        "--out_cam_pred_alpha",
        type=float,
        default=DEFAULT_PRED_BACKGROUND,
        metavar="T",
        help="background score of --out_cam_pred and --vis_dir, on the halved maps' "
        "scale like evaluation_cam.py's t (default %(default)s)",
    )
    parser.add_argument(
        "--crf_alphas",
        type=float_list,
        default=SEAM_CRF_ALPHAS,
        metavar="A,A,...",
        help="background exponents of --out_crf (default 4,24)",
    )
    parser.add_argument(
        "--crf_scores",
        action="store_true",
        help="also write SEAM's CRF label files, the {0: background, class+1: CRF marginals} .npy dicts "
        "that train_aff.py reads (--la_crf_dir alpha_4, --ha_crf_dir alpha_24)",
    )
    parser.add_argument(
        "--crf_settings",
        choices=SCORE_CRF_OWNERS,
        default="seam",
        help="whose CRF makes --out_crf: SEAM's (bilateral sxy 80, 10 iterations; what its train_aff read) "
        "or CPN's crf_inference (sxy 50, 5 iterations; SPEC §7) (default %(default)s)",
    )
    parser.add_argument(
        "--post_workers",
        type=int,
        default=None,
        help="processes that build and write the outputs while the network runs "
        "(0: in the main process; default: the cores the loader leaves, at most 8)",
    )
    add_overwrite_argument(parser)
    return fill_list_defaults(parser.parse_args(argv), here, infer_list="infer", cls_labels="cls_labels")


def load_model(
    args: argparse.Namespace, dataset: DatasetSpec, device: torch.device, group: ProcessGroup
) -> torch.nn.Module:
    model, report = load_network(args.network, args.weights, dataset)  # at the width the file holds
    if group.is_main:
        print(report.summary())
    if report.from_scratch:
        raise UserError(
            f"weights file {args.weights} lacks the trained head ({', '.join(report.from_scratch[:3])} "
            "...): CAMs need trained CPN weights, e.g. the .pth written by train_cpn.py"
        )
    return model.eval().to(device, memory_format=memory_format_for(device))


def image_cams(
    model: torch.nn.Module, sample: dict, outputs: Outputs, class_names: tuple[str, ...], **forward_options
) -> ImageCams:
    """SPEC §5 for one loader sample, at the sizes the outputs need."""
    image = sample["image"]
    # SPEC_IRN §11: IRN's `cam` is summed on the stride-4 grid from the same forwards.
    sizes = [image.shape[:2]] + ([irn_cam_size(image.shape[:2])] if outputs.writes("out_cam_irn") else [])
    keys, (fg_maps, *irn_fg_maps) = present_class_cams(
        model, sample["inputs"], sample["label"], sizes, **forward_options
    )
    return ImageCams(
        sample["name"], image, class_names, keys, fg_maps, irn_fg_maps=irn_fg_maps[0] if irn_fg_maps else None
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    # ---- checks: everything a user can get wrong fails here, before any work ----
    outputs = Outputs.from_args(OUTPUT_FORMATS, args)
    outputs.check()
    group = ProcessGroup.from_env()
    runtime = Runtime.decide(args, group, fixed_input_size=False)  # images of many sizes: no autotuning
    device, amp_dtype, precision = runtime.device, runtime.amp_dtype, runtime.precision
    source = data_source(args)
    all_names, cls_labels = load_labelled_list(args.infer_list, args.cls_labels, source.spec)
    if outputs.writes("out_crf"):
        require_pydensecrf()  # fail now, not in a worker after the first image
    # Sorted: the sum over scales does not depend on their order.
    run_settings = {
        "dataset": source.spec.name,
        "network": args.network,
        "width": weights_width(args.network, args.weights),
        "scales": sorted(args.scales),
        "precision": precision,
    }
    manifests = outputs.manifests(args.weights, run_settings, args.infer_list)
    for manifest in manifests:
        manifest.check(args.overwrite)

    # ---- this process's images ----
    share = Share.of(all_names, group, outputs, args.overwrite)
    scales = ",".join(f"{scale:g}" for scale in args.scales)
    share.report(f"device {device}, {precision}, scales {scales}")
    if not share.todo:
        return

    # ---- CAMs on the device, files written by the worker pool meanwhile ----
    post_workers = args.post_workers
    if post_workers is None:
        post_workers = default_pool_workers(args.num_workers)
    with WorkerPool(post_workers, preload=["infer_cam"]) as pool:  # the writers' imports overlap the model's loading
        model = load_model(args, source.spec, device, group)
        forward_options = {"amp_dtype": amp_dtype, "memory_format": memory_format_for(device)}
        loader = DataLoader(
            InferDataset(source, share.todo, cls_labels, scales=args.scales),
            batch_size=1,
            shuffle=False,
            num_workers=args.num_workers,
            collate_fn=first_item,
            pin_memory=device.type == "cuda",
        )
        with torch.inference_mode():
            for index, sample in enumerate(tqdm(loader, desc="infer_cam", unit="img", disable=not group.is_main)):
                cams = image_cams(model, sample, outputs, source.spec.class_names, **forward_options)
                if index == 0:  # with the folders' first files: a run that fails before leaves none
                    for manifest in manifests:
                        manifest.write()
                pool.submit(outputs.write, cams)
    if group.is_main:
        print(f"done: {len(share.todo)} images written")


if __name__ == "__main__":
    run_main(main)
