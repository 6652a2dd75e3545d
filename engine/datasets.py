"""The one description of each data set (issue 11): class names with background at 0, folder layout and
how an image name maps to its file, the default lists folder and the background sweep; and what both
share, the palette (VOC's colour map) and the ignore index. Every script derives its channel counts,
names and paths from one of these; PASCAL VOC 2012 and MS COCO 2014 are the two instances. Torch-free
(evaluation_cam.py reads it)."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError

IGNORE_INDEX = 255  # "void": VOC's object borders, COCO's crowd regions under --crowd ignore
SEGMENTATION_FOLDER = "SegmentationClass"  # SPEC §6: the ground truth CAMs are scored against (both sets)


def _bit_spread_palette() -> np.ndarray:
    """The standard VOC colour map, used for COCO's 81 labels too: the bits of the label index spread
    over R, G, B (256×3 uint8; index 255 is (224, 224, 192))."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


PALETTE = _bit_spread_palette()  # both data sets' label PNGs (engine.fileio.save_label_png) and pictures


def sweep_thresholds(start: float, stop: float, step: float = 0.01) -> tuple[float, ...]:
    """start, start + step, …, stop (inclusive, rounded to 1e-6), as the sweep's background scores."""
    if not (step > 0 and start <= stop):
        raise UserError(f"sweep {start} {stop} {step}: use START <= STOP and a positive STEP")
    count = int(np.floor((stop - start) / step + 1e-6)) + 1
    return tuple(round(start + step * i, 6) for i in range(count))


# What evaluation_cam.py scores: CAMs (or labels made from them), or the segmentation network's labels
# (infer_seg.py's, as the folder's manifest says); the published figures differ by stage.
CAM_STAGE = "CAMs"
SEGMENTATION_STAGE = "segmentation"


def _no_protocol_warnings(gt_dir: Path, num_images: int, stage: str) -> list[str]:
    return []


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the --dataset value
    title: str  # for people: "PASCAL VOC 2012"
    class_names: tuple[str, ...]  # background at 0
    image_folder: Callable[[str], str]  # image name → folder under the root holding <name>.jpg
    root_folders: tuple[str, ...]  # a root holds at least one of these
    root_hint: str  # how to pass the root, for error messages
    lists_dir: str  # where make_cls_labels writes cls_labels.npy and the lists by default
    list_files: dict[str, str]  # the scripts' default files in lists_dir: "train", "infer", "val", "cls_labels"
    make_labels_command: str
    sweep: tuple[float, ...]  # evaluation_cam.py's default background scores
    # (gt_dir, number of listed images, CAM_STAGE or SEGMENTATION_STAGE) → one line per way an evaluation
    # departs from the figures published for this data set; evaluation_cam.py prints them.
    protocol_warnings: Callable[[Path, int, str], list[str]] = _no_protocol_warnings

    def __reduce__(self):
        """Sent to worker processes by name: one instance per data set in every process."""
        return get_dataset, (self.name,)

    @property
    def num_classes(self) -> int:
        """Channels of the CPN head and of the ground truth, background included (21 VOC, 81 COCO)."""
        return len(self.class_names)

    @property
    def num_fg_classes(self) -> int:
        """Length of a class vector (cls_labels.npy) and of a CAM's foreground stack (20, 80)."""
        return len(self.class_names) - 1

    def image_path(self, root: Path, name: str) -> Path:
        return root / self.image_folder(name) / f"{name}.jpg"

    def check_root(self, root: str | os.PathLike) -> Path:
        """The data set's root folder, or a UserError saying which folder to pass."""
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{self.title} folder not found: {root}; {self.root_hint}")
        if any((root / folder).is_dir() for folder in self.root_folders):
            return root
        folders = " or ".join(self.root_folders)
        for candidate in sorted(root.glob("*")) + sorted(root.glob("*/*")):
            if any((candidate / folder).is_dir() for folder in self.root_folders):
                raise UserError(f"{root} is not the {self.title} folder (it has no {folders}); pass {candidate}")
        raise UserError(f"{root} has no {folders} folder; {self.root_hint}")


