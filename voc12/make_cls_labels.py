"""Write cls_labels.npy and the train / val / train_aug image lists for a VOC2012 folder.

    python voc12/make_cls_labels.py --voc12_root .../VOCdevkit/VOC2012 [--out_dir voc12]

Names come from ImageSets/Segmentation/{train,val}.txt plus, when the folder has one, the
PNG names of SegmentationClassAug (the SBD-augmented labels). Class vectors come from the
Annotations XML, as the reference made its cls_labels.npy: every object counts, difficult
ones included. train_aug = (aug ∪ train) − val. Lists are sorted, one image name per line
(the ImageSets form; voc12.data.load_image_list also reads the reference's path form).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from engine.datasets import (
    SBD_AUG_LABELS,
    VOC12,
    VOC_AUG_FOLDER,
    VOC_TRAIN_AUG_IMAGES,
    VOC_TRAIN_IMAGES,
    VOC_VAL_IMAGES,
)
from engine.errors import run_main
from engine.fileio import atomic_path, save_npy
from voc12.data import cls_labels_from_xml
from voc12.lists import load_image_list

REFERENCE_BATCH, REFERENCE_EPOCHS = 4, 8  # SPEC §4: the schedule a list's size turns into steps


def train_aug_warning(splits: dict[str, list[str]], aug_labels: int | None) -> str | None:
    """One line when the official VOC 2012 lists give a train_aug other than the paper's 10,582
    images, naming what is missing; None otherwise (also for other data sets, such as the toy set).
    `aug_labels`: PNGs in SegmentationClassAug, None when the folder is absent."""
    num_train_aug = len(splits["train_aug"])
    official = len(splits["train"]) == VOC_TRAIN_IMAGES and len(splits["val"]) == VOC_VAL_IMAGES
    if not official or num_train_aug == VOC_TRAIN_AUG_IMAGES:
        return None
    if aug_labels is None:
        cause = f"there is no {VOC_AUG_FOLDER} folder (SBD's masks; README, step 1)"
    else:
        cause = f"{VOC_AUG_FOLDER} holds {aug_labels:,} PNGs, the usual download {SBD_AUG_LABELS:,}"
    steps = num_train_aug // REFERENCE_BATCH * REFERENCE_EPOCHS
    paper_steps = VOC_TRAIN_AUG_IMAGES // REFERENCE_BATCH * REFERENCE_EPOCHS
    return (
        f"train_aug has {num_train_aug:,} images, not the paper's {VOC_TRAIN_AUG_IMAGES:,}: {cause}; "
        f"the reference schedule on it is {steps:,} steps instead of {paper_steps:,}"
    )


@dataclass(frozen=True)
class WrittenLists:
    paths: dict[str, Path]  # keyed "cls_labels", "train", "val", "train_aug"
    warning: str | None  # train_aug_warning's line


def make_cls_labels(voc12_root: str | os.PathLike, out_dir: str | os.PathLike = "voc12") -> WrittenLists:
    """Write the four files into `out_dir`; return their paths and the train_aug warning."""
    root = VOC12.check_root(voc12_root)
    split_dir = root / "ImageSets" / "Segmentation"
    train = set(load_image_list(split_dir / "train.txt"))
    val = set(load_image_list(split_dir / "val.txt"))
    aug_dir = root / VOC_AUG_FOLDER
    aug = {path.stem for path in aug_dir.glob("*.png")} if aug_dir.is_dir() else None
    splits = {"train": sorted(train), "val": sorted(val), "train_aug": sorted(((aug or set()) | train) - val)}

    out_dir = Path(out_dir)
    paths = {"cls_labels": out_dir / "cls_labels.npy"}
    save_npy(paths["cls_labels"], cls_labels_from_xml(root, sorted(train | val | (aug or set()))))
    for split, names in splits.items():
        paths[split] = out_dir / f"{split}.txt"
        with atomic_path(paths[split]) as tmp_path:
            tmp_path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return WrittenLists(paths, train_aug_warning(splits, None if aug is None else len(aug)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write cls_labels.npy and train/val/train_aug lists from a VOC2012 folder."
    )
    parser.add_argument("--voc12_root", required=True, help="the VOC2012 folder (holds JPEGImages, Annotations)")
    parser.add_argument("--out_dir", default="voc12", help="where to write the four files (default: voc12)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    written = make_cls_labels(args.voc12_root, args.out_dir)
    paths = written.paths
    for split in ("train", "val", "train_aug"):
        print(f"wrote {paths[split]} ({len(load_image_list(paths[split]))} images)")
    print(f"wrote {paths['cls_labels']}")
    if written.warning:
        print(f"warning: {written.warning}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
