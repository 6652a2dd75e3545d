"""coco14/toy.py: COCO's file formats (read back with pycocotools), its awkward images, determinism,
and make_cls_labels end to end on it, checked against pycocotools' own COCO.annToMask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from coco14.make_cls_labels import make_cls_labels
from coco14.toy import TOY_CLASSES, make_toy_coco, uncompressed_rle
from engine.datasets import COCO14, COCO_CATEGORY_IDS, IGNORE_INDEX
from engine.fileio import load_npy_dict, read_label_png, read_rgb

# pycocotools 2.0.x's decode warns under numpy 2 (its masks' __array__ takes no `copy`): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
NUM_TRAIN, NUM_VAL = 8, 4


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def load(root: Path, split: str) -> COCO:
    return COCO(str(root / "annotations" / f"instances_{split}2014.json"))


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory) -> Path:
    return make_toy_coco(tmp_path_factory.mktemp("toy") / "coco", NUM_TRAIN, NUM_VAL)


@pytest.fixture(scope="module")
def datasets(toy_coco) -> dict[str, COCO]:
    return {split: load(toy_coco, split) for split in ("train", "val")}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    first = tree_bytes(make_toy_coco(tmp_path / "a", num_train=3, num_val=1, seed=3))
    second = tree_bytes(make_toy_coco(tmp_path / "b", num_train=3, num_val=1, seed=3))
    other = tree_bytes(make_toy_coco(tmp_path / "c", num_train=3, num_val=1, seed=4))
    assert first == second
    assert len(first) == 3 + 1 + 2
    name = "train2014/COCO_train2014_000000000003.jpg"
    assert first[name] != other[name]


def test_images_are_listed_with_their_files_and_sizes(toy_coco, datasets):
    for split, dataset in datasets.items():
        images = dataset.loadImgs(dataset.getImgIds())
        assert len(images) == {"train": NUM_TRAIN, "val": NUM_VAL}[split]
        for image in images:
            name = Path(image["file_name"]).stem
            path = COCO14.image_path(toy_coco, name)
            assert path.parent.name == f"{split}2014"
            assert read_rgb(path).size == (image["width"], image["height"])
            assert 64 <= min(image["width"], image["height"]) and max(image["width"], image["height"]) <= 160
    train_ids, val_ids = (set(dataset.getImgIds()) for dataset in datasets.values())
    assert not train_ids & val_ids, "COCO's image ids are unique across the splits"


def test_categories_are_cocos_eighty(datasets):
    for dataset in datasets.values():
        categories = dataset.loadCats(dataset.getCatIds())
        assert [(category["id"], category["name"]) for category in categories] == list(
            zip(COCO_CATEGORY_IDS, COCO14.class_names[1:])
        )


def test_grayscale_and_cmyk_jpegs_read_as_rgb(toy_coco):
    modes = {}
    for path in sorted(toy_coco.glob("*2014/*.jpg")):
        with Image.open(path) as image:
            modes.setdefault(image.mode, []).append(path)
    assert set(modes) == {"L", "CMYK", "RGB"}
    for path in modes["L"] + modes["CMYK"]:
        assert read_rgb(path).mode == "RGB"


def test_annotations_hold_cocos_forms_overlaps_and_an_empty_image(datasets):
    dataset = datasets["train"]
    annotations = dataset.loadAnns(dataset.getAnnIds())
    polygons = [a for a in annotations if isinstance(a["segmentation"], list)]
    compressed = [a for a in annotations if isinstance(a["segmentation"], dict) and not a["iscrowd"]]
    crowds = [a for a in annotations if a["iscrowd"]]
    assert polygons and compressed and crowds
    assert all(isinstance(a["segmentation"]["counts"], str) for a in compressed)
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowds), "COCO's crowd form"
    overlaps = 0
    for image_id in dataset.getImgIds():
        masks = [dataset.annToMask(a).astype(bool) for a in dataset.loadAnns(dataset.getAnnIds(imgIds=image_id))]
        overlaps += any((masks[i] & masks[j]).any() for i in range(len(masks)) for j in range(i))
    assert overlaps >= 2
    last = dataset.loadImgs(dataset.getImgIds())[-1]
    assert not dataset.getAnnIds(imgIds=last["id"])


def test_uncompressed_rle_decodes_to_its_mask():
    mask = np.zeros((5, 7), bool)
    mask[0, 0] = mask[2:4, 3:6] = mask[4, 6] = True
    decoded = COCO()
    decoded.imgs = {1: {"height": 5, "width": 7}}
    assert np.array_equal(decoded.annToMask({"image_id": 1, "segmentation": uncompressed_rle(mask)}), mask)
    # Column-major runs: no zeros, the corner, then 4 + 5 + 5 + 2 zeros down to row 2 of column 3.
    assert uncompressed_rle(mask)["counts"][:3] == [0, 1, 16]


def test_make_cls_labels_on_the_toy_set_agrees_with_pycocotools(toy_coco, datasets, tmp_path):
    """Each PNG equals a painting with COCO.annToMask: crowds (as 255) first, then the instances in order."""
    written = make_cls_labels(toy_coco, tmp_path / "lists", seg_dir=tmp_path / "seg", crowd="ignore")
    train = written.paths["train"].read_text().split()
    assert len(train) == NUM_TRAIN - 1 and written.dropped == 1
    assert written.paths["val"].read_text().split() == sorted(
        Path(image["file_name"]).stem for image in datasets["val"].loadImgs(datasets["val"].getImgIds())
    )
    cls_labels = load_npy_dict(written.paths["cls_labels"], "class labels", "")
    toy_labels = {COCO14.class_names.index(toy_class.name) for toy_class in TOY_CLASSES}
    seen = set()
    for dataset in datasets.values():
        for image in dataset.loadImgs(dataset.getImgIds()):
            annotations = dataset.loadAnns(dataset.getAnnIds(imgIds=image["id"]))
            expected = np.zeros((image["height"], image["width"]), np.uint8)
            for annotation in sorted(annotations, key=lambda a: -a["iscrowd"]):  # stable: instances keep order
                class_label = COCO_CATEGORY_IDS.index(annotation["category_id"]) + 1
                expected[dataset.annToMask(annotation).astype(bool)] = (
                    IGNORE_INDEX if annotation["iscrowd"] else class_label
                )
            name = Path(image["file_name"]).stem
            assert np.array_equal(read_label_png(tmp_path / "seg" / f"{name}.png"), expected), name
            shown = set(np.unique(expected).tolist()) - {0, IGNORE_INDEX}
            assert np.flatnonzero(cls_labels[name]).tolist() == sorted(label - 1 for label in shown)
            seen |= shown
    assert seen == toy_labels


def test_classes_differ_in_colour(toy_coco, tmp_path):
    """Learnability: each class's mean colour in the RGB images is far from every other class's."""
    seg_dir = make_cls_labels(toy_coco, tmp_path / "lists", seg_dir=tmp_path / "seg").seg_dir
    sums = {}
    for path in sorted(toy_coco.glob("*2014/*.jpg")):
        with Image.open(path) as image:
            if image.mode != "RGB":
                continue
            pixels = np.asarray(image, np.float64)
        label = read_label_png(seg_dir / f"{path.stem}.png")
        for index in set(np.unique(label).tolist()) - {0}:
            total, count = sums.get(index, (0.0, 0))
            sums[index] = (total + pixels[label == index].sum(0), count + (label == index).sum())
    means = {index: total / count for index, (total, count) in sums.items()}
    assert len(means) >= 4
    for a in means:
        for b in means:
            if a < b:
                assert np.linalg.norm(means[a] - means[b]) > 60, (COCO14.class_names[a], COCO14.class_names[b])


def test_cli_writes_the_tree(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "coco14.toy", str(tmp_path / "out"), "--num_train", "3", "--num_val", "1", "--seed=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "out") in result.stdout
    assert tree_bytes(tmp_path / "out") == tree_bytes(make_toy_coco(tmp_path / "api", 3, 1, seed=5))


def test_cli_rejects_a_train_split_without_its_awkward_images(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "coco14.toy", str(tmp_path), "--num_train", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--num_train" in result.stderr