@dataclass(frozen=True)
class DataSource:
    """A data set description and the root folder its images are under."""

    spec: DatasetSpec
    root: Path

    def image_path(self, name: str) -> Path:
        return self.spec.image_path(self.root, name)


VOC_TRAIN_IMAGES = 1464  # ImageSets/Segmentation/train.txt: the paper's CAM figures
VOC_VAL_IMAGES = 1449  # ImageSets/Segmentation/val.txt
VOC_TRAIN_AUG_IMAGES = 10582  # the paper's training list: (SBD ∪ train) − val
SBD_AUG_LABELS = 12031  # PNGs in the usual SegmentationClassAug download (train_aug + val)
VOC_AUG_FOLDER = "SegmentationClassAug"  # SBD's coarser masks, for the train_aug class labels
PAPER_CAM_MIOU = 57.4  # the paper's CAM mIoU, on VOC train (VOC_TRAIN_IMAGES images)
PAPER_SEG_VAL_MIOU = 67.8  # the paper's segmentation mIoU (IRN pseudo masks → DeepLab-v1), VOC val
PAPER_SEG_TEST_MIOU = 68.5  # the same on VOC test (the evaluation server)


def _voc_protocol_warnings(gt_dir: Path, num_images: int, stage: str) -> list[str]:
    """SPEC §6: the paper scores CAMs against VOC's SegmentationClass, on train; SPEC_SEG §4: the segmentation
    network against the same ground truth, on val (and test, on the server)."""
    warnings = []
    if Path(gt_dir).name == VOC_AUG_FOLDER:
        warnings.append(
            f"--gt_dir {gt_dir} holds SBD's {VOC_AUG_FOLDER} masks, coarser than VOC's; the "
            f"paper scores {stage} against VOC2012/{SEGMENTATION_FOLDER}, so this mIoU is not comparable "
            "with its figures"
        )
    if stage == CAM_STAGE and num_images == VOC_VAL_IMAGES:
        warnings.append(
            f"the list has {VOC_VAL_IMAGES:,} images, as VOC2012 val does; the paper's CAM mIoU "
            f"({PAPER_CAM_MIOU} %) is on train ({VOC_TRAIN_IMAGES:,} images): pass --list "
            ".../ImageSets/Segmentation/train.txt to compare with it"
        )
    return warnings


VOC12 = DatasetSpec(
    name="voc12",
    title="VOC2012",
    class_names=(
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ),
    image_folder=lambda name: "JPEGImages",
    root_folders=("JPEGImages",),
    root_hint="pass the VOC2012 folder of VOCdevkit as --voc12_root (or --data_root)",
    lists_dir="voc12",
    # SPEC §4: CPN trains on train_aug; the paper's CAM figures are on train (SPEC §6).
    list_files={"train": "train_aug.txt", "infer": "train.txt", "val": "val.txt", "cls_labels": "cls_labels.npy"},
    make_labels_command="python voc12/make_cls_labels.py --voc12_root <VOC2012 folder>",
    sweep=sweep_thresholds(0.20, 0.59),  # SPEC §6: 0.20, 0.21, …, 0.59
    protocol_warnings=_voc_protocol_warnings,
)

# COCO 2014's 80 categories in category-id order (ids 1–90 with 10 unused); label k is the k-th.
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
COCO_NAME = re.compile(r"COCO_(train2014|val2014)_\d{12}")


def _coco_image_folder(name: str) -> str:
    """COCO_train2014_000000000009 → train2014 (the official file names)."""
    match = COCO_NAME.fullmatch(name)
    if match is None:
        raise UserError(f"{name!r} is not a COCO 2014 image name (COCO_train2014_<12 digits> or COCO_val2014_…)")
    return match.group(1)


