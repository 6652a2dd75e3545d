"""Paint COCO 2014's semantic label PNGs and write cls_labels.npy and the train / val image lists.

    python coco14/make_cls_labels.py --coco_root .../coco [--out_dir coco14] [--seg_dir DIR]
        [--crowd background|ignore] [--num_workers N] [--overwrite]

From the official layout (annotations/instances_{train,val}2014.json, train2014/, val2014/) it paints
one palette PNG per image into --seg_dir (default <coco_root>/SegmentationClass), named after the
image file: 0 background, k for the k-th of COCO's 80 category ids (COCO_CATEGORY_IDS, so id 13
"stop sign" is 12). Instances (iscrowd=0) are painted in the JSON's annotation order, a later one
winning where two overlap. Crowd regions (iscrowd=1) stay background, or with --crowd ignore are 255
where no instance covers them (crowd is painted first, the instances over it). The masks need only
the JSON's image sizes: no JPEG is decoded.

An image's class vector (float32[80] multi-hot) holds the classes its PNG shows, so masks and
vectors agree: a class present only as crowd, or whose instances later ones cover entirely, does not
count. train.txt lists the train2014 images with at least one class (COCO has some with none),
val.txt every val2014 image; both sorted, one name per line.

--seg_dir holds a manifest.json (engine/manifest.py) of the annotations' checksum and --crowd. A rerun
with the same ones keeps each PNG already there and reads it back, so an interrupted run resumes; one
with other annotations or another --crowd stops before any work (no folder mixes two), unless
--overwrite, which repaints every PNG and rewrites the manifest.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from engine.cores import usable_cores
from engine.datasets import COCO14, COCO_CATEGORY_IDS, IGNORE_INDEX, SEGMENTATION_FOLDER
from engine.errors import UserError, and_more, run_main
from engine.fileio import atomic_path, check_writable_dir, read_label_png, save_label_png, save_npy
from engine.manifest import FolderManifest, git_commit, weights_sha256
from engine.parallel import map_unordered

SPLITS = ("train", "val")
CROWD_LABELS = {"background": 0, "ignore": IGNORE_INDEX}
LAYOUT_HINT = "pass the COCO folder holding annotations/, train2014/ and val2014/ as --coco_root"


@dataclass(frozen=True)
class ImageJob:
    """What painting one image needs: its name (the file's stem), size and segmentations."""

    name: str
    height: int
    width: int
    instances: tuple[tuple[int, object], ...]  # (label 1..80, segmentation) per iscrowd=0 annotation, JSON order
    crowds: tuple[object, ...]  # segmentation per iscrowd=1 annotation


@dataclass(frozen=True)
class LabelledImage:
    name: str
    class_vector: np.ndarray  # float32[80]
    painted: bool  # False: its PNG was already there


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}2014.json"


def check_layout(coco_root: str | os.PathLike) -> Path:
    """The root, or a UserError naming the first missing image folder or annotations file."""
    root = Path(coco_root)
    for split in SPLITS:
        if not (root / f"{split}2014").is_dir():
            raise UserError(f"COCO image folder not found: {root / f'{split}2014'}; {LAYOUT_HINT}")
        if not annotation_path(root, split).is_file():
            raise UserError(
                f"COCO annotations not found: {annotation_path(root, split)}; unpack annotations_trainval2014.zip "
                f"into {root} ({LAYOUT_HINT})"
            )
    return root


def annotations_sha256(root: Path) -> str:
    """sha256 over the instances JSONs' own sha256s (in SPLITS order). The annotations determine the
    PNGs as weights do a CAM folder's, so this is the manifest's `weights_sha256`."""
    digests = "".join(weights_sha256(annotation_path(root, split)) for split in SPLITS)
    return hashlib.sha256(digests.encode("ascii")).hexdigest()


def read_instances(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}; download COCO 2014's annotations again") from None


