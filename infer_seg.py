"""Segmentation inference (SPEC_SEG §4): the DeepLab network's multi-scale, flipped class probabilities, the
dense CRF, one label PNG per image; on VOC 2012 test, the evaluation server's submission (SPEC_SEG §6).

One GPU:   python infer_seg.py --weights SEG/deeplabv1_resnet38.pth --voc12_root VOC2012 --out_seg out_seg
VOC test:  python infer_seg.py --weights SEG/deeplabv1_resnet38.pth --voc12_root VOC2012 \\
               --infer_list VOC2012/ImageSets/Segmentation/test.txt --out_submission submission
COCO 2014: python infer_seg.py --dataset coco14 --data_root COCO --weights SEG/coco.pth --out_seg out_seg
Several:   torchrun --nproc_per_node=N infer_seg.py ...  (each process takes every N-th image)

Per image, as the reference's test.py: the normalised image at scales 0.5 … 1.75 (--scales), each with its
flip (--no_flip: without), through the network; the 12 logit maps resized to the image, averaged, softmax;
one mean-field iteration of the dense CRF on the de-normalised image (--crf_iters; 0: no CRF); argmax.
The CRFs run in worker processes while the network computes the next images.

Outputs (at least one):
  --out_seg DIR         <name>.png: palette PNG, index = class (0..20 VOC, 0..80 COCO), at the image's size
  --out_submission DIR  the same PNGs as DIR/results/VOC2012/Segmentation/comp6_test_cls/<name>.png, and
                        DIR/results.tar.gz of results/ once every listed image is done: upload that (VOC only)
Images whose outputs exist are skipped, so an interrupted run resumes. Each folder's manifest.json records the
weights' checksum, scales, flip, CRF and precision (a rerun with others is refused unless --overwrite) and, as a
record, the training run that made the weights (its <weights>.json: arguments, pseudo-label folder among them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.datasets import (
    VOC12,
    DatasetSpec,
    DataSource,
    add_dataset_arguments,
    data_source,
    fill_list_defaults,
    list_default_help,
)
from engine.errors import UserError, and_more, run_main
from engine.fileio import atomic_path, save_label_png
from engine.manifest import FolderManifest
from engine.outputs import OutputFolder, OutputFormat, Outputs, add_output_arguments, add_overwrite_argument
from engine.parallel import WorkerPool, default_pool_workers
from engine.runtime import ProcessGroup, Runtime, add_runtime_arguments, memory_format_for
from engine.stage import Share
from network.weights import load_network, weights_width
from tool.constants import SEG_TEST_SCALES
from tool.crf import DEEPLAB_CRF, CrfSettings, crf_inference, require_pydensecrf
from tool.seg import img_denorm, multiscale_probabilities
from voc12.data import first_item, load_image_list
from voc12.seg_data import SegTestDataset

SEG_NETWORK = "network.resnet38_deeplab"
LOADER_WORKERS = 2  # a sample is one JPEG and six resizes: cheap next to 12 forwards
# SPEC_SEG §6: VOCinit.m's result path for comp6 (own training data), test set; the server takes results/ archived.
SUBMISSION_FOLDER = Path("results/VOC2012/Segmentation/comp6_test_cls")
SUBMISSION_ARCHIVE = "results.tar.gz"


# --- One image: probabilities on the device, the CRF's label in a worker ---------------------


def load_model(weights: str, dataset: DatasetSpec, device: torch.device, group: ProcessGroup) -> torch.nn.Module:
    """DeepLab (SPEC_SEG §1) with trained weights, in eval mode on `device`. load_weights refuses CPN, IRN and
    other-data-set files by name; an ImageNet ResNet-38, which lacks the trained head, is refused here."""
    model, report = load_network(SEG_NETWORK, weights, dataset)  # at the width the file holds
    if report.from_scratch:
        raise UserError(
            f"weights file {weights} has no trained DeepLab head ({and_more(report.from_scratch, 3)}): "
            "an ImageNet ResNet-38 is where training starts; pass the DeepLab weights training wrote"
        )
    if group.is_main:
        print(report.summary())
    return model.eval().to(device, memory_format=memory_format_for(device))


@dataclass
class ImageProbs:
    """One image's network result, sent to a CRF worker: the unscaled normalised image (3×H×W float32, of
    which img_denorm makes the CRF's image) and the class probabilities (K×H×W float32)."""

    name: str
    image: np.ndarray = field(repr=False)
    probs: np.ndarray = field(repr=False)


