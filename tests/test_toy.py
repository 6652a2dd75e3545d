"""voc12/toy.py: determinism, VOC file formats, and labels that agree across XML and PNG."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.datasets import IGNORE_INDEX, VOC12
from engine.datasets import PALETTE as VOC_PALETTE
from voc12.toy import TOY_CLASSES, make_toy_voc

VOC_CLASSES = VOC12.class_names

REPO = Path(__file__).resolve().parent.parent


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def split_names(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def all_names(root: Path) -> list[str]:
    return split_names(root, "train") + split_names(root, "val")


def xml_objects(path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(class name, (xmin, ymin, xmax, ymax)) of each <object>."""
    objects = []
    for element in ET.parse(path).getroot().findall("object"):
        box = element.find("bndbox")
        objects.append(
            (element.findtext("name"), tuple(int(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")))
        )
    return objects


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    first = tree_bytes(make_toy_voc(tmp_path / "a", num_train=4, num_val=2, seed=3))
    second = tree_bytes(make_toy_voc(tmp_path / "b", num_train=4, num_val=2, seed=3))
    other = tree_bytes(make_toy_voc(tmp_path / "c", num_train=4, num_val=2, seed=4))
    assert first == second
    assert len(first) == 6 * 3 + 2
    assert first["JPEGImages/toy_0000000.jpg"] != other["JPEGImages/toy_0000000.jpg"]


def test_splits_are_disjoint_and_sized(toy_voc):
    train, val = split_names(toy_voc, "train"), split_names(toy_voc, "val")
    assert (len(train), len(val)) == (48, 16)
    assert not set(train) & set(val)


def test_images_are_rgb_jpegs_of_varied_sizes(toy_voc):
    sizes = []
    for name in all_names(toy_voc):
        with Image.open(toy_voc / "JPEGImages" / f"{name}.jpg") as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            sizes.append(image.size)
    sides = np.array(sizes)
    assert sides.min() < 64 and sides.max() > 128
    assert len(set(sizes)) > len(sizes) // 2


def test_label_pngs_are_palette_images_with_void_borders(toy_voc):
    for name in all_names(toy_voc):
        with (
            Image.open(toy_voc / "SegmentationClass" / f"{name}.png") as png,
            Image.open(toy_voc / "JPEGImages" / f"{name}.jpg") as jpeg,
        ):
            assert png.mode == "P" and png.size == jpeg.size
            palette = np.frombuffer(bytes(png.getpalette()), np.uint8).reshape(-1, 3)
            label = np.asarray(png)
        assert np.array_equal(palette, VOC_PALETTE[: len(palette)]) and len(palette) == 256
        assert set(np.unique(label)) <= set(range(len(VOC_CLASSES))) | {IGNORE_INDEX}
        assert (label == IGNORE_INDEX).any()
        # VOC's void border: no two 4-neighbours carry different class indices.
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            differ = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not differ.any(), name


def test_xml_matches_the_segmentation(toy_voc):
    toy_class_names = {toy_class.name for toy_class in TOY_CLASSES}
    seen = set()
    for name in all_names(toy_voc):
        root = ET.parse(toy_voc / "Annotations" / f"{name}.xml").getroot()
        label = np.asarray(Image.open(toy_voc / "SegmentationClass" / f"{name}.png"))
        height, width = label.shape
        assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (width, height)
        assert root.findtext("filename") == f"{name}.jpg"
        objects = xml_objects(toy_voc / "Annotations" / f"{name}.xml")
        assert 1 <= len(objects) <= 3
        xml_classes = {class_name for class_name, _ in objects}
        png_classes = {VOC_CLASSES[index] for index in np.unique(label) if index not in (0, IGNORE_INDEX)}
        assert xml_classes == png_classes <= toy_class_names
        seen |= xml_classes
        covered = np.zeros_like(label, dtype=bool)
        for class_name, (xmin, ymin, xmax, ymax) in objects:
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height
            assert min(xmax - xmin, ymax - ymin) >= 15, "objects must be large enough to learn"
            box = np.zeros_like(covered)
            box[ymin - 1 : ymax, xmin - 1 : xmax] = True
            assert (label[box] == VOC_CLASSES.index(class_name)).any()
            covered |= box & (label == VOC_CLASSES.index(class_name))
        assert np.array_equal(covered, (label != 0) & (label != IGNORE_INDEX)), "every object pixel is in its box"
    assert seen == toy_class_names


def test_classes_differ_in_colour(toy_voc):
    """Learnability: the mean colour inside each class's pixels is far from every other class's."""
    sums = {}
    for name in all_names(toy_voc):
        pixels = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg"), np.float64)
        label = np.asarray(Image.open(toy_voc / "SegmentationClass" / f"{name}.png"))
        for index in np.unique(label):
            total, count = sums.get(index, (0.0, 0))
            sums[index] = (total + pixels[label == index].sum(0), count + (label == index).sum())
    means = {index: total / count for index, (total, count) in sums.items() if index not in (0, IGNORE_INDEX)}
    for a in means:
        for b in means:
            if a < b:
                assert np.linalg.norm(means[a] - means[b]) > 60, (VOC_CLASSES[a], VOC_CLASSES[b])


def test_cli_writes_the_tree(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "voc12.toy", str(tmp_path / "out"), "--num_train", "2", "--num_val", "1", "--seed", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "out") in result.stdout
    assert tree_bytes(tmp_path / "out") == tree_bytes(make_toy_voc(tmp_path / "api", 2, 1, seed=5))


def test_cli_rejects_an_empty_split(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "voc12.toy", str(tmp_path), "--num_val", "0"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode != 0 and "--num_val" in result.stderr


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_files_list_existing_images(toy_voc, split):
    for name in split_names(toy_voc, split):
        assert (toy_voc / "JPEGImages" / f"{name}.jpg").is_file()
