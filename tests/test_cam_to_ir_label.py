"""cam_to_ir_label.py and tool/ir_label.py (SPEC-IRN §8): the confident-label rule against a pixel
loop written from the SPEC (stub CRFs), and the script end to end on toy images with synthetic
IRN-format CAMs: values, resume, sharding, the manifest, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cam_to_ir_label
from engine.errors import UserError
from engine.fileio import read_label_png, save_npy
from engine.manifest import MANIFEST_NAME
from tool.ir_label import confident_labels, threshold_labels
from voc12.data import load_cls_labels, load_image_list

needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf is not installed"
)
NUM_IMAGES = 4  # toy train images the script runs on


# --- The rule, against a loop written from SPEC-IRN §8 --------------------------------------


def identity_crf(image, label_maps, num_labels):
    assert all(labels.max(initial=0) < num_labels for labels in label_maps)
    return list(label_maps)


def shifting_crf(image, label_maps, num_labels):
    """Moves the labels one pixel right: fg and bg then disagree in places, as real CRFs can."""
    return [np.roll(labels, 1, axis=1) for labels in label_maps]


def spec_loop(image, high_res, keys, crf, fg_thres, bg_thres) -> np.ndarray:
    """SPEC-IRN §8 pixel by pixel: keys' = [0, keys+1]; per threshold the first maximum of
    (t, high_res...), CRF, keys'; conf = fg, 255 where fg is 0, 0 where fg + bg is 0."""
    keys_prime = [0] + [int(key) + 1 for key in keys]
    _, height, width = high_res.shape
    per_threshold = []
    for threshold in (fg_thres, bg_thres):
        indices = np.zeros((height, width), np.int64)
        for y in range(height):
            for x in range(width):
                scores = [np.float32(threshold)] + [high_res[k, y, x] for k in range(len(keys))]
                indices[y, x] = next(i for i, score in enumerate(scores) if score == max(scores))
        (refined,) = crf(image, [indices], len(keys_prime))
        per_threshold.append(np.array([[keys_prime[i] for i in row] for row in refined]))
    fg, bg = per_threshold
    conf = fg.copy()
    conf[fg == 0] = 255
    conf[fg + bg == 0] = 0
    return conf.astype(np.uint8)


@pytest.mark.parametrize("crf", [identity_crf, shifting_crf])
@pytest.mark.parametrize("num_keys", [0, 1, 3])
def test_confident_labels_equal_the_spec_loop(crf, num_keys):
    rng = np.random.default_rng(num_keys)
    for _ in range(5):
        keys = np.sort(rng.choice(20, size=num_keys, replace=False))
        # Multiples of 0.05 give ties between classes and with both thresholds.
        high_res = (rng.integers(0, 9, size=(num_keys, 6, 7)) * 0.05).astype(np.float32)
        image = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
        got = confident_labels(image, high_res, keys, crf, 0.30, 0.05)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, spec_loop(image, high_res, keys, crf, 0.30, 0.05))


def test_threshold_ties_go_to_the_background_plane_and_the_first_class():
    high_res = np.array([[[0.3, 0.5, 0.2]], [[0.1, 0.5, 0.4]]], np.float32)
    np.testing.assert_array_equal(threshold_labels(high_res, 0.3), [[0, 1, 2]])


def test_crf_sees_the_image_and_k_plus_one_labels():
    seen = []

    def recording_crf(image, label_maps, num_labels):
        seen.append((image.shape, [labels.shape for labels in label_maps], num_labels))
        return label_maps

    confident_labels(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 2, 3), np.float32), np.array([4, 9]), recording_crf)
    assert seen == [((2, 3, 3), [(2, 3), (2, 3)], 3)]  # one CRF call: fg's map, then bg's