@dataclass
class ImageLabel:
    name: str
    label: np.ndarray = field(repr=False)


def seg_label(result: ImageProbs, crf: CrfSettings | None) -> np.ndarray:
    """SPEC_SEG §4's last steps: the dense CRF on the de-normalised image (skipped for None), argmax with the
    first maximum winning → uint8 H×W class indices."""
    probs = result.probs if crf is None else crf_inference(img_denorm(result.image), result.probs, crf)
    return probs.argmax(axis=0).astype(np.uint8)


def label_and_write(outputs: Outputs, result: ImageProbs, crf: CrfSettings | None) -> None:
    """A worker's job: one image's label, written to every output folder."""
    outputs.write(ImageLabel(result.name, seg_label(result, crf)))


# --- Outputs ---------------------------------------------------------------------------------


def write_label(result: ImageLabel, folder: OutputFolder) -> None:
    # Palette PNG, index = class (the reference writes palette-less grayscale, SPEC_SEG §4-6).
    save_label_png(folder.file(result.name), result.label)


@dataclass(frozen=True)
class SubmissionFormat(OutputFormat):
    """--out_submission DIR: the label PNGs in DIR/SUBMISSION_FOLDER, the layout the VOC server reads."""

    def folders(self, args: argparse.Namespace) -> list[OutputFolder]:
        return [dataclasses.replace(folder, path=folder.path / SUBMISSION_FOLDER) for folder in super().folders(args)]


OUTPUT_FORMATS = (
    OutputFormat("out_seg", ".png", write_label, help="label PNGs: <name>.png, palette, index = class"),
    SubmissionFormat(
        "out_submission",
        ".png",
        write_label,
        help=f"VOC test-server submission: DIR/{SUBMISSION_FOLDER}/<name>.png and DIR/{SUBMISSION_ARCHIVE}",
    ),
)


def write_submission_archive(out_dir: Path, names: list[str]) -> None:
    """SPEC_SEG §6: DIR/results.tar.gz holding results/…/comp6_test_cls/<name>.png of every listed image (the
    folder's manifest left out), atomically; not yet while another process's images are missing."""
    missing = [name for name in names if not (out_dir / SUBMISSION_FOLDER / f"{name}.png").is_file()]
    if missing:
        print(f"{out_dir / SUBMISSION_ARCHIVE} not written yet: {len(missing)} of {len(names)} images are not done")
        return
    with atomic_path(out_dir / SUBMISSION_ARCHIVE) as tmp_path, tarfile.open(tmp_path, "w:gz") as archive:
        for name in names:
            archive.add(out_dir / SUBMISSION_FOLDER / f"{name}.png", arcname=str(SUBMISSION_FOLDER / f"{name}.png"))
    print(f"submission: {out_dir / SUBMISSION_ARCHIVE} ({len(names)} PNGs); upload it to the VOC evaluation server")


def training_run(weights: str) -> dict:
    """The record of the run that trained the weights, for the manifests: engine.training.write_run_record's
    <weights stem>.json beside them (its arguments name the pseudo-label folder), or None where there is none."""
    record_path = Path(weights).with_suffix(".json")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict):
        return {"training_run": None}
    run = {"record": str(record_path.resolve()), "args": record.get("args"), "git_commit": record.get("git_commit")}
    return {"training_run": run}


# --- Script ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="trained DeepLab weights (network.resnet38_deeplab)")
    add_dataset_arguments(parser)  # --dataset, --data_root and VOC's --voc12_root
    parser.add_argument("--infer_list", help="images to segment; " + list_default_help("val"))
    add_output_arguments(parser, OUTPUT_FORMATS)
    parser.add_argument(
        "--scales", type=float, nargs="+", default=SEG_TEST_SCALES, help="default: 0.5 0.75 1 1.25 1.5 1.75"
    )
    parser.add_argument("--no_flip", action="store_true", help="one forward per scale instead of two (image, flip)")
    parser.add_argument(
        "--crf_iters",
        type=int,
        default=DEEPLAB_CRF.iterations,
        help="mean-field iterations of the dense CRF (default 1, the reference's; 0: argmax of the probabilities)",
    )
    # fp32 by default, as the reference; --amp covers the network only.
    add_runtime_arguments(parser)
    parser.add_argument("--num_workers", type=int, default=LOADER_WORKERS, help="loader processes per GPU process")
    parser.add_argument(
        "--post_workers",
        type=int,
        default=None,
        help="processes running the CRF and writing the PNGs while the network runs "
        "(0: in the main process; default: the cores the loader leaves, at most 8)",
    )
    add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    if min(args.scales) <= 0 or args.crf_iters < 0:
        parser.error("--scales must be positive and --crf_iters at least 0")
    return fill_list_defaults(args, here, infer_list="val")


