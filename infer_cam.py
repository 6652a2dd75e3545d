"""CAM inference (SPEC §5): multi-scale, flipped CAMs from the network's second output,
written in the formats the next steps read.

One GPU:   python infer_cam.py --weights CPN/resnet38_CPN.pth --voc12_root VOC2012 --out_cam out_cam
Several:   torchrun --nproc_per_node=N infer_cam.py ...  (each process takes every N-th image)

Outputs, each optional (at least one):
  --out_cam DIR       <name>.npy, the reference's format: {class index 0..19: float32 H×W}, halved
  --out_cam_irn DIR   <name>.npy, IRN's make_cam format (read unchanged by its cam_to_ir_label, eval_cam
                      and make_sem_seg_labels): {"keys": present class indices 0..19,
                      "cam": K×h×w float32 torch tensor on the stride-4 grid, "high_res": K×H×W float32}
  --out_cam_pred DIR  <name>.png, palette label map: background = --out_cam_pred_alpha (evaluation's rule)
  --out_crf DIR       alpha_<a>/<name>.png per --crf_alphas: SEAM-style dense-CRF pseudo labels
  --vis_dir DIR       <name>.jpg: the image, each class's CAM over it, and the label map
Images whose requested outputs all exist are skipped, so an interrupted run resumes. Each folder
gets a manifest.json (tool/manifest.py): a run whose weights or settings differ from the ones that
wrote the folder stops before any work, unless --overwrite.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from network import build_network
from network.weights import load_weights
from tool.constants import INFER_SCALES, NUM_FG_CLASSES
from tool.crf import SEAM_CRF_ALPHAS, require_pydensecrf, seam_crf_scores
from tool.errors import UserError, run_main
from tool.fileio import check_writable_dir, save_jpeg, save_npy, save_png
from tool.manifest import FolderManifest, git_commit, weights_sha256
from tool.runtime import (
    ProcessGroup,
    add_runtime_arguments,
    autocast,
    memory_format_for,
    precision_name,
    resolve_amp,
    resolve_device,
    set_fp32_precision,
    usable_cores,
)
from tool.visualization import cam_panel, label_image
from voc12.data import InferDataset, check_voc_root, load_cls_labels, load_image_list

CAM_EPS = 1e-5  # SPEC §5: the min/max normalisation's epsilon
LABEL_PRESENT = 1e-5  # the reference keeps class i when label[i] > 1e-5
# SPEC §5 quirk: the reference stores norm / 2 ("compresses the foreground seeds" so the
# background sweep 0.20..0.59 covers them). Evaluation thresholds refer to the halved maps.
REFERENCE_CAM_DIVISOR = 2.0
# Background score of --out_cam_pred, on the scale of the halved maps (evaluation's t).
# 0.26 is SEAM's default for its out_cam_pred; pass the best t of evaluation_cam.py's curve.
DEFAULT_PRED_BACKGROUND = 0.26
IRN_CAM_STRIDE = 4  # SPEC_IRN §11: IRN's `cam` entry lies on the network's stride-4 grid
REFERENCE_NUM_WORKERS = 4  # the reference's --num_workers default


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
    parser.add_argument("--network", default="network.resnet38_CPN")
    parser.add_argument("--infer_list", default=str(here / "voc12" / "train.txt"))
    parser.add_argument(
        "--num_workers",
        type=int,
        default=REFERENCE_NUM_WORKERS,
        help="loader processes per GPU process, each preparing the next images",
    )
    parser.add_argument("--voc12_root", required=True, help="the VOC2012 folder (holds JPEGImages)")
    parser.add_argument(
        "--out_cam",
        default=None,
        metavar="DIR",
        help="reference-format CAMs: <name>.npy = {class 0..19: float32 H×W, halved}",
    )
    # Ours.
    # fp32 by default: the CAMs are what gets evaluated and handed on, and fp32 already meets
    # the speed goal on one H100 (bench/RESULTS.md); --amp bf16 is ~1.7× faster.
    add_runtime_arguments(parser)
    parser.add_argument("--cls_labels", default=str(here / "voc12" / "cls_labels.npy"))
    parser.add_argument(
        "--scales",
        type=float_list,
        default=INFER_SCALES,
        metavar="S,S,...",
        help="image scales, each also flipped (default: 0.5,1.0,1.5,2.0, SPEC §5)",
    )
    parser.add_argument(
        "--out_cam_irn",
        default=None,
        metavar="DIR",
        help="IRN-format CAMs: <name>.npy = {'keys', 'cam', 'high_res'}, for IRN's second stage",
    )
    parser.add_argument(
        "--out_cam_pred", default=None, metavar="DIR", help="label PNGs: argmax of (background score, halved CAMs)"
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
        "--out_crf",
        default=None,
        metavar="DIR",
        help="SEAM-style CRF pseudo labels (SPEC §7), DIR/alpha_<a>/<name>.png per alpha",
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
        help="also write the CRF scores, SEAM's {0: background, class+1: score} .npy dicts",
    )
    parser.add_argument(
        "--vis_dir",
        default=None,
        metavar="DIR",
        help="a JPEG per image: image, each class's CAM over it, the --out_cam_pred label map",
    )
    parser.add_argument(
        "--post_workers",
        type=int,
        default=None,
        help="processes that build and write the outputs while the network runs "
        "(0: in the main process; default: the cores the loader leaves, at most 8)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite every output of the listed images and each folder's manifest, even "
        "when the folder was written with other weights or settings",
    )
    return parser.parse_args(argv)


# --- SPEC §5: the CAM of one image ------------------------------------------------------


def second_output(outputs) -> torch.Tensor:
    """SPEC §5 uses the network's second output (`final`, the refined CAM)."""
    if not isinstance(outputs, (tuple, list)) or len(outputs) < 2:
        raise UserError(
            "infer_cam.py needs a network whose forward returns (cam, cam_rv), such as "
            "network.resnet38_CPN; pass --network network.resnet38_CPN"
        )
    return outputs[1]