COCO14 = DatasetSpec(
    name="coco14",
    title="COCO 2014",
    class_names=(
        "background",
        "person",
        "bicycle",
        "car",
        "motorcycle",
        "airplane",
        "bus",
        "train",
        "truck",
        "boat",
        "traffic light",
        "fire hydrant",
        "stop sign",
        "parking meter",
        "bench",
        "bird",
        "cat",
        "dog",
        "horse",
        "sheep",
        "cow",
        "elephant",
        "bear",
        "zebra",
        "giraffe",
        "backpack",
        "umbrella",
        "handbag",
        "tie",
        "suitcase",
        "frisbee",
        "skis",
        "snowboard",
        "sports ball",
        "kite",
        "baseball bat",
        "baseball glove",
        "skateboard",
        "surfboard",
        "tennis racket",
        "bottle",
        "wine glass",
        "cup",
        "fork",
        "knife",
        "spoon",
        "bowl",
        "banana",
        "apple",
        "sandwich",
        "orange",
        "broccoli",
        "carrot",
        "hot dog",
        "pizza",
        "donut",
        "cake",
        "chair",
        "couch",
        "potted plant",
        "bed",
        "dining table",
        "toilet",
        "tv",
        "laptop",
        "mouse",
        "remote",
        "keyboard",
        "cell phone",
        "microwave",
        "oven",
        "toaster",
        "sink",
        "refrigerator",
        "book",
        "clock",
        "vase",
        "scissors",
        "teddy bear",
        "hair drier",
        "toothbrush",
    ),
    image_folder=_coco_image_folder,
    root_folders=("train2014", "val2014"),
    root_hint="pass the COCO folder holding train2014/, val2014/ and annotations/ as --data_root",
    lists_dir="coco14",
    list_files={"train": "train.txt", "infer": "train.txt", "val": "val.txt", "cls_labels": "cls_labels.npy"},
    make_labels_command="python coco14/make_cls_labels.py --coco_root <COCO folder>",
    # COCO's best background score sits lower than VOC's (many small objects per image).
    sweep=sweep_thresholds(0.05, 0.59),
)

DATASETS = {spec.name: spec for spec in (VOC12, COCO14)}


def get_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def add_dataset_arguments(parser: argparse.ArgumentParser, *, root: bool = True) -> None:
    """--dataset, and (root=True) --data_root with --voc12_root as VOC's spelling of it."""
    parser.add_argument("--dataset", choices=tuple(DATASETS), default=VOC12.name, help="default: voc12")
    if root:
        parser.add_argument("--data_root", help="the data set's root (VOC2012 folder, or COCO's with train2014/)")
        parser.add_argument("--voc12_root", help="the VOC2012 folder (holds JPEGImages): --data_root's VOC spelling")


def data_source(args: argparse.Namespace) -> DataSource:
    """The checked root of --data_root / --voc12_root for --dataset; one line when they disagree."""
    spec = get_dataset(args.dataset)
    if args.voc12_root is not None and spec is not VOC12:
        raise UserError(f"--voc12_root names a VOC folder but --dataset is {spec.name}; pass --data_root")
    if args.voc12_root is not None and args.data_root not in (None, args.voc12_root):
        raise UserError("--data_root and --voc12_root name different folders; pass one")
    root = args.data_root if args.data_root is not None else args.voc12_root
    if root is None:
        raise UserError(f"no data set folder: {spec.root_hint}")
    return DataSource(spec, spec.check_root(root))


def fill_list_defaults(args: argparse.Namespace, here: Path, **kinds: str) -> argparse.Namespace:
    """Each named argument left at None becomes the data set's default file (`kinds`: argument →
    "train" / "infer" / "val" / "cls_labels"), under <here>/<lists_dir>."""
    spec = get_dataset(args.dataset)
    for argument, kind in kinds.items():
        if getattr(args, argument) is None:
            setattr(args, argument, str(here / spec.lists_dir / spec.list_files[kind]))
    return args


def list_default_help(kind: str) -> str:
    """The help text of a list argument whose default depends on --dataset."""
    defaults = ", ".join(f"{spec.lists_dir}/{spec.list_files[kind]} for {spec.name}" for spec in DATASETS.values())
    return f"default: {defaults}"
