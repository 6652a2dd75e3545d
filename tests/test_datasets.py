"""engine/datasets.py: the two descriptions against the published class lists, name → file mapping,
the root checks, the sweep ranges and the shared --dataset/--data_root/--voc12_root arguments."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest

from engine.datasets import (
    COCO14,
    COCO_CATEGORY_IDS,
    DATASETS,
    VOC12,
    add_dataset_arguments,
    data_source,
    fill_list_defaults,
    get_dataset,
    sweep_thresholds,
)
from engine.errors import UserError
from network import build_network

UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_class_counts_and_coco_ids():
    assert (VOC12.num_classes, VOC12.num_fg_classes) == (21, 20)
    assert (COCO14.num_classes, COCO14.num_fg_classes) == (81, 80)
    assert COCO_CATEGORY_IDS == tuple(sorted(set(range(1, 91)) - UNUSED_COCO_IDS))
    assert COCO14.class_names[COCO_CATEGORY_IDS.index(13) + 1] == "stop sign"  # the id after the first gap
    assert (COCO14.class_names[1], COCO14.class_names[-1]) == ("person", "toothbrush")
    assert VOC12.class_names[0] == COCO14.class_names[0] == "background"
    assert len(set(COCO14.class_names)) == 81


def test_image_paths(tmp_path):
    assert VOC12.image_path(tmp_path, "2007_000032") == tmp_path / "JPEGImages/2007_000032.jpg"
    name = "COCO_val2014_000000000042"
    assert COCO14.image_path(tmp_path, name) == tmp_path / "val2014" / f"{name}.jpg"
    for wrong in ("000000000042", "COCO_test2014_000000000042", "COCO_train2014_42"):
        with pytest.raises(UserError, match="not a COCO 2014 image name"):
            COCO14.image_path(tmp_path, wrong)


def test_coco_root_checks(tmp_path):
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    assert COCO14.check_root(tmp_path / "coco") == tmp_path / "coco"
    with pytest.raises(UserError, match=f"pass {tmp_path / 'coco'}$"):
        COCO14.check_root(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no train2014 or val2014 folder"):
        COCO14.check_root(tmp_path / "empty")


def test_sweeps():
    assert VOC12.sweep == tuple(round(0.20 + 0.01 * i, 2) for i in range(40))  # SPEC §6
    assert COCO14.sweep[0] == 0.05 and COCO14.sweep[-1] == 0.59 and len(COCO14.sweep) == 55
    assert sweep_thresholds(0.1, 0.3, 0.1) == (0.1, 0.2, 0.3)
    assert sweep_thresholds(0.25, 0.25) == (0.25,)
    for start, stop, step in ((0.5, 0.2, 0.01), (0.2, 0.5, 0.0), (0.2, 0.5, -0.1)):
        with pytest.raises(UserError):
            sweep_thresholds(start, stop, step)


def test_descriptions_travel_to_processes_as_themselves():
    for spec in DATASETS.values():
        assert pickle.loads(pickle.dumps(spec)) is spec
    with pytest.raises(UserError, match="unknown dataset 'ade20k'"):
        get_dataset("ade20k")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    parser.add_argument("--train_list")
    return parser.parse_args(argv)


def test_root_arguments(tmp_path):
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "coco" / "train2014").mkdir(parents=True)
    voc = tmp_path / "VOC2012"
    assert data_source(parse(["--voc12_root", str(voc)])).root == voc
    assert data_source(parse(["--data_root", str(voc)])).spec is VOC12
    assert data_source(parse(["--data_root", str(voc), "--voc12_root", str(voc)])).root == voc
    coco = data_source(parse(["--dataset", "coco14", "--data_root", str(tmp_path / "coco")]))
    assert coco.spec is COCO14 and coco.image_path("COCO_train2014_000000000009").parent.name == "train2014"
    failures = {
        "pass --data_root$": ["--dataset", "coco14", "--voc12_root", str(voc)],
        "different folders": ["--data_root", str(tmp_path / "coco"), "--voc12_root", str(voc)],
        "no data set folder": [],
    }
    for message, argv in failures.items():
        with pytest.raises(UserError, match=message):
            data_source(parse(argv))


def test_list_defaults_follow_the_dataset():
    here = Path("/repo")
    voc = fill_list_defaults(parse([]), here, train_list="train")
    coco = fill_list_defaults(parse(["--dataset", "coco14"]), here, train_list="train")
    given = fill_list_defaults(parse(["--train_list", "mine.txt"]), here, train_list="train")
    assert (voc.train_list, coco.train_list, given.train_list) == (
        "/repo/voc12/train_aug.txt",
        "/repo/coco14/train.txt",
        "mine.txt",
    )


@pytest.mark.parametrize("spec", [VOC12, COCO14], ids=lambda spec: spec.name)
def test_cam_heads_follow_the_dataset(spec):
    assert build_network("resnet38_CPN", spec).fc8.out_channels == spec.num_classes
    assert build_network("resnet38_cls", spec).fc8.out_channels == spec.num_fg_classes