def summed_cams(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    label: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[torch.Tensor]:
    """SPEC §5 up to the sum, at each of `sizes` from the same forwards: the foreground channels
    of the second output of every input, bilinearly resized to the size (align_corners=False),
    flipped back where flipped, summed, times the class vector. Returns per size float32 20×h×w
    on the model's device.

    inputs: per scale a 2×3×h×w batch (the image, its horizontal flip), run as one forward;
    label: float[20]. Resizing and summing are in float32 whatever `amp_dtype`."""
    device = next(model.parameters()).device
    totals = [torch.zeros((NUM_FG_CLASSES, *size), dtype=torch.float32, device=device) for size in sizes]
    for pair in inputs:
        assert pair.ndim == 4 and pair.shape[0] == 2, pair.shape
        batch = pair.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast(device, amp_dtype):
            cam_rv = second_output(model(batch))[:, 1:].float()
        for total, size in zip(totals, sizes):
            foreground = F.interpolate(cam_rv, size, mode="bilinear", align_corners=False)
            total += foreground[0] + foreground[1].flip(-1)
    # The reference multiplies each of the 8 maps by the 0/1 class vector before summing;
    # multiplying the sum once is the same.
    class_vector = label.to(device, torch.float32)[:, None, None]
    return [total * class_vector for total in totals]


def normalize_cams(summed: torch.Tensor) -> torch.Tensor:
    """SPEC §5: relu; per channel mn, mx; values < mn + 1e-5 set to 0; then
    (x - mn - 1e-5) / (mx - mn + 1e-5), before the reference's halving. C×H×W -> C×H×W.

    Quirk kept: the zeroed values come out slightly negative, -(mn + 1e-5) / (mx - mn + 1e-5)
    (-1 everywhere for an all-zero channel), exactly as the reference computes them."""
    positive = F.relu(summed)
    channel_min = positive.amin(dim=(1, 2), keepdim=True)
    channel_max = positive.amax(dim=(1, 2), keepdim=True)
    positive = torch.where(positive < channel_min + CAM_EPS, torch.zeros_like(positive), positive)
    return (positive - channel_min - CAM_EPS) / (channel_max - channel_min + CAM_EPS)


def multiscale_cam(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    label: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    *,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> list[torch.Tensor]:
    """SPEC §5: the normalised (not yet halved) multi-scale CAM at each of `sizes`, each
    normalised over its own pixels (SPEC_IRN §11), float32 20×h×w."""
    return [
        normalize_cams(summed)
        for summed in summed_cams(model, inputs, label, sizes, amp_dtype=amp_dtype, memory_format=memory_format)
    ]


def irn_cam_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """SPEC_IRN §11: the size of IRN's `cam`, ((H-1)//4+1, (W-1)//4+1) (IRN's get_strided_size)."""
    height, width = image_size
    return (height - 1) // IRN_CAM_STRIDE + 1, (width - 1) // IRN_CAM_STRIDE + 1


def present_classes(label) -> np.ndarray:
    """Indices 0..19 of the classes in the image (the reference's `label[i] > 1e-5`), int64."""
    return np.flatnonzero(np.asarray(label) > LABEL_PRESENT).astype(np.int64)


# --- Output formats (numpy, run in the post-processing workers) ---------------------------


def reference_cam_dict(fg_maps: np.ndarray, keys: np.ndarray) -> dict[int, np.ndarray]:
    """The reference's .npy content: {class index: normalised map / 2, float32 H×W}."""
    return {int(key): (fg_map / REFERENCE_CAM_DIVISOR).astype(np.float32) for key, fg_map in zip(keys, fg_maps)}


def unit_maps(fg_maps: np.ndarray) -> np.ndarray:
    """The normalised maps clipped to 0..1 (dropping the quirk's tiny negatives): the
    score maps IRN, the CRF and the heat maps expect."""
    return np.clip(fg_maps, 0.0, 1.0).astype(np.float32)


def irn_cam_dict(fg_maps: np.ndarray, irn_fg_maps: np.ndarray, keys: np.ndarray) -> dict:
    """IRN's make_cam format (SPEC_IRN §11): `keys` 0-based class indices (IRN pads `keys + 1`
    with a background 0), `high_res` K×H×W float32 in 0..1 (IRN pads a background threshold),
    `cam` K×h×w on the stride-4 grid, a float32 CPU torch tensor because make_sem_seg_labels
    calls `.cuda()` on it."""
    return {
        "keys": keys.astype(np.int64),
        "cam": torch.from_numpy(unit_maps(irn_fg_maps)),
        "high_res": unit_maps(fg_maps),
    }


def threshold_label(fg_maps: np.ndarray, keys: np.ndarray, background: float) -> np.ndarray:
    """SPEC §6's prediction: argmax of (background score, halved map of each present class,
    zeros for absent ones), the first maximum winning. uint8 H×W class indices 0..20."""
    scores = np.zeros((NUM_FG_CLASSES + 1, *fg_maps.shape[1:]), np.float32)
    scores[0] = background
    for key, fg_map in zip(keys, fg_maps):
        scores[key + 1] = fg_map / REFERENCE_CAM_DIVISOR
    return scores.argmax(axis=0).astype(np.uint8)


def seam_crf_label(
    image: np.ndarray, fg_maps: np.ndarray, keys: np.ndarray, alpha: float
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """SPEC §7, SEAM's pseudo labels: CRF over (background (1 - max fg)^alpha, fg maps).
    Returns the uint8 label map (class indices 0..20) and SEAM's score dict
    {0: background, class index + 1: score}."""
    scores = seam_crf_scores(image, unit_maps(fg_maps), alpha)
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return labels[scores.argmax(axis=0)], {int(label): score for label, score in zip(labels, scores)}


@dataclass(frozen=True)
class Outputs:
    """Which outputs to write, and where."""

    out_cam: Path | None = None
    out_cam_irn: Path | None = None
    out_cam_pred: Path | None = None
    pred_background: float = DEFAULT_PRED_BACKGROUND
    out_crf: Path | None = None
    crf_alphas: tuple[float, ...] = SEAM_CRF_ALPHAS
    crf_scores: bool = False
    vis_dir: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Outputs:
        def path(value):
            return None if value is None else Path(value)

        return cls(
            out_cam=path(args.out_cam),
            out_cam_irn=path(args.out_cam_irn),
            out_cam_pred=path(args.out_cam_pred),
            pred_background=args.out_cam_pred_alpha,
            out_crf=path(args.out_crf),
            crf_alphas=args.crf_alphas,
            crf_scores=args.crf_scores,
            vis_dir=path(args.vis_dir),
        )

    def folder_formats(self) -> list[tuple[Path, str, dict]]:
        """Each output folder, the flag that names it, and the settings of that flag that change
        its files besides the CAMs themselves (its manifest's format settings)."""
        formats = [
            (self.out_cam, "out_cam", {}),
            (self.out_cam_irn, "out_cam_irn", {}),
            (self.out_cam_pred, "out_cam_pred", {"out_cam_pred_alpha": self.pred_background}),
            (self.vis_dir, "vis_dir", {"out_cam_pred_alpha": self.pred_background}),
        ]
        if self.out_crf is not None:
            formats += [(self.crf_dir(alpha), "out_crf", {"crf_alpha": alpha}) for alpha in self.crf_alphas]
        return [(folder, flag, settings) for folder, flag, settings in formats if folder is not None]

    def folders(self) -> list[Path]:
        return [folder for folder, _, _ in self.folder_formats()]

    def check_separate_folders(self) -> None:
        """One output per folder: a folder's manifest describes one format."""
        flags_by_folder: dict[Path, str] = {}
        for folder, flag, _ in self.folder_formats():
            other = flags_by_folder.setdefault(folder.resolve(), flag)
            if other != flag:
                raise UserError(f"--{other} and --{flag} both write to {folder}; give each output its own folder")

    def cam_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """The sizes the CAMs are summed at: the image's, and for --out_cam_irn IRN's stride-4 grid."""
        return [image_size] + ([irn_cam_size(image_size)] if self.out_cam_irn is not None else [])

    def crf_dir(self, alpha: float) -> Path:
        return self.out_crf / f"alpha_{alpha:g}"

    def paths(self, name: str) -> list[Path]:
        """Every file this run writes for one image."""
        paths = []
        if self.out_cam is not None:
            paths.append(self.out_cam / f"{name}.npy")
        if self.out_cam_irn is not None:
            paths.append(self.out_cam_irn / f"{name}.npy")
        if self.out_cam_pred is not None:
            paths.append(self.out_cam_pred / f"{name}.png")
        if self.out_crf is not None:
            for alpha in self.crf_alphas:
                paths.append(self.crf_dir(alpha) / f"{name}.png")
                if self.crf_scores:
                    paths.append(self.crf_dir(alpha) / f"{name}.npy")
        if self.vis_dir is not None:
            paths.append(self.vis_dir / f"{name}.jpg")
        return paths

    def done(self, name: str) -> bool:
        return all(path.is_file() for path in self.paths(name))


@dataclass
class ImageCams:
    """One image's result, sent to a post-processing worker: the original image (uint8
    H×W×3), its present classes (0..19) and their normalised, un-halved maps (K×H×W), and
    for --out_cam_irn the same on IRN's stride-4 grid (K×h×w)."""

    name: str
    image: np.ndarray
    keys: np.ndarray
    fg_maps: np.ndarray = field(repr=False)
    irn_fg_maps: np.ndarray | None = field(default=None, repr=False)


def write_outputs(cams: ImageCams, outputs: Outputs) -> None:
    """Build and atomically write every requested output of one image."""
    name, keys, fg_maps = cams.name, cams.keys, cams.fg_maps
    if outputs.out_cam is not None:
        save_npy(outputs.out_cam / f"{name}.npy", reference_cam_dict(fg_maps, keys))
    if outputs.out_cam_irn is not None:
        save_npy(outputs.out_cam_irn / f"{name}.npy", irn_cam_dict(fg_maps, cams.irn_fg_maps, keys))
    if outputs.out_cam_pred is not None or outputs.vis_dir is not None:
        label = threshold_label(fg_maps, keys, outputs.pred_background)
        if outputs.out_cam_pred is not None:
            save_png(outputs.out_cam_pred / f"{name}.png", label_image(label))
        if outputs.vis_dir is not None:
            heat_maps = dict(zip(keys.tolist(), unit_maps(fg_maps)))
            panel = cam_panel(cams.image, heat_maps, label, label_title=f"background {outputs.pred_background:g}")
            save_jpeg(outputs.vis_dir / f"{name}.jpg", panel)
    if outputs.out_crf is not None:
        for alpha in outputs.crf_alphas:
            crf_label, crf_scores = seam_crf_label(cams.image, fg_maps, keys, alpha)
            save_png(outputs.crf_dir(alpha) / f"{name}.png", label_image(crf_label))
            if outputs.crf_scores:
                save_npy(outputs.crf_dir(alpha) / f"{name}.npy", crf_scores)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class OutputWriter:
    """Runs `write_outputs` in worker processes (CRF and PNG/JPEG encoding are CPU work
    that would otherwise stall the GPU), at most two jobs per worker queued; with 0
    workers, inline. Errors surface at the next submit or at `close`.

    Workers come from a fork server that imports this module once: unlike plain fork it
    holds no CUDA or thread state, unlike spawn each worker starts in a moment."""

    def __init__(self, num_workers: int):
        self.pool = None
        if num_workers > 0:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["infer_cam"])
            # Ctrl-C reaches the whole process group: the main process stops the pool, the
            # workers finish their (atomic) write instead of each printing a traceback.
            self.pool = ProcessPoolExecutor(num_workers, mp_context=context, initializer=ignore_sigint)
            # Start the fork server now, so that its imports overlap the model's loading.
            self.pool.submit(os.getpid)
        self.max_pending = 2 * num_workers
        self.pending: collections.deque[Future] = collections.deque()

    def submit(self, write: Callable, *args) -> None:
        if self.pool is None:
            write(*args)
            return
        self.pending.append(self.pool.submit(write, *args))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


# --- Script -----------------------------------------------------------------------------


def default_post_workers(num_loader_workers: int, processes_per_node: int) -> int:
    return max(1, min(8, usable_cores() // max(1, processes_per_node) - num_loader_workers - 1))


def first_item(batch: list[dict]) -> dict:
    """DataLoader collate for batch size 1: the dataset's dict as it is (inputs differ in size)."""
    return batch[0]


def load_model(args: argparse.Namespace, device: torch.device, group: ProcessGroup) -> torch.nn.Module:
    model = build_network(args.network)
    report = load_weights(model, args.weights)
    if group.is_main:
        print(report.summary())
    if report.from_scratch:
        raise UserError(
            f"weights file {args.weights} lacks the trained head ({', '.join(report.from_scratch[:3])} "
            "...): CAMs need trained CPN weights, e.g. the .pth written by train_cpn.py"
        )
    return model.eval().to(device, memory_format=memory_format_for(device))


def folder_manifests(args: argparse.Namespace, outputs: Outputs, precision: str) -> list[FolderManifest]:
    """Each output folder's manifest (tool/manifest.py): the weights' checksum (hashed once) and
    every setting that changes that folder's files. The list, the weights' path and the code
    version are recorded, not compared."""
    checksum = weights_sha256(args.weights)
    # Sorted: the sum over scales does not depend on their order.
    run_settings = {"network": args.network, "scales": sorted(args.scales), "precision": precision}
    version = git_commit()
    return [
        FolderManifest(
            folder,
            weights=args.weights,
            weights_sha256=checksum,
            settings={"output": flag, **run_settings, **format_settings},
            input_list=args.infer_list,
            version=version,
        )
        for folder, flag, format_settings in outputs.folder_formats()
    ]


def main(argv=None) -> None:
    args = parse_args(argv)
    outputs = Outputs.from_args(args)
    if not outputs.folders():
        raise UserError(
            "nothing to write: pass at least one of --out_cam, --out_cam_irn, --out_cam_pred, --out_crf, --vis_dir"
        )
    outputs.check_separate_folders()
    for folder in outputs.folders():
        check_writable_dir(folder)
    # Each rank writes its own images' files: no process group (and no collective) is needed.
    group = ProcessGroup.from_env()
    device = resolve_device(args.device, group.local_rank)
    amp_dtype = resolve_amp(args.amp, device)
    set_fp32_precision(allow_tf32=not args.no_tf32)
    voc_root = check_voc_root(args.voc12_root)
    cls_labels = load_cls_labels(args.cls_labels)
    all_names = load_image_list(args.infer_list)
    missing = [name for name in all_names if name not in cls_labels]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"image {missing[0]}{more} of {args.infer_list} has no class label in {args.cls_labels}; "
            "use the labels made for this list (voc12/make_cls_labels.py) or fix the list"
        )
    if outputs.out_crf is not None:
        require_pydensecrf()  # fail now, not in a worker after the first image
    precision = precision_name(device, amp_dtype, allow_tf32=not args.no_tf32)
    manifests = folder_manifests(args, outputs, precision)
    for manifest in manifests:
        manifest.check(args.overwrite)

    names = all_names[group.rank :: group.world_size]
    todo = names if args.overwrite else [name for name in names if not outputs.done(name)]
    if group.is_main:
        shard = (
            f" (this process's share of {len(all_names)}, {group.world_size} processes)" if group.distributed else ""
        )
        scales = ",".join(f"{scale:g}" for scale in args.scales)
        print(
            f"{len(names)} images{shard}: {len(names) - len(todo)} already done, {len(todo)} to do; "
            f"device {device}, {precision}, scales {scales}"
        )
    if not todo:
        return

    post_workers = (
        args.post_workers
        if args.post_workers is not None
        else default_post_workers(args.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    )
    writer = OutputWriter(post_workers)
    try:
        model = load_model(args, device, group)
        memory_format = memory_format_for(device)
        dataset = InferDataset(voc_root, todo, cls_labels, scales=args.scales)
        loader = DataLoader(
            dataset,
            batch_size=1,
            shuffle=False,
            num_workers=args.num_workers,
            collate_fn=first_item,
            pin_memory=device.type == "cuda",
        )
        with torch.inference_mode():
            for index, sample in enumerate(tqdm(loader, desc="infer_cam", unit="img", disable=not group.is_main)):
                image = sample["image"]
                keys = present_classes(sample["label"])
                sizes = outputs.cam_sizes(image.shape[:2])
                cams = multiscale_cam(
                    model, sample["inputs"], sample["label"], sizes, amp_dtype=amp_dtype, memory_format=memory_format
                )
                present = torch.from_numpy(keys).to(device)
                fg_maps, *irn_fg_maps = [cam[present].cpu().numpy() for cam in cams]
                if index == 0:  # with the folders' first files: a run that fails before leaves none
                    for manifest in manifests:
                        manifest.write()
                image_cams = ImageCams(
                    sample["name"], image, keys, fg_maps, irn_fg_maps=irn_fg_maps[0] if irn_fg_maps else None
                )
                writer.submit(write_outputs, image_cams, outputs)
    finally:
        writer.close()
    if group.is_main:
        print(f"done: {len(todo)} images written")


if __name__ == "__main__":
    run_main(main)