# --- The script on toy images ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_cams(toy_voc, toy_lists, tmp_path_factory) -> dict:
    """IRN-format CAM files for NUM_IMAGES toy train images: each present class's map is its ground
    truth mask (0.8) plus noise, with a stride-4 `cam`, and no manifest (as IRN's own folders)."""
    root = tmp_path_factory.mktemp("ir_label")
    names = load_image_list(toy_lists["train"])[:NUM_IMAGES]
    cls_labels = load_cls_labels(toy_lists["cls_labels"])
    rng = np.random.default_rng(0)
    for name in names:
        truth = read_label_png(toy_voc / "SegmentationClass" / f"{name}.png")
        keys = np.flatnonzero(cls_labels[name])
        maps = np.stack([(truth == key + 1) * 0.8 for key in keys]) + rng.random((len(keys), *truth.shape)) * 0.2
        high_res = np.clip(maps, 0, 1).astype(np.float32)
        cam = high_res[:, ::4, ::4].copy()
        if name == names[0]:  # as IRN's own make_cam writes them: keys and cam are torch tensors
            keys, cam = torch.from_numpy(keys), torch.from_numpy(cam)
        save_npy(root / "cams" / f"{name}.npy", {"keys": keys, "cam": cam, "high_res": high_res})
    (root / "list.txt").write_text("\n".join(names) + "\n")
    return {"root": root, "names": names, "cams": root / "cams", "list": root / "list.txt"}


def script_args(toy_voc, toy_lists, toy_cams, out_dir, *extra) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--train_list",
        str(toy_cams["list"]),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--cam_out_dir",
        str(toy_cams["cams"]),
        "--ir_label_out_dir",
        str(out_dir),
        "--num_workers",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def labelled(toy_voc, toy_lists, toy_cams) -> Path:
    out_dir = toy_cams["root"] / "labels"
    cam_to_ir_label.main(script_args(toy_voc, toy_lists, toy_cams, out_dir, "--num_workers", "2"))
    return out_dir


@needs_pydensecrf
def test_labels_are_single_channel_pngs_of_the_image_classes(labelled, toy_voc, toy_lists, toy_cams):
    cls_labels = load_cls_labels(toy_lists["cls_labels"])
    for name in toy_cams["names"]:
        with Image.open(labelled / f"{name}.png") as image:
            assert image.mode == "L"
            labels = np.asarray(image)
        truth = read_label_png(toy_voc / "SegmentationClass" / f"{name}.png")
        assert labels.shape == truth.shape
        assert set(np.unique(labels)) <= {0, 255, *(np.flatnonzero(cls_labels[name]) + 1)}
        assert {0, 255} <= set(np.unique(labels))  # confident background and an unsure band
        # Easy synthetic CAMs: the confident pixels are right.
        confident = (labels != 255) & (truth != 255)
        assert (labels[confident] == truth[confident]).mean() > 0.95


@needs_pydensecrf
def test_rerun_resumes_and_workers_do_not_change_labels(labelled, toy_voc, toy_lists, toy_cams, tmp_path, capsys):
    cam_to_ir_label.main(script_args(toy_voc, toy_lists, toy_cams, labelled))
    assert f"{NUM_IMAGES} already done, 0 to do" in capsys.readouterr().out
    # One image removed: only it is redone, the same as the pool's.
    name = toy_cams["names"][1]
    before = np.asarray(Image.open(labelled / f"{name}.png"))
    (labelled / f"{name}.png").unlink()
    cam_to_ir_label.main(script_args(toy_voc, toy_lists, toy_cams, labelled))
    assert f"{NUM_IMAGES - 1} already done, 1 to do" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(labelled / f"{name}.png")), before)


@needs_pydensecrf
def test_manifest_records_thresholds_and_refuses_other_ones(labelled, toy_voc, toy_lists, toy_cams):
    manifest = json.loads((labelled / MANIFEST_NAME).read_text())
    assert manifest["settings"] == {
        "output": "ir_label_out_dir",
        "dataset": "voc12",
        "cam_settings": None,
        "conf_fg_thres": 0.30,
        "conf_bg_thres": 0.05,
    }
    assert manifest["weights_sha256"] == "unknown" and manifest["weights"] == str(toy_cams["cams"].resolve())
    with pytest.raises(UserError, match=r"with conf_fg_thres 0.3, this run uses conf_fg_thres 0.4.*--overwrite"):
        cam_to_ir_label.main(script_args(toy_voc, toy_lists, toy_cams, labelled, "--conf_fg_thres", "0.4"))


