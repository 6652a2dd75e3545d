"""make_sem_seg_labels.py (SPEC-IRN §9): the per-image labels against a composition written from the SPEC
with the dense walk, end to end on the toy set (IRN-format CAM files written here, a random IRNet saved in
IRN's layout), resume, manifests, --overwrite, sharding and the bad inputs. Every forward is at 512×512 on
the CPU (~2 s), so the runs use two images."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import make_sem_seg_labels
from engine.errors import UserError
from engine.manifest import MANIFEST_NAME
from network.resnet50_irn import Net
from network.weights import save_irn_weights
from tests.reference_walk import random_walk_dense
from tool.imutils import Normalize
from voc12.data import load_cls_labels, load_image_list

REPO = Path(__file__).resolve().parent.parent


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


def image_pair(image: np.ndarray) -> torch.Tensor:
    """SPEC-IRN §9's input: the normalised image at scale 1 and its flip, 2×3×H×W."""
    chw = torch.from_numpy(Normalize()(image).transpose(2, 0, 1).copy())
    return torch.stack([chw, chw.flip(-1)])


def spec_labels(net, pair, cam, keys, pad_to, beta=10, exp_times=8, bg_threshold=0.25) -> np.ndarray:
    """SPEC-IRN §9 step by step, with the reference's dense walk."""
    height, width = pair.shape[2:]
    h, w = stride4_size(height, width)
    canvas = torch.zeros(2, 3, pad_to, pad_to)
    canvas[:, :, :height, :width] = pair
    with torch.no_grad():
        edge = net(canvas)[0][:, 0, :h, :w]
    boundary = torch.sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)
    rw = random_walk_dense(cam.double(), boundary.double(), beta, exp_times)
    rw_up = F.interpolate(rw[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
    rw_up = rw_up / rw_up.max()
    scores = torch.cat([torch.full((1, height, width), bg_threshold), rw_up])
    return np.pad(keys + 1, (1, 0))[scores.argmax(dim=0).numpy()].astype(np.uint8)


def random_net(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


def cam_dict(keys: np.ndarray, height: int, width: int, seed: int) -> dict:
    """IRN's make_cam format (SPEC-IRN §11) with smooth random maps: a blob per class."""
    rng = np.random.default_rng(seed)
    h, w = stride4_size(height, width)
    ys, xs = np.mgrid[0:h, 0:w]
    cams = []
    for _ in keys:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        cams.append(np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (0.3 * max(h, w)) ** 2)))
    cam = np.stack(cams).astype(np.float32)
    high_res = F.interpolate(torch.from_numpy(cam)[None], size=(height, width), mode="bilinear")[0].numpy()
    return {"keys": keys.astype(np.int64), "cam": torch.from_numpy(cam), "high_res": high_res}


# --- The per-image function -----------------------------------------------------------------


def test_sem_seg_label_is_the_spec_composition():
    net = random_net(seed=3)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(26, 30, 3)).astype(np.uint8)
    pair = image_pair(image)
    keys = np.array([4, 11])
    cam = torch.from_numpy(rng.random((2, *stride4_size(26, 30))).astype(np.float32))
    for beta, exp_times, bg_threshold in ((10, 8, 0.25), (4, 3, 0.5)):
        label = make_sem_seg_labels.sem_seg_label(
            net, pair, cam, keys, beta=beta, exp_times=exp_times, bg_threshold=bg_threshold, pad_to=64
        )
        expected = spec_labels(net, pair, cam, keys, 64, beta, exp_times, bg_threshold)
        assert label.dtype == np.uint8 and label.shape == (26, 30)
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= {0, 5, 12}


# --- End to end on the toy set ----------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "res50_irn.pth"
    save_irn_weights(random_net(seed=0), path)
    return path


