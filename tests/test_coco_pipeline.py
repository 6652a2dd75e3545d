"""Every stage on the toy COCO 2014 set, on the CPU (issue 11): labels → CPN (an 81-channel head) →
CAMs in every format → the sweep over 81 classes → confident labels → IRNet → pseudo labels. Each
stage's outputs are checked against the image's COCO classes, and one CAM against the reference's
loop (tests/reference_cam.py) run on the same 81-class model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import cam_to_ir_label
import evaluation_cam
import infer_cam
import make_sem_seg_labels
import train_cpn
import train_irn
from coco14.make_cls_labels import main as make_coco_labels
from coco14.toy import make_toy_coco
from engine.datasets import COCO14, IGNORE_INDEX
from engine.errors import run_main
from engine.fileio import read_label_png
from network import build_network
from tests.reference_cam import direct_loop_cam
from tests.tiny import TINY_TRAIN_ARGS
from voc12.data import load_cls_labels
from voc12.lists import load_image_list

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*__array__.*:DeprecationWarning"),  # pycocotools under numpy 2
]
SCALES = "0.5,1.0"


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The toy set, its labels and lists, and a CPN trained 3 steps on it."""
    root = tmp_path_factory.mktemp("coco")
    make_toy_coco(root / "coco", num_train=6, num_val=3, seed=0)
    make_coco_labels(["--coco_root", str(root / "coco"), "--out_dir", str(root / "lists"), "--num_workers", "0"])
    common = [
        "--dataset",
        "coco14",
        "--data_root",
        str(root / "coco"),
        "--cls_labels",
        str(root / "lists/cls_labels.npy"),
    ]
    train_cpn.main(
        [*common, "--device", "cpu", "--train_list", str(root / "lists/train.txt"), *TINY_TRAIN_ARGS]
        + ["--max_steps", "3", "--momentum", "0.9", "--out_dir", str(root / "CPN"), "--session_name", "coco"]
    )
    return {"root": root, "common": common, "weights": root / "CPN/coco.pth"}


def classes_of(coco, names):
    labels = load_cls_labels(coco["root"] / "lists/cls_labels.npy", COCO14)
    return {name: set(np.flatnonzero(labels[name]).tolist()) for name in names}


def test_cpn_has_an_81_channel_head(coco):
    state = torch.load(coco["weights"], weights_only=True)
    assert state["fc8.weight"].shape == (COCO14.num_classes, 4096, 1, 1)


