"""A tiny synthetic data set in MS COCO 2014's layout, for tests and the demo.

    python -m coco14.toy OUT [--num_train 48] [--num_val 16] [--seed 0]

    train2014/COCO_train2014_<id, 12 digits>.jpg    val2014/COCO_val2014_<id>.jpg
    annotations/instances_{train,val}2014.json      COCO's format, all 80 categories

Each image shows one to three objects on a textured grey background; each of the five toy classes
has its own polygon, hue and texture, so a network learns them in a few hundred steps. An image's
second object overlaps its first, in front of it as it comes later in the annotations. Objects are
annotated as polygons or compressed RLE (COCO's iscrowd=0 forms); some images also hold a crowd, a
cluster of small same-class shapes annotated as one iscrowd=1 uncompressed RLE, as COCO does.
COCO's awkward files are here too: the first train image is a grayscale JPEG, the second a CMYK one,
and the last train image has no annotations (make_cls_labels leaves it out of train.txt).
The same seed gives byte-identical files (each image draws from its own seeded generator).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from coco14.make_cls_labels import segmentation_mask
from engine.datasets import COCO14, COCO_CATEGORY_IDS
from engine.errors import run_main
from engine.fileio import atomic_path, save_jpeg
from engine.toy_drawing import (
    checkerboard,
    diagonal_stripes,
    flat,
    grey_background,
    horizontal_stripes,
    vertical_stripes,
)

IMAGE_SIDE_RANGE = (64, 160)
MAX_OBJECTS = 3
OBJECT_SIDE_RANGE = (0.35, 0.6)  # of the image's short side
MIN_OBJECT_SIDE = 16
CROWD_FRACTION = 0.25  # images holding a crowd
CROWD_SHAPES = (3, 6)  # shapes in a crowd, inclusive
CROWD_HALF_SIDE = (4.0, 7.0)  # pixels
RLE_FRACTION = 1 / 3  # objects annotated as compressed RLE rather than polygons
GRAYSCALE_INDEX, CMYK_INDEX = 0, 1  # train images saved in these JPEG modes; the last train image is empty


def _regular_polygon(corners: int, phase: float) -> tuple[tuple[float, float], ...]:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return tuple(zip(np.cos(angles).tolist(), np.sin(angles).tolist()))


_BAR = 0.38
CROSS = (
    (-_BAR, -1), (_BAR, -1), (_BAR, -_BAR), (1, -_BAR), (1, _BAR), (_BAR, _BAR),
    (_BAR, 1), (-_BAR, 1), (-_BAR, _BAR), (-1, _BAR), (-1, -_BAR), (-_BAR, -_BAR),
)  # fmt: skip
RECTANGLE = ((-1, -1), (1, -1), (1, 1), (-1, 1))
OCTAGON = _regular_polygon(8, np.pi / 8)
TRIANGLE = ((0, -1), (1, 1), (-1, 1))
DIAMOND = ((0, -1), (1, 0), (0, 1), (-1, 0))


@dataclass(frozen=True)
class ToyClass:
    name: str  # a COCO class name
    polygon: tuple[tuple[float, float], ...]  # (u, v) corners in [-1, 1]²
    rgb: tuple[int, int, int]
    texture: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y, x) -> 0 or 1

    @property
    def category_id(self) -> int:
        return COCO_CATEGORY_IDS[COCO14.class_names.index(self.name) - 1]


# Hues far apart, each with its own polygon and texture (the VOC toy's textures); "stop sign" (id 13) comes after COCO's
# first unused id (12), so its label (12) is not its id.
TOY_CLASSES = (
    ToyClass("person", CROSS, (210, 50, 200), vertical_stripes),
    ToyClass("car", RECTANGLE, (235, 205, 30), checkerboard),
    ToyClass("stop sign", OCTAGON, (220, 40, 40), flat),
    ToyClass("cat", TRIANGLE, (40, 80, 230), horizontal_stripes),
    ToyClass("pizza", DIAMOND, (40, 190, 60), diagonal_stripes),
)


@dataclass(frozen=True)
class ToyAnnotation:
    toy_class: ToyClass
    segmentation: list | dict  # as written to the JSON
    mask: np.ndarray  # bool H×W, the segmentation rasterised as make_cls_labels does
    iscrowd: int


@dataclass(frozen=True)
class ToyImage:
    image_id: int
    split: str  # "train" or "val"
    height: int
    width: int
    annotations: list[ToyAnnotation]  # in JSON order

    @property
    def name(self) -> str:
        return f"COCO_{self.split}2014_{self.image_id:012d}"


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool H×W mask, as its crowd regions are stored: run lengths in
    column-major order, starting with a (possibly empty) run of zeros."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(bounds).tolist()
    return {"counts": [0, *counts] if flat[0] else counts, "size": list(mask.shape)}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": list(mask.shape)}


def _polygon(
    toy_class: ToyClass, centre: tuple[float, float], half: tuple[float, float], height: int, width: int
) -> list[list[float]]:
    """COCO's polygon form ([[x1, y1, x2, …]], pixel corners, 2 decimals) of the class's shape in a box."""
    corners = np.asarray(toy_class.polygon, np.float64) * np.asarray(half)[::-1] + np.asarray(centre)[::-1]
    corners = np.clip(corners, 0, (width, height))
    return [[round(float(value), 2) for value in corners.ravel()]]


def _crowd(rng: np.random.Generator, height: int, width: int) -> ToyAnnotation:
    """A cluster of small shapes of one class, one uncompressed RLE."""
    toy_class = TOY_CLASSES[int(rng.integers(len(TOY_CLASSES)))]
    spread = 0.25 * min(height, width)
    cluster_centre = rng.uniform((spread, spread), (height - spread, width - spread))
    mask = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(CROWD_SHAPES[0], CROWD_SHAPES[1] + 1))):
        centre = cluster_centre + rng.uniform(-spread, spread, size=2)
        half = (rng.uniform(*CROWD_HALF_SIDE),) * 2
        mask |= segmentation_mask(_polygon(toy_class, tuple(centre), half, height, width), height, width)
    return ToyAnnotation(toy_class, uncompressed_rle(mask), mask, iscrowd=1)


def toy_annotations(
    rng: np.random.Generator, height: int, width: int, num_objects: int, crowd: bool
) -> list[ToyAnnotation]:
    """An image's annotations in painting order: the crowd (if any), then `num_objects` objects,
    the second overlapping the first. Each object is a polygon or, one in RLE_FRACTION, a compressed RLE."""
    annotations = [_crowd(rng, height, width)] if crowd else []
    short_side = min(height, width)
    centres: list[np.ndarray] = []
    halves: list[np.ndarray] = []
    for index in range(num_objects):
        toy_class = TOY_CLASSES[int(rng.integers(len(TOY_CLASSES)))]
        side = np.maximum(rng.uniform(*OBJECT_SIDE_RANGE, size=2) * short_side, MIN_OBJECT_SIDE)
        half = side / 2
        if index == 1:  # shifted from the first object's centre by under its half size: they overlap
            centre = centres[0] + rng.choice((-1, 1), size=2) * rng.uniform(0.4, 0.8, size=2) * halves[0]
        else:
            centre = rng.uniform(half, (height - half[0], width - half[1]))
        centres.append(centre)
        halves.append(half)
        polygon = _polygon(toy_class, tuple(centre), tuple(half), height, width)
        mask = segmentation_mask(polygon, height, width)
        segmentation = compressed_rle(mask) if rng.random() < RLE_FRACTION else polygon
        annotations.append(ToyAnnotation(toy_class, segmentation, mask, iscrowd=0))
    return annotations


def _draw(rng: np.random.Generator, height: int, width: int, annotations: list[ToyAnnotation]) -> np.ndarray:
    """RGB uint8 H×W×3: VOC toy's background, then each annotation's shape in order (later ones in front)."""
    pixels = grey_background(rng, height, width)
    y, x = np.mgrid[0:height, 0:width]
    for annotation in annotations:
        toy_class = annotation.toy_class
        shade = 0.55 + 0.45 * toy_class.texture(y, x)
        colour = np.asarray(toy_class.rgb, np.float64) * shade[..., None] + rng.normal(0.0, 8.0, (height, width, 3))
        pixels[annotation.mask] = colour[annotation.mask]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def instances_json(images: list[ToyImage]) -> dict:
    """COCO's instances file of the images: all 80 categories, annotation ids from 1 in order."""
    annotations = []
    for image in images:
        for annotation in image.annotations:
            rle = mask_utils.encode(np.asfortranarray(annotation.mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image.image_id,
                    "category_id": annotation.toy_class.category_id,
                    "segmentation": annotation.segmentation,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(value) for value in mask_utils.toBbox(rle)],
                    "iscrowd": annotation.iscrowd,
                }
            )
    return {
        "info": {"description": "toy COCO 2014 (coco14/toy.py)"},
        "licenses": [],
        "images": [
            {"id": image.image_id, "file_name": f"{image.name}.jpg", "height": image.height, "width": image.width}
            for image in images
        ],
        "annotations": annotations,
        "categories": [
            {"id": category_id, "name": name} for category_id, name in zip(COCO_CATEGORY_IDS, COCO14.class_names[1:])
        ],
    }