@pytest.fixture(scope="module")
def toy(toy_voc, toy_lists, tmp_path_factory) -> dict:
    """The two smallest training images, their list and IRN-format CAM files."""
    names = load_image_list(toy_lists["train"])
    sizes = {name: Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").size for name in names}
    chosen = sorted(names, key=lambda name: sizes[name][0] * sizes[name][1])[:2]
    folder = tmp_path_factory.mktemp("sem_seg_inputs")
    list_path = folder / "two.txt"
    list_path.write_text("\n".join(chosen) + "\n")
    cls_labels = load_cls_labels(toy_lists["cls_labels"])
    cam_dir = folder / "cam"
    cam_dir.mkdir()
    keys = {}
    for seed, name in enumerate(chosen):
        width, height = sizes[name]
        keys[name] = np.flatnonzero(cls_labels[name] > 0)
        np.save(cam_dir / f"{name}.npy", cam_dict(keys[name], height, width, seed))
    return {"names": chosen, "list": list_path, "cam_dir": cam_dir, "keys": keys, "sizes": sizes}


def cli_args(toy_voc, toy_lists, weights, toy, out: Path, *extra: str) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(toy["list"]),
        "--cam_out_dir",
        str(toy["cam_dir"]),
        "--irn_weights_name",
        str(weights),
        "--sem_seg_out_dir",
        str(out),
        "--num_workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def run_dir(toy_voc, toy_lists, weights, toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sem_seg")
    make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, weights, toy, out))
    return out


def file_times(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}


def test_labels_are_single_channel_pngs_of_present_classes(run_dir, toy, toy_voc, weights):
    for name in toy["names"]:
        with Image.open(run_dir / f"{name}.png") as png:
            assert png.mode == "L" and png.size == toy["sizes"][name]
            label = np.asarray(png)
        assert label.max() <= 20
        assert set(np.unique(label)) <= {0, *(toy["keys"][name] + 1)}
    # The script's file is the per-image function at IRN's 512 padding, on the weights read back from IRN's layout.
    name = toy["names"][0]
    cam = torch.as_tensor(np.load(toy["cam_dir"] / f"{name}.npy", allow_pickle=True).item()["cam"])
    pair = image_pair(np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").convert("RGB")))
    expected = make_sem_seg_labels.sem_seg_label(random_net(seed=0), pair, cam, toy["keys"][name])
    np.testing.assert_array_equal(np.asarray(Image.open(run_dir / f"{name}.png")), expected)


def test_manifest_records_weights_and_walk_settings(run_dir, weights):
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["settings"] == {
        "output": "sem_seg_out_dir",
        "dataset": "voc12",
        "precision": "fp32",
        "width": 1,
        "cam_weights_sha256": None,  # the test's CAM folder has no infer_cam.py manifest
        "beta": 10.0,
        "exp_times": 8,
        "sem_seg_bg_thres": 0.25,
    }


def test_resume_skips_done_images(run_dir, toy_voc, toy_lists, weights, toy, capsys):
    before = file_times(run_dir)
    capsys.readouterr()
    make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, weights, toy, run_dir))
    assert "2 already done, 0 to do" in capsys.readouterr().out
    assert file_times(run_dir) == before


def test_other_settings_or_cams_are_refused(run_dir, toy_voc, toy_lists, weights, toy, tmp_path):
    before = file_times(run_dir)
    with pytest.raises(UserError, match=r"with beta 10\.0, this run uses beta 5\.0"):
        make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, weights, toy, run_dir, "--beta", "5"))
    # CAMs remade by other CPN weights (their folder's manifest says so) are refused too.
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    for path in toy["cam_dir"].iterdir():
        (cam_dir / path.name).write_bytes(path.read_bytes())
    cam_manifest = {"weights": "/runs/other_cpn.pth", "weights_sha256": "ab" * 32, "settings": {}}
    (cam_dir / MANIFEST_NAME).write_text(json.dumps(cam_manifest))
    args = cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": cam_dir}, run_dir)
    with pytest.raises(UserError, match="cam_weights_sha256"):
        make_sem_seg_labels.main(args)
    # A CAM manifest that cannot be read is refused, not taken for a folder without one.
    (cam_dir / MANIFEST_NAME).write_text("[]")
    with pytest.raises(UserError, match=r"cannot read .*manifest\.json \(not an output manifest\); write IRN-format"):
        make_sem_seg_labels.main(args)
    assert file_times(run_dir) == before