def segment(
    args: argparse.Namespace,
    source: DataSource,
    share: Share,
    outputs: Outputs,
    manifests: list[FolderManifest],
    crf: CrfSettings | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    group: ProcessGroup,
) -> None:
    """This process's images to do: the network on the device, the CRFs and writes in the worker pool meanwhile."""
    dataset = SegTestDataset(source, share.todo, args.scales)  # checks that every image exists
    post_workers = default_pool_workers(args.num_workers) if args.post_workers is None else args.post_workers
    with WorkerPool(post_workers, preload=["infer_seg"]) as pool:  # the workers' imports overlap the loading
        model = load_model(args.weights, source.spec, device, group)
        pin = device.type == "cuda"
        loader = DataLoader(dataset, batch_size=1, num_workers=args.num_workers, collate_fn=first_item, pin_memory=pin)
        for index, sample in enumerate(tqdm(loader, desc="infer_seg", unit="img", disable=not group.is_main)):
            probs = multiscale_probabilities(
                model,
                sample["inputs"],
                tuple(sample["image"].shape[1:]),
                flip=not args.no_flip,
                amp_dtype=amp_dtype,
                memory_format=memory_format_for(device),
            )
            if index == 0:  # with the folders' first files: a run that fails before leaves none
                for manifest in manifests:
                    manifest.write()
            result = ImageProbs(sample["name"], sample["image"].numpy(), probs.cpu().numpy())
            pool.submit(label_and_write, outputs, result, crf)
    if group.is_main:
        print(f"done: {len(share.todo)} images written")


def main(argv=None) -> None:
    args = parse_args(argv)
    # ---- checks: everything a user can get wrong fails here, before any work ----
    source = data_source(args)
    all_names = load_image_list(args.infer_list)
    outputs = Outputs.from_args(OUTPUT_FORMATS, args)
    outputs.check()
    if args.out_submission is not None and source.spec is not VOC12:
        raise UserError(f"--out_submission writes the VOC 2012 server's layout; --dataset is {source.spec.name}")
    crf = dataclasses.replace(DEEPLAB_CRF, iterations=args.crf_iters) if args.crf_iters else None
    if crf is not None:
        require_pydensecrf()  # fail now, not in a worker after the first image
    group = ProcessGroup.from_env()
    runtime = Runtime.decide(args, group, fixed_input_size=False)  # images of many sizes: no autotuning
    device, amp_dtype, precision = runtime.device, runtime.amp_dtype, runtime.precision
    run_settings = {
        "dataset": source.spec.name,
        "network": SEG_NETWORK,
        "width": weights_width(SEG_NETWORK, args.weights),
        "scales": sorted(args.scales),  # the mean over scales does not depend on their order
        "flip": not args.no_flip,
        "crf": dataclasses.asdict(crf) if crf else None,
        "precision": precision,
    }
    manifests = outputs.manifests(args.weights, run_settings, args.infer_list, provenance=training_run(args.weights))
    for manifest in manifests:
        manifest.check(args.overwrite)

    # ---- this process's images, then the submission archive once the whole list is done ----
    share = Share.of(all_names, group, outputs, args.overwrite)
    scales = " ".join(f"{scale:g}" for scale in args.scales)
    flips = "without flips" if args.no_flip else "with flips"
    share.report(f"device {device}, {precision}, scales {scales} {flips}, CRF iterations {args.crf_iters}")
    if share.todo:
        segment(args, source, share, outputs, manifests, crf, device, amp_dtype, group)
    if args.out_submission is not None:
        write_submission_archive(Path(args.out_submission), all_names)


if __name__ == "__main__":
    run_main(main)
