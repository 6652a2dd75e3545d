"""A tiny synthetic dataset in the VOC2012 folder layout, for tests and the demo.

Each image shows one to three objects on a textured grey background. Every toy class
has its own shape, hue and texture, so a network learns them in a few hundred steps:

    JPEGImages/<name>.jpg           RGB
    SegmentationClass/<name>.png    palette PNG, class indices, 255 on a thin object border
    Annotations/<name>.xml          VOC XML, one <object> with <name> and <bndbox> per object
    ImageSets/Segmentation/{train,val}.txt

The same seed gives byte-identical files (each image draws from its own seeded generator).
"""

from __future__ import annotations

import argparse
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.datasets import IGNORE_INDEX, VOC12
from engine.errors import run_main
from engine.fileio import atomic_path, save_jpeg, save_label_png
from engine.toy_drawing import (
    checkerboard,
    diagonal_stripes,
    dots,
    flat,
    grey_background,
    horizontal_stripes,
    vertical_stripes,
)

IMAGE_SIDE_RANGE = (48, 160)  # some sides are below a 64-px training crop on purpose
MAX_OBJECTS = 3
PLACEMENT_TRIES = 60
MIN_OBJECT_SIDE = 18  # keeps an interior after the 255 border is drawn


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u**2 + v**2 <= 1.0


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bar = 0.38
    return _box(u, v) & ((np.abs(u) <= bar) | (np.abs(v) <= bar))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    radius_squared = u**2 + v**2
    return (radius_squared <= 1.0) & (radius_squared >= 0.3)


@dataclass(frozen=True)
class ToyClass:
    name: str  # a VOC class name
    shape: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) in [-1, 1]² -> inside?
    rgb: tuple[int, int, int]
    texture: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y, x) -> 0 or 1


# Six hues 60° apart, each with its own shape and texture.
TOY_CLASSES = (
    ToyClass("aeroplane", _triangle, (40, 80, 230), horizontal_stripes),
    ToyClass("bus", _box, (235, 205, 30), checkerboard),
    ToyClass("cat", _ellipse, (220, 40, 40), dots),
    ToyClass("dog", _diamond, (40, 190, 60), diagonal_stripes),
    ToyClass("person", _cross, (210, 50, 200), vertical_stripes),
    ToyClass("tvmonitor", _ring, (40, 200, 210), flat),
)


@dataclass(frozen=True)
class ToyObject:
    toy_class: ToyClass
    mask: np.ndarray  # bool H×W


def _place_objects(rng: np.random.Generator, height: int, width: int) -> list[ToyObject]:
    """One to three objects with non-overlapping bounding boxes, so each stays fully visible."""
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    short_side = min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    boxes: list[tuple[int, int, int, int]] = []
    objects: list[ToyObject] = []
    for _ in range(wanted):
        toy_class = TOY_CLASSES[int(rng.integers(len(TOY_CLASSES)))]
        for _ in range(PLACEMENT_TRIES):
            side = rng.uniform(0.45, 0.8) * short_side / np.sqrt(wanted)
            aspect = rng.uniform(0.75, 1.33)
            box_height = int(np.clip(side * np.sqrt(aspect), MIN_OBJECT_SIDE, height - 2))
            box_width = int(np.clip(side / np.sqrt(aspect), MIN_OBJECT_SIDE, width - 2))
            top = int(rng.integers(1, height - box_height))
            left = int(rng.integers(1, width - box_width))
            box = (top, left, top + box_height, left + box_width)
            if all(
                box[2] + 2 <= other[0] or other[2] + 2 <= box[0] or box[3] + 2 <= other[1] or other[3] + 2 <= box[1]
                for other in boxes
            ):
                break
        else:
            continue
        boxes.append(box)
        u = (x - (box[1] + box[3] - 1) / 2) / ((box[3] - box[1]) / 2)
        v = (y - (box[0] + box[2] - 1) / 2) / ((box[2] - box[0]) / 2)
        objects.append(ToyObject(toy_class, toy_class.shape(u, v)))
    assert objects, "the first object always fits an empty image"
    return objects