def category_labels(instances: dict, path: Path) -> dict[int, int]:
    """COCO category id → label 1..80, once the JSON's categories are checked to be COCO's 80."""
    expected = list(zip(COCO_CATEGORY_IDS, COCO14.class_names[1:]))
    found = sorted((category["id"], category["name"]) for category in instances.get("categories", []))
    if found != expected:
        unexpected = [f"{cat_id} {name!r}" for cat_id, name in found if (cat_id, name) not in expected]
        missing = [f"{cat_id} {name!r}" for cat_id, name in expected if (cat_id, name) not in found]
        raise UserError(
            f"{path} does not hold COCO's 80 categories (not in COCO: {and_more(unexpected) or 'none'}; "
            f"missing: {and_more(missing) or 'none'}); pass the official instances JSON of COCO 2014"
        )
    return {category_id: label for label, category_id in enumerate(COCO_CATEGORY_IDS, start=1)}


def image_jobs(instances: dict, labels: dict[int, int]) -> list[ImageJob]:
    """One job per image of the JSON, its annotations in the JSON's order."""
    by_image = {image["id"]: ([], []) for image in instances["images"]}
    for annotation in instances["annotations"]:
        image_instances, image_crowds = by_image[annotation["image_id"]]
        if annotation["iscrowd"]:
            image_crowds.append(annotation["segmentation"])
        else:
            image_instances.append((labels[annotation["category_id"]], annotation["segmentation"]))
    jobs = []
    for image in instances["images"]:
        image_instances, image_crowds = by_image[image["id"]]
        name = Path(image["file_name"]).stem
        jobs.append(ImageJob(name, image["height"], image["width"], tuple(image_instances), tuple(image_crowds)))
    return jobs


def segmentation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """bool H×W of a polygon list, an uncompressed RLE (counts a list: COCO's crowd regions) or a
    compressed RLE (counts a string), rasterised as pycocotools' COCO.annToMask does."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def paint_label(job: ImageJob, crowd_label: int) -> np.ndarray:
    """uint8 H×W: crowd regions as `crowd_label`, then the instances over them in order."""
    label = np.zeros((job.height, job.width), np.uint8)
    if crowd_label:
        for segmentation in job.crowds:
            label[segmentation_mask(segmentation, job.height, job.width)] = crowd_label
    for class_label, segmentation in job.instances:
        label[segmentation_mask(segmentation, job.height, job.width)] = class_label
    return label


def class_vector(label: np.ndarray) -> np.ndarray:
    """float32[80]: 1 for each label 1..80 the map shows."""
    counts = np.bincount(label.ravel(), minlength=256)
    return (counts[1 : COCO14.num_classes] > 0).astype(np.float32)


def label_one(job: ImageJob, seg_dir: Path, crowd_label: int, overwrite: bool = False) -> LabelledImage:
    """Paint and write the image's PNG (atomically), or read back the one already there unless `overwrite`."""
    path = seg_dir / f"{job.name}.png"
    if overwrite or not path.is_file():
        label = paint_label(job, crowd_label)
        save_label_png(path, label)
        return LabelledImage(job.name, class_vector(label), painted=True)
    label = read_label_png(path)
    if label.shape != (job.height, job.width):
        raise UserError(
            f"{path} is {label.shape[1]}×{label.shape[0]} but the annotations' image is {job.width}×{job.height}; "
            f"it was painted from other annotations: pass --overwrite to repaint {seg_dir}"
        )
    return LabelledImage(job.name, class_vector(label), painted=False)


def label_images(
    jobs: list[ImageJob],
    seg_dir: Path,
    crowd_label: int,
    num_workers: int,
    desc: str = "labels",
    overwrite: bool = False,
) -> list[LabelledImage]:
    """label_one over the jobs in `num_workers` processes (0: this one), with a progress bar."""
    job = functools.partial(label_one, seg_dir=seg_dir, crowd_label=crowd_label, overwrite=overwrite)
    labelled = map_unordered(job, jobs, num_workers, max_chunk=64)
    return list(tqdm(labelled, total=len(jobs), desc=desc, unit="img", dynamic_ncols=True))


@dataclass(frozen=True)
class WrittenLabels:
    paths: dict[str, Path]  # keyed "cls_labels", "train", "val"
    seg_dir: Path
    list_sizes: dict[str, int]  # keyed "train", "val"
    dropped: int  # train2014 images left out of train.txt: no labelled object
    painted: int  # PNGs painted by this run
    kept: int  # PNGs already there