@needs_pydensecrf
def test_torchrun_rank_takes_every_nth_image(toy_voc, toy_lists, toy_cams, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cam_to_ir_label.main(script_args(toy_voc, toy_lists, toy_cams, tmp_path / "out"))
    written = sorted(path.stem for path in (tmp_path / "out").glob("*.png"))
    assert written == toy_cams["names"][1::2]


def copy_cams(toy_cams, tmp_path) -> Path:
    cams = tmp_path / "cams"
    cams.mkdir()
    for name in toy_cams["names"]:
        (cams / f"{name}.npy").write_bytes((toy_cams["cams"] / f"{name}.npy").read_bytes())
    return cams


def run_with_cams(toy_voc, toy_lists, toy_cams, cams: Path, out_dir: Path):
    cam_to_ir_label.main(script_args(toy_voc, toy_lists, {**toy_cams, "cams": cams}, out_dir))


@needs_pydensecrf
def test_missing_cam_files_are_listed(toy_voc, toy_lists, toy_cams, tmp_path):
    cams = copy_cams(toy_cams, tmp_path)
    for name in toy_cams["names"][:3]:
        (cams / f"{name}.npy").unlink()
    first = toy_cams["names"][0]
    expected = rf"3 of {NUM_IMAGES} images to do have no CAM file {cams}/<name>\.npy: {first}, \S+, \S+; write IRN"
    with pytest.raises(UserError, match=expected):
        run_with_cams(toy_voc, toy_lists, toy_cams, cams, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_pydensecrf
@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda cam: {int(key): values for key, values in zip(cam["keys"], cam["high_res"])},
            "infer_cam.py --out_cam_irn",
        ),
        (lambda cam: {**cam, "keys": (cam["keys"] + 1) % 20}, "other than the image's class labels"),
        (lambda cam: {**cam, "high_res": cam["high_res"][:, 1:]}, "is .* but its CAM .* is"),
    ],
    ids=["reference-format", "other-keys", "other-size"],
)
def test_bad_cam_files_are_one_line_errors_before_the_manifest(toy_voc, toy_lists, toy_cams, tmp_path, edit, message):
    cams = copy_cams(toy_cams, tmp_path)
    name = toy_cams["names"][0]
    cam = np.load(cams / f"{name}.npy", allow_pickle=True).item()
    save_npy(cams / f"{name}.npy", edit(cam))
    with pytest.raises(UserError, match=message) as error:
        run_with_cams(toy_voc, toy_lists, toy_cams, cams, tmp_path / "out")
    assert "\n" not in str(error.value) and name in str(error.value)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


@needs_pydensecrf
def test_cam_folder_manifest_names_the_weights(toy_voc, toy_lists, toy_cams, tmp_path, monkeypatch):
    cams = copy_cams(toy_cams, tmp_path)
    cam_manifest = {"weights": "/runs/cpn.pth", "weights_sha256": "ab" * 32, "settings": {"scales": [1.0]}}
    (cams / MANIFEST_NAME).write_text(json.dumps(cam_manifest))
    monkeypatch.setattr(cam_to_ir_label, "confident_labels", lambda image, *rest: np.zeros(image.shape[:2], np.uint8))
    run_with_cams(toy_voc, toy_lists, toy_cams, cams, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["weights"] == "/runs/cpn.pth" and manifest["weights_sha256"] == "ab" * 32
    assert manifest["settings"]["cam_settings"] == {"scales": [1.0]}


@needs_pydensecrf
def test_cam_folder_without_manifest_warns_and_an_unreadable_one_is_refused(
    toy_voc, toy_lists, toy_cams, tmp_path, monkeypatch, capsys
):
    cams = copy_cams(toy_cams, tmp_path)
    monkeypatch.setattr(cam_to_ir_label, "confident_labels", lambda image, *rest: np.zeros(image.shape[:2], np.uint8))
    run_with_cams(toy_voc, toy_lists, toy_cams, cams, tmp_path / "out")
    assert f"warning: {cams} has no {MANIFEST_NAME}" in capsys.readouterr().err
    (cams / MANIFEST_NAME).write_text("{")
    with pytest.raises(UserError, match=rf"^cannot read {cams / MANIFEST_NAME} \(.*\); write IRN-format CAMs"):
        run_with_cams(toy_voc, toy_lists, toy_cams, cams, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
