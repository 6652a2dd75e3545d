"""coco14/make_cls_labels.py against a hand-written COCO JSON: the exact label pixels (painting order,
crowd as background or ignore, category ids after a gap), the class vectors, the lists, resuming, the
label folder's manifest and --overwrite, and the one-line errors of its CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from coco14.make_cls_labels import main, make_cls_labels
from engine.datasets import COCO14, COCO_CATEGORY_IDS, IGNORE_INDEX, PALETTE
from engine.errors import run_main
from engine.fileio import load_npy_dict, save_png
from engine.manifest import MANIFEST_NAME

# pycocotools 2.0.x's decode warns under numpy 2 (its masks' __array__ takes no `copy`): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORIES = [{"id": category_id, "name": name} for category_id, name in zip(COCO_CATEGORY_IDS, COCO14.class_names[1:])]
PERSON, BICYCLE, CAR, STOP_SIGN, GIRAFFE, TEDDY_BEAR, TOOTHBRUSH = 1, 2, 3, 13, 25, 88, 90  # COCO ids
# Their labels: the id's position among the 80 used ids, plus one (12 is unused, so 13 → 12).
LABEL = {PERSON: 1, BICYCLE: 2, CAR: 3, STOP_SIGN: 12, GIRAFFE: 24, TEDDY_BEAR: 78, TOOTHBRUSH: 80}

A, B, C, D = (f"COCO_train2014_{index:012d}" for index in (1, 2, 3, 4))
E, F = (f"COCO_val2014_{index:012d}" for index in (5, 6))


def rectangle(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """A polygon pycocotools fills as rows y0..y1-1, columns x0..x1-1 (pixel corners)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": list(mask.shape)}