def _label_border(label: np.ndarray) -> np.ndarray:
    """Pixels with a differently labelled 4-neighbour: VOC marks object borders as void (255)."""
    padded = np.pad(label, 1, mode="edge")
    center = padded[1:-1, 1:-1]
    return (
        (padded[:-2, 1:-1] != center)
        | (padded[2:, 1:-1] != center)
        | (padded[1:-1, :-2] != center)
        | (padded[1:-1, 2:] != center)
    )


def _render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[ToyObject]]:
    """One image: (RGB uint8 H×W×3, label uint8 H×W, its objects)."""
    height, width = (int(side) for side in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, size=2))
    pixels = grey_background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    objects = _place_objects(rng, height, width)
    for toy_object in objects:
        shade = 0.55 + 0.45 * toy_object.toy_class.texture(y, x)
        colour = np.asarray(toy_object.toy_class.rgb, np.float64) * shade[..., None]
        colour = colour + rng.normal(0.0, 8.0, size=colour.shape)
        pixels[toy_object.mask] = colour[toy_object.mask]
        label[toy_object.mask] = VOC12.class_names.index(toy_object.toy_class.name)
    label[_label_border(label)] = IGNORE_INDEX
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8), label, objects


def _annotation_xml(name: str, height: int, width: int, objects: list[ToyObject]) -> bytes:
    """VOC XML: bounding boxes are 1-based and inclusive, as in VOC's Annotations."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "VOC2012"
    ET.SubElement(annotation, "filename").text = f"{name}.jpg"
    size = ET.SubElement(annotation, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "1"
    for toy_object in objects:
        rows, cols = np.nonzero(toy_object.mask)
        element = ET.SubElement(annotation, "object")
        ET.SubElement(element, "name").text = toy_object.toy_class.name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "0"
        bndbox = ET.SubElement(element, "bndbox")
        for tag, value in (("xmin", cols.min()), ("ymin", rows.min()), ("xmax", cols.max()), ("ymax", rows.max())):
            ET.SubElement(bndbox, tag).text = str(int(value) + 1)
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="utf-8") + b"\n"


def _write_bytes(path: Path, content: bytes) -> None:
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(content)


def make_toy_voc(root: str | os.PathLike, num_train: int = 48, num_val: int = 16, seed: int = 0) -> Path:
    """Write the toy set into `root` (the VOC2012 folder itself) and return it as a Path."""
    assert num_train >= 1 and num_val >= 1, "both splits need at least one image"
    root = Path(root)
    names = [f"toy_{index:07d}" for index in range(num_train + num_val)]
    for index, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence((seed, index)))
        pixels, label, objects = _render(rng)
        save_jpeg(root / "JPEGImages" / f"{name}.jpg", Image.fromarray(pixels))
        save_label_png(root / "SegmentationClass" / f"{name}.png", label)
        _write_bytes(root / "Annotations" / f"{name}.xml", _annotation_xml(name, *label.shape, objects))
    splits = {"train": names[:num_train], "val": names[num_train:]}
    for split, split_names in splits.items():
        _write_bytes(
            root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{name}\n" for name in split_names).encode()
        )
    return root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write a small synthetic dataset in the VOC2012 layout.")
    parser.add_argument("out_dir", help="folder to create (it becomes the VOC2012 root, pass it as --voc12_root)")
    parser.add_argument("--num_train", type=int, default=48)
    parser.add_argument("--num_val", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error("--num_train and --num_val must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = make_toy_voc(args.out_dir, args.num_train, args.num_val, args.seed)
    print(
        f"wrote a toy VOC2012 set to {root}: {args.num_train} train + {args.num_val} val images "
        f"(JPEGImages, SegmentationClass, Annotations, ImageSets/Segmentation/{{train,val}}.txt), "
        f"classes: {', '.join(toy_class.name for toy_class in TOY_CLASSES)}"
    )


if __name__ == "__main__":
    run_main(main)