def test_overwrite_rewrites_labels_and_manifest(run_dir, toy_voc, toy_lists, weights, toy, tmp_path):
    out = tmp_path / "sem_seg"
    out.mkdir()
    for path in run_dir.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    one = tmp_path / "one.txt"
    one.write_text(toy["names"][0] + "\n")
    before = file_times(out)
    make_sem_seg_labels.main(
        cli_args(toy_voc, toy_lists, weights, {**toy, "list": one}, out, "--beta", "5", "--overwrite")
    )
    changed = {path.name for path, time in file_times(out).items() if time != before[path]}
    assert changed == {f"{toy['names'][0]}.png", MANIFEST_NAME}
    assert json.loads((out / MANIFEST_NAME).read_text())["settings"]["beta"] == 5.0


def test_torchrun_rank_takes_its_share(toy_voc, toy_lists, weights, toy, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, weights, toy, tmp_path))
    assert sorted(path.stem for path in tmp_path.glob("*.png")) == toy["names"][1::2]
    assert (tmp_path / MANIFEST_NAME).is_file()


# --- Bad inputs: one line, before any label is written --------------------------------------------


def test_missing_cams_are_listed(toy_voc, toy_lists, weights, toy, tmp_path):
    empty = tmp_path / "cam"
    empty.mkdir()
    args = cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": empty}, tmp_path / "out")
    with pytest.raises(UserError, match=rf"2 of 2 images to do have no CAM file {empty}/<name>\.npy: .*--out_cam_irn"):
        make_sem_seg_labels.main(args)
    assert not (tmp_path / "out").exists()


def test_cam_file_without_cam_names_out_cam_irn(toy_voc, toy_lists, weights, toy, tmp_path):
    """A reference-format file ({class: H×W map}, infer_cam.py --out_cam) or an older IRN-format one."""
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    for name in toy["names"]:
        width, height = toy["sizes"][name]
        np.save(cam_dir / f"{name}.npy", {int(key): np.zeros((height, width), np.float32) for key in toy["keys"][name]})
    args = cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": cam_dir}, tmp_path / "out")
    with pytest.raises(UserError, match=r"has no 'cam' or 'keys' entry.*infer_cam\.py --out_cam_irn"):
        make_sem_seg_labels.main(args)
    assert not list((tmp_path / "out").glob("*"))


def test_keys_disagreeing_with_the_labels(toy_voc, toy_lists, weights, toy, tmp_path):
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    for seed, name in enumerate(toy["names"]):
        width, height = toy["sizes"][name]
        other = np.array([19]) if 19 not in toy["keys"][name] else np.array([0])
        np.save(cam_dir / f"{name}.npy", cam_dict(other, height, width, seed))
    args = cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": cam_dir}, tmp_path / "out")
    expected = r"holds classes \((tvmonitor|aeroplane)\) other than the image's class labels in .* \(\w+"
    with pytest.raises(UserError, match=expected):
        make_sem_seg_labels.main(args)


def test_cam_of_another_size_is_refused(toy_voc, toy_lists, weights, toy, tmp_path):
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    for seed, name in enumerate(toy["names"]):
        width, height = toy["sizes"][name]
        np.save(cam_dir / f"{name}.npy", cam_dict(toy["keys"][name], height + 8, width, seed))
    args = cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": cam_dir}, tmp_path / "out")
    with pytest.raises(UserError, match=r"'cam' has shape .* made from other images"):
        make_sem_seg_labels.main(args)


def test_weights_that_are_not_irnet_are_refused(toy_voc, toy_lists, toy, tmp_path):
    backbone_only = tmp_path / "resnet50.pth"  # a torchvision-layout ImageNet file: no boundary head
    torch.save(Net().resnet50.state_dict(), backbone_only)
    with pytest.raises(UserError, match="lacks IRNet's boundary head.*not an IRNet weights file"):
        make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, backbone_only, toy, tmp_path / "out"))
    other = tmp_path / "other.pth"
    torch.save({"conv1a.weight": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="missing .* backbone tensors"):
        make_sem_seg_labels.main(cli_args(toy_voc, toy_lists, other, toy, tmp_path / "out"))


@pytest.mark.slow  # the script in a new process
def test_cli_error_is_one_line(toy_voc, toy_lists, weights, toy, tmp_path):
    empty = tmp_path / "cam"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "make_sem_seg_labels.py")]
        + cli_args(toy_voc, toy_lists, weights, {**toy, "cam_dir": empty}, tmp_path / "out"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 2 images to do have no CAM file")