def make_cls_labels(
    coco_root: str | os.PathLike,
    out_dir: str | os.PathLike = COCO14.lists_dir,
    seg_dir: str | os.PathLike | None = None,
    crowd: str = "background",
    num_workers: int = 0,
    overwrite: bool = False,
) -> WrittenLabels:
    """Paint the PNGs into `seg_dir` (default <coco_root>/SegmentationClass) and write the three
    files into `out_dir`; `crowd` is a key of CROWD_LABELS. Refused before any work when `seg_dir`'s
    manifest names other annotations or another `crowd`, unless `overwrite` (repaint every PNG)."""
    root = check_layout(coco_root)
    seg_dir = root / SEGMENTATION_FOLDER if seg_dir is None else Path(seg_dir)
    out_dir = Path(out_dir)
    check_writable_dir(seg_dir)
    check_writable_dir(out_dir)
    manifest = FolderManifest(
        seg_dir,
        weights=root / "annotations",
        weights_sha256=annotations_sha256(root),
        settings={"output": "coco14 label PNGs", "crowd": crowd},
        input_list=root / "annotations",
        version=git_commit(),
    )
    manifest.check(overwrite)

    labelled: dict[str, list[LabelledImage]] = {}
    for split in SPLITS:
        path = annotation_path(root, split)
        print(f"reading {path}", flush=True)
        instances = read_instances(path)
        jobs = image_jobs(instances, category_labels(instances, path))
        # Before the first PNG, once a JSON is known good (the second split's call changes nothing).
        manifest.write()
        labelled[split] = label_images(
            jobs, seg_dir, CROWD_LABELS[crowd], num_workers, desc=f"{split}2014", overwrite=overwrite
        )

    every_image = labelled["train"] + labelled["val"]
    splits = {
        "train": sorted(image.name for image in labelled["train"] if image.class_vector.any()),
        "val": sorted(image.name for image in labelled["val"]),
    }
    paths = {"cls_labels": out_dir / "cls_labels.npy"}
    save_npy(paths["cls_labels"], {image.name: image.class_vector for image in every_image})
    for split, names in splits.items():
        paths[split] = out_dir / f"{split}.txt"
        with atomic_path(paths[split]) as tmp_path:
            tmp_path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    painted = sum(image.painted for image in every_image)
    return WrittenLabels(
        paths=paths,
        seg_dir=seg_dir,
        list_sizes={split: len(names) for split, names in splits.items()},
        dropped=len(labelled["train"]) - len(splits["train"]),
        painted=painted,
        kept=len(every_image) - painted,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Paint COCO 2014's label PNGs; write cls_labels.npy and the train/val lists."
    )
    parser.add_argument("--coco_root", required=True, help="the COCO folder (holds annotations/, train2014/, val2014/)")
    parser.add_argument("--out_dir", default=COCO14.lists_dir, help="where to write the three files (default: coco14)")
    parser.add_argument(
        "--seg_dir", default=None, help=f"where to paint the label PNGs (default: <coco_root>/{SEGMENTATION_FOLDER})"
    )
    parser.add_argument(
        "--crowd",
        choices=tuple(CROWD_LABELS),
        default="background",
        help=f"crowd regions as background (default) or {IGNORE_INDEX}, where no instance covers them",
    )
    parser.add_argument(
        "--num_workers", type=int, default=usable_cores(), help="processes painting (0: this one; default: all cores)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="repaint every PNG and rewrite --seg_dir's manifest, even when it was painted from other annotations "
        "or with another --crowd",
    )
    args = parser.parse_args(argv)
    if args.num_workers < 0:
        parser.error("--num_workers must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    written = make_cls_labels(
        args.coco_root, args.out_dir, args.seg_dir, args.crowd, args.num_workers, overwrite=args.overwrite
    )
    paths, sizes = written.paths, written.list_sizes
    print(
        f"wrote {paths['train']} ({sizes['train']:,} of {sizes['train'] + written.dropped:,} train2014 images; "
        f"{written.dropped:,} with no labelled object left out)"
    )
    print(f"wrote {paths['val']} ({sizes['val']:,} images)")
    print(f"wrote {paths['cls_labels']}")
    print(f"label PNGs in {written.seg_dir}: {written.painted:,} painted, {written.kept:,} already there")


if __name__ == "__main__":
    run_main(main)