def box_mask(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def instances(images: list[tuple[str, int, int]], annotations: list[tuple[str, int, object, int]]) -> dict:
    """COCO JSON of (name, height, width) images and (image name, category id, segmentation, iscrowd)."""
    ids = {name: index + 1 for index, (name, _, _) in enumerate(images)}
    return {
        "images": [{"id": ids[name], "file_name": f"{name}.jpg", "height": h, "width": w} for name, h, w in images],
        "annotations": [
            {"id": index + 1, "image_id": ids[name], "category_id": cat, "segmentation": seg, "iscrowd": crowd}
            for index, (name, cat, seg, crowd) in enumerate(annotations)
        ],
        "categories": CATEGORIES,
    }


TRAIN = instances(
    [(A, 10, 12), (B, 6, 6), (C, 8, 8), (D, 5, 5)],
    [
        (A, STOP_SIGN, [rectangle(0, 0, 6, 5)], 0),  # rows 0-4, cols 0-5
        (A, TOOTHBRUSH, compressed(box_mask((10, 12), slice(3, 8), slice(4, 10))), 0),  # later: wins rows 3-4, cols 4-5
        (A, PERSON, {"counts": [0, 20, 100], "size": [10, 12]}, 1),  # crowd: columns 0-1, listed last
        (B, CAR, {"counts": [7, 4, 25], "size": [6, 6]}, 1),  # crowd only: rows 1-4 of column 1
        (C, GIRAFFE, [rectangle(0, 0, 2, 2), rectangle(6, 6, 8, 8)], 0),  # two parts, two corners
        (C, TEDDY_BEAR, [rectangle(2, 2, 5, 5)], 0),  # covered entirely by the next one
        (C, BICYCLE, [rectangle(2, 2, 6, 6)], 0),
    ],
)
VAL = instances([(E, 4, 4), (F, 4, 6)], [(F, PERSON, [rectangle(1, 1, 3, 4)], 0)])


def expected_labels(crowd_label: int) -> dict[str, np.ndarray]:
    """The label maps, by hand."""
    a = np.zeros((10, 12), np.uint8)
    a[:, 0:2] = crowd_label
    a[0:5, 0:6] = LABEL[STOP_SIGN]
    a[3:8, 4:10] = LABEL[TOOTHBRUSH]
    b = np.zeros((6, 6), np.uint8)
    b[1:5, 1] = crowd_label
    c = np.zeros((8, 8), np.uint8)
    c[0:2, 0:2] = c[6:8, 6:8] = LABEL[GIRAFFE]
    c[2:6, 2:6] = LABEL[BICYCLE]
    f = np.zeros((4, 6), np.uint8)
    f[1:4, 1:3] = LABEL[PERSON]
    return {A: a, B: b, C: c, D: np.zeros((5, 5), np.uint8), E: np.zeros((4, 4), np.uint8), F: f}


def write_coco(root: Path, train: dict = TRAIN, val: dict = VAL) -> Path:
    for split, content in (("train", train), ("val", val)):
        (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(content))
    return root


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


def one_line_error(args: list[str], capsys) -> str:
    """The line `run_main(main)` exits with (status 1), as the script's __main__ does."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(args))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.fixture
def coco(tmp_path) -> Path:
    return write_coco(tmp_path / "coco")


@pytest.mark.parametrize("crowd, crowd_label", [("background", 0), ("ignore", IGNORE_INDEX)])
def test_label_pngs_are_painted_by_hand_rules(coco, tmp_path, crowd, crowd_label):
    written = make_cls_labels(coco, tmp_path / "lists", crowd=crowd)
    assert written.seg_dir == coco / "SegmentationClass"
    for name, label in expected_labels(crowd_label).items():
        assert np.array_equal(read_png(written.seg_dir / f"{name}.png"), label), name


def test_pngs_use_the_dataset_palette(coco, tmp_path):
    make_cls_labels(coco, tmp_path / "lists")
    with Image.open(coco / "SegmentationClass" / f"{A}.png") as image:
        assert np.array_equal(np.frombuffer(bytes(image.getpalette()), np.uint8).reshape(-1, 3), PALETTE)


def test_class_vectors_hold_the_painted_classes(coco, tmp_path):
    written = make_cls_labels(coco, tmp_path / "lists", crowd="ignore")
    cls_labels = load_npy_dict(written.paths["cls_labels"], "class labels", "")
    expected = {A: (STOP_SIGN, TOOTHBRUSH), B: (), C: (GIRAFFE, BICYCLE), D: (), E: (), F: (PERSON,)}
    assert set(cls_labels) == set(expected)
    for name, category_ids in expected.items():
        vector = np.zeros(80, np.float32)
        vector[[LABEL[category_id] - 1 for category_id in category_ids]] = 1
        assert cls_labels[name].dtype == np.float32 and np.array_equal(cls_labels[name], vector), name


def test_lists_drop_train_images_without_a_labelled_object(coco, tmp_path):
    written = make_cls_labels(coco, tmp_path / "lists")
    assert written.paths["train"].read_text() == f"{A}\n{C}\n"  # B: crowd only, D: nothing
    assert written.paths["val"].read_text() == f"{E}\n{F}\n"  # val keeps every image
    assert (written.dropped, written.list_sizes, written.painted, written.kept) == (2, {"train": 2, "val": 2}, 6, 0)


def test_worker_processes_write_the_same_files(coco, tmp_path):
    inline = make_cls_labels(coco, tmp_path / "inline", seg_dir=tmp_path / "seg0", num_workers=0)
    pooled = make_cls_labels(coco, tmp_path / "pooled", seg_dir=tmp_path / "seg2", num_workers=2)
    for name in expected_labels(0):
        assert (inline.seg_dir / f"{name}.png").read_bytes() == (pooled.seg_dir / f"{name}.png").read_bytes()
    for key in ("train", "val"):
        assert inline.paths[key].read_bytes() == pooled.paths[key].read_bytes()
    first, second = (load_npy_dict(run.paths["cls_labels"], "class labels", "") for run in (inline, pooled))
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_a_rerun_keeps_pngs_already_there_and_paints_the_missing(coco, tmp_path):
    seg_dir = make_cls_labels(coco, tmp_path / "lists").seg_dir
    kept_label = np.full((10, 12), LABEL[PERSON], np.uint8)  # stands in for A's PNG of an earlier run
    save_png(seg_dir / f"{A}.png", Image.fromarray(kept_label))
    (seg_dir / f"{C}.png").unlink()
    written = make_cls_labels(coco, tmp_path / "lists")
    assert (written.painted, written.kept) == (1, 5)
    assert np.array_equal(np.asarray(Image.open(seg_dir / f"{A}.png")), kept_label)
    assert np.array_equal(read_png(seg_dir / f"{C}.png"), expected_labels(0)[C])
    cls_labels = load_npy_dict(written.paths["cls_labels"], "class labels", "")
    assert np.flatnonzero(cls_labels[A]).tolist() == [LABEL[PERSON] - 1], "vectors come from the PNGs"
    assert not list(seg_dir.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_main_prints_the_counts(coco, tmp_path, capsys):
    main(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists"), "--num_workers", "0"])
    out = capsys.readouterr().out
    assert "train.txt (2 of 4 train2014 images; 2 with no labelled object left out)" in out
    assert "val.txt (2 images)" in out and "6 painted, 0 already there" in out


def test_missing_annotations_is_one_line(coco, tmp_path, capsys):
    (coco / "annotations" / "instances_val2014.json").unlink()
    message = one_line_error(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists")], capsys)
    assert "instances_val2014.json" in message and "--coco_root" in message


def test_missing_image_folder_is_one_line(coco, tmp_path, capsys):
    (coco / "train2014").rmdir()
    message = one_line_error(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists")], capsys)
    assert "train2014" in message and "--coco_root" in message


def test_wrong_categories_are_one_line(tmp_path, capsys):
    renamed = dict(TRAIN, categories=[*CATEGORIES[:11], {"id": STOP_SIGN, "name": "stop"}, *CATEGORIES[12:]])
    coco = write_coco(tmp_path / "coco", train=renamed)
    message = one_line_error(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists")], capsys)
    assert "instances_train2014.json" in message and "13 'stop'" in message and "13 'stop sign'" in message
    assert not (tmp_path / "lists").exists()


def test_unreadable_json_is_one_line(coco, tmp_path, capsys):
    (coco / "annotations" / "instances_train2014.json").write_text('{"images": [')
    message = one_line_error(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists")], capsys)
    assert "cannot read" in message and "instances_train2014.json" in message


def cli(coco: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists"), "--num_workers", "0", *extra]


def test_the_label_folder_records_the_annotations_and_crowd(coco, tmp_path):
    seg_dir = make_cls_labels(coco, tmp_path / "lists", crowd="ignore").seg_dir
    manifest = json.loads((seg_dir / MANIFEST_NAME).read_text())
    digests = "".join(
        hashlib.sha256((coco / "annotations" / f"instances_{split}2014.json").read_bytes()).hexdigest()
        for split in ("train", "val")
    )
    assert manifest["weights_sha256"] == hashlib.sha256(digests.encode()).hexdigest()
    assert manifest["settings"] == {"output": "coco14 label PNGs", "crowd": "ignore"}
    assert manifest["weights"] == str((coco / "annotations").resolve())


def test_a_rerun_with_the_same_settings_resumes(coco, tmp_path, capsys):
    main(cli(coco, tmp_path, "--crowd", "ignore"))
    (coco / "SegmentationClass" / f"{A}.png").unlink()
    main(cli(coco, tmp_path, "--crowd", "ignore"))
    assert "1 painted, 5 already there" in capsys.readouterr().out


def test_a_rerun_with_another_crowd_is_refused_unless_overwrite(coco, tmp_path, capsys):
    seg_dir = make_cls_labels(coco, tmp_path / "lists", crowd="background").seg_dir
    before = {path.name: path.read_bytes() for path in seg_dir.iterdir()}
    message = one_line_error(cli(coco, tmp_path, "--crowd", "ignore"), capsys)
    assert str(seg_dir / MANIFEST_NAME) in message and "crowd background" in message and "crowd ignore" in message
    assert "--overwrite" in message
    assert {path.name: path.read_bytes() for path in seg_dir.iterdir()} == before, "refused before any work"

    main(cli(coco, tmp_path, "--crowd", "ignore", "--overwrite"))
    assert "6 painted, 0 already there" in capsys.readouterr().out
    for name, label in expected_labels(IGNORE_INDEX).items():
        assert np.array_equal(read_png(seg_dir / f"{name}.png"), label), name
    assert json.loads((seg_dir / MANIFEST_NAME).read_text())["settings"]["crowd"] == "ignore"
    main(cli(coco, tmp_path, "--crowd", "ignore"))  # the rewritten manifest lets the new setting resume
    assert "0 painted, 6 already there" in capsys.readouterr().out


def test_changed_annotations_are_refused(coco, tmp_path, capsys):
    make_cls_labels(coco, tmp_path / "lists")
    write_coco(coco, val=instances([(E, 4, 4), (F, 4, 6)], [(F, CAR, [rectangle(1, 1, 3, 4)], 0)]))
    message = one_line_error(cli(coco, tmp_path), capsys)
    assert str(coco / "SegmentationClass" / MANIFEST_NAME) in message and "sha256" in message
    assert np.array_equal(read_png(coco / "SegmentationClass" / f"{F}.png"), expected_labels(0)[F])


def test_pngs_without_a_manifest_are_refused(coco, tmp_path, capsys):
    save_png(coco / "SegmentationClass" / f"{A}.png", Image.fromarray(np.zeros((10, 12), np.uint8)))
    message = one_line_error(cli(coco, tmp_path), capsys)
    assert f"no {MANIFEST_NAME}" in message and "--overwrite" in message


def test_png_of_another_size_is_one_line(coco, tmp_path, capsys):
    make_cls_labels(coco, tmp_path / "lists")
    save_png(coco / "SegmentationClass" / f"{A}.png", Image.fromarray(np.zeros((3, 3), np.uint8)))
    message = one_line_error(["--coco_root", str(coco), "--out_dir", str(tmp_path / "lists")], capsys)
    assert f"{A}.png is 3×3" in message and "12×10" in message and "--overwrite" in message