def test_cams_every_format_and_the_81_class_sweep(coco):
    root, val_list = coco["root"], coco["root"] / "lists/val.txt"
    out = root / "infer"
    infer_cam.main(
        [*coco["common"], "--device", "cpu", "--weights", str(coco["weights"]), "--infer_list", str(val_list)]
        + ["--scales", SCALES, "--num_workers", "0", "--post_workers", "0", "--out_cam", str(out / "cam")]
        + ["--out_cam_irn", str(out / "cam_irn"), "--out_cam_pred", str(out / "pred"), "--vis_dir", str(out / "vis")]
    )
    names = load_image_list(val_list)
    classes = classes_of(coco, names)
    model = build_network("resnet38_CPN", COCO14)
    model.load_state_dict(torch.load(coco["weights"], weights_only=True))
    model.eval()
    labels = load_cls_labels(root / "lists/cls_labels.npy", COCO14)
    for name in names:
        cam = np.load(out / "cam" / f"{name}.npy", allow_pickle=True).item()
        assert set(cam) == classes[name] and max(classes[name]) < COCO14.num_fg_classes
        irn = np.load(out / "cam_irn" / f"{name}.npy", allow_pickle=True).item()
        assert set(irn["keys"].tolist()) == classes[name]
        pred = read_label_png(out / "pred" / f"{name}.png")
        assert set(np.unique(pred).tolist()) <= {0} | {index + 1 for index in classes[name]}
        assert (out / "vis" / f"{name}.jpg").is_file()
    first = names[0]
    image_path = COCO14.image_path(root / "coco", first)
    expected = direct_loop_cam(model, image_path, labels[first], (0.5, 1.0)) / 2
    cam = np.load(out / "cam" / f"{first}.npy", allow_pickle=True).item()
    for key, value in cam.items():
        np.testing.assert_allclose(value, expected[key], atol=1e-5)

    evaluation_cam.main(
        ["--dataset", "coco14", "--list", str(val_list), "--predict_dir", str(out / "cam"), "--num_workers", "0"]
        + ["--gt_dir", str(root / "coco/SegmentationClass"), "--logfile", "", "--json", str(out / "eval.json")]
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["classes"] == list(COCO14.class_names)
    assert len(result["thresholds"]) == len(COCO14.sweep) and result["thresholds"][0] == COCO14.sweep[0]


def test_irn_stage(coco):
    root, train_list, val_list = coco["root"], coco["root"] / "lists/train.txt", coco["root"] / "lists/val.txt"
    out = root / "irn"
    for image_list, cam_dir in ((train_list, out / "cam_train"), (val_list, out / "cam_val")):
        infer_cam.main(
            [*coco["common"], "--device", "cpu", "--weights", str(coco["weights"]), "--infer_list", str(image_list)]
            + ["--scales", "1.0", "--num_workers", "0", "--post_workers", "0", "--out_cam_irn", str(cam_dir)]
        )
    cam_to_ir_label.main(
        [*coco["common"], "--train_list", str(train_list), "--cam_out_dir", str(out / "cam_train")]
        + ["--ir_label_out_dir", str(out / "ir_label"), "--num_workers", "0"]
    )
    train_names = load_image_list(train_list)
    for name, present in classes_of(coco, train_names).items():
        values = set(np.unique(read_label_png(out / "ir_label" / f"{name}.png")).tolist())
        assert values <= {0, IGNORE_INDEX} | {index + 1 for index in present}
    train_irn.main(
        ["--dataset", "coco14", "--data_root", str(root / "coco"), "--train_list", str(train_list)]
        + ["--infer_list", str(train_list), "--ir_label_out_dir", str(out / "ir_label"), "--weights", "none"]
        + ["--irn_weights_name", str(out / "res50_irn.pth"), "--irn_crop_size", "80", "--irn_batch_size", "2"]
        + ["--max_steps", "1", "--num_workers", "0", "--device", "cpu", "--out_dir", str(out / "IRN")]
    )
    make_sem_seg_labels.main(
        [*coco["common"], "--device", "cpu", "--infer_list", str(val_list), "--cam_out_dir", str(out / "cam_val")]
        + ["--irn_weights_name", str(out / "res50_irn.pth"), "--sem_seg_out_dir", str(out / "sem_seg")]
        + ["--num_workers", "0"]
    )
    val_names = load_image_list(val_list)
    for name, present in classes_of(coco, val_names).items():
        label = np.asarray(Image.open(out / "sem_seg" / f"{name}.png"))
        assert label.shape == read_label_png(root / "coco/SegmentationClass" / f"{name}.png").shape
        assert set(np.unique(label).tolist()) <= {0} | {index + 1 for index in present}
    evaluation_cam.main(
        ["--dataset", "coco14", "--list", str(val_list), "--predict_dir", str(out / "sem_seg"), "--type", "png"]
        + ["--gt_dir", str(root / "coco/SegmentationClass"), "--logfile", "", "--json", str(out / "eval.json")]
        + ["--num_workers", "0"]
    )
    assert len(json.loads((out / "eval.json").read_text())["per_class"]) == COCO14.num_classes


def test_voc_weights_on_coco_are_one_line(coco, tmp_path):
    voc_weights = tmp_path / "voc.pth"
    torch.save(build_network("resnet38_CPN").state_dict(), voc_weights)
    with pytest.raises(SystemExit, match="fc8 has 21 outputs: these weights are for VOC2012; pass --dataset voc12$"):
        run_main(
            lambda: infer_cam.main(
                [*coco["common"], "--device", "cpu", "--weights", str(voc_weights)]
                + ["--infer_list", str(coco["root"] / "lists/val.txt"), "--out_cam", str(tmp_path / "cam")]
            )
        )
    assert not (tmp_path / "cam").exists() or not any((tmp_path / "cam").iterdir())