def _jpeg_mode(split: str, index: int) -> str:
    if split == "train" and index == GRAYSCALE_INDEX:
        return "L"
    return "CMYK" if split == "train" and index == CMYK_INDEX else "RGB"


def make_toy_coco(root: str | os.PathLike, num_train: int = 48, num_val: int = 16, seed: int = 0) -> Path:
    """Write the toy set into `root` (the COCO folder, pass it as --coco_root) and return it as a Path."""
    assert num_train >= 3 and num_val >= 1, "train needs its grayscale, CMYK and empty images"
    root = Path(root)
    splits = {"train": range(num_train), "val": range(num_train, num_train + num_val)}
    for split, indices in splits.items():
        images = []
        for index in indices:
            rng = np.random.default_rng(np.random.SeedSequence((seed, index)))
            height, width = (int(side) for side in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, size=2))
            empty = index == num_train - 1
            num_objects = 0 if empty else int(rng.integers(1, MAX_OBJECTS + 1))
            crowd = not empty and (index == GRAYSCALE_INDEX or rng.random() < CROWD_FRACTION)
            image = ToyImage(index + 1, split, height, width, toy_annotations(rng, height, width, num_objects, crowd))
            pixels = _draw(rng, height, width, image.annotations)
            jpeg = Image.fromarray(pixels).convert(_jpeg_mode(split, index))
            save_jpeg(root / f"{split}2014" / f"{image.name}.jpg", jpeg)
            images.append(image)
        with atomic_path(root / "annotations" / f"instances_{split}2014.json") as tmp_path:
            tmp_path.write_text(json.dumps(instances_json(images), separators=(",", ":")), encoding="utf-8")
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a small synthetic dataset in the COCO 2014 layout.")
    parser.add_argument("out_dir", help="folder to create (it becomes the COCO root, pass it as --coco_root)")
    parser.add_argument("--num_train", type=int, default=48, help="at least 3 (default: 48)")
    parser.add_argument("--num_val", type=int, default=16, help="at least 1 (default: 16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_train < 3 or args.num_val < 1:
        parser.error("--num_train must be at least 3 (a grayscale, a CMYK and an empty image) and --num_val 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = make_toy_coco(args.out_dir, args.num_train, args.num_val, args.seed)
    print(
        f"wrote a toy COCO 2014 set to {root}: {args.num_train} train + {args.num_val} val images "
        f"(train2014, val2014, annotations/instances_{{train,val}}2014.json), "
        f"classes: {', '.join(toy_class.name for toy_class in TOY_CLASSES)}"
    )


if __name__ == "__main__":
    run_main(main)
