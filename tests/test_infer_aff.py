"""infer_aff.py (SPEC_AFF §4-5): the per-image label against SPEC_AFF §4 written out with loops and the dense
transition matrix, the halved and the restored CAM scale, end to end on the toy set (CAM dicts written here, a stand-in
AffinityNet whose forward and pairs are resnet38_aff.Net's on a small feature map, saved by the trainers' writer),
resume, manifests, sharding, scoring with evaluation_cam.py --type png, and the bad inputs. The real width-1 network
(~106M parameters, ~10 s on the CPU) runs once, in the slow test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_evaluation_cam import do_python_eval
from torch import nn

import evaluation_cam
import infer_aff
from engine.errors import UserError
from engine.fileio import read_label_png, save_npy
from engine.manifest import MANIFEST_NAME, FolderManifest
from engine.training import save_weights
from network import resnet38_aff
from network.weights import load_network, load_weights
from tests.reference_aff import pairs_loop, walk_labels_dense
from tests.test_weights import constant_state
from voc12.data import load_cls_labels, load_image_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SPEC §1, retyped: the slow version depends on no constant it checks
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny maps: waking threads for each of the walk's 64 small products costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyAffinityNet(resnet38_aff.Net):
    """resnet38_aff.Net's forward (the pairs' affinities) and pairs on a stand-in feature map: conv1a (its files then
    hold the width-1 backbone key the loader reads the width from), an 8×8 average pool and f9, 16 channels."""

    def __init__(self, seed: int = 0):
        nn.Module.__init__(self)
        torch.manual_seed(seed)
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.f9 = nn.Conv2d(64, 16, 1, bias=False)
        self._pairs = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.f9(F.avg_pool2d(self.conv1a(x), 8)))

    def train(self, mode: bool = True):
        return nn.Module.train(self, mode)  # resnet38d.Net's freezes layers the stand-in lacks


def tiny_load_network(name: str, path):
    """infer_aff's `load_network` for TinyAffinityNet files: the model, `load_weights`' report."""
    assert name == infer_aff.AFF_NETWORK
    model = TinyAffinityNet(seed=99)
    return model, load_weights(model, path)


def normalised(image: np.ndarray) -> torch.Tensor:
    """SPEC_AFF §4 step 1: uint8 / 255 in float64, ImageNet mean and std, float32, CHW."""
    chw = ((image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    return torch.from_numpy(chw.transpose(2, 0, 1).copy())


def spec_walk_label(model, image: np.ndarray, cams: dict, alpha: float, beta: float, logt: int) -> np.ndarray:
    """SPEC_AFF §4 step by step: pad the normalised image, the network's head features, the affinity of each pair
    by a loop (radius 5, or (min side − 1)//2 on a grid side under 11), the 21-channel CAM with its background,
    then the dense walk (tests/reference_aff.py: pad, pool, T squared logt times, upsample, argmax, crop)."""
    height, width = image.shape[:2]
    grid = (int(np.ceil(height / 8)), int(np.ceil(width / 8)))
    padded = torch.zeros(1, 3, 8 * grid[0], 8 * grid[1])
    padded[0, :, :height, :width] = normalised(image)
    with torch.no_grad():
        features = model.features(padded)[0].flatten(1).double()
    radius = (min(grid) - 1) // 2 if min(grid) < 11 else 5
    sources, targets = pairs_loop(grid, radius)
    affinities = torch.tensor(
        [
            [torch.exp(-(features[:, dst] - features[:, src]).abs().mean()).item() for src, dst in zip(sources, row)]
            for row in targets
        ],
        dtype=torch.float64,
    )
    scores = torch.zeros(21, height, width, dtype=torch.float64)
    for key, cam in cams.items():
        scores[key + 1] = torch.from_numpy(cam)
    scores[0] = (1 - scores[1:].max(dim=0).values) ** alpha
    return walk_labels_dense(scores, affinities, grid, radius, beta, logt).numpy().astype(np.uint8)


def blob_cams(keys, height: int, width: int, seed: int, peak: float = 0.5) -> dict[int, np.ndarray]:
    """Smooth maps below `peak` (infer_cam.py --out_cam's halved scale at 0.5), a blob per class."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    cams = {}
    for key in keys:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (0.3 * max(height, width)) ** 2))
        cams[int(key)] = (peak * 0.999 * blob).astype(np.float32)
    return cams


# --- The per-image function -----------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(41, 59), (90, 97)])  # grids 6×8 (radius 2, §6.10) and 12×13
def test_walk_label_is_the_spec_composition(height, width):
    model = TinyAffinityNet().eval()
    rng = np.random.default_rng(height)
    image = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
    cams = blob_cams([4, 11], height, width, seed=width, peak=1.0)
    for alpha, beta, logt in ((6.0, 8, 6), (16.0, 8, 3)):
        label = infer_aff.walk_label(model, normalised(image), cams, 21, alpha=alpha, beta=beta, logt=logt)
        expected = spec_walk_label(model, image, cams, alpha, beta, logt)
        assert label.dtype == np.uint8 and label.shape == (height, width)
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= {0, 5, 12}
    assert len(set(np.unique(label))) > 1


def test_doubled_cams_are_seam_s_scale():
    model = TinyAffinityNet().eval()
    image = normalised(np.random.default_rng(0).integers(0, 256, size=(48, 64, 3)).astype(np.uint8))
    seam = {3: np.full((48, 64), 0.3, np.float32)}  # SEAM's scale: 0.3 > (1 − 0.3)^6 = 0.118, the class wins
    halved = {3: seam[3] / 2}  # infer_cam.py --out_cam's: 0.15 < (1 − 0.15)^6 = 0.377, the background wins
    doubled = infer_aff.walk_label(model, image, halved, 21, cam_scale=2.0)
    np.testing.assert_array_equal(doubled, infer_aff.walk_label(model, image, seam, 21))
    assert (doubled == 4).all()
    assert (infer_aff.walk_label(model, image, halved, 21) == 0).all()


def test_an_image_without_classes_is_background():
    label = infer_aff.walk_label(TinyAffinityNet().eval(), torch.zeros(3, 20, 30), {}, 21)
    assert label.shape == (20, 30) and not label.any()


# --- End to end on the toy set ----------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(TinyAffinityNet(seed=99), tmp_path_factory.mktemp("weights") / "resnet38_aff.pth")


@pytest.fixture(scope="module")
def toy(toy_voc, toy_lists, tmp_path_factory) -> dict:
    """Three training images, their list, CAM dicts (halved scale) and the CAM folder's manifest as infer_cam.py
    --out_cam writes it."""
    names = load_image_list(toy_lists["train"])[:3]
    sizes = {name: Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").size for name in names}
    folder = tmp_path_factory.mktemp("aff_inputs")
    list_path = folder / "three.txt"
    list_path.write_text("\n".join(names) + "\n")
    cls_labels = load_cls_labels(toy_lists["cls_labels"])
    cam_dir = folder / "cam"
    cam_dir.mkdir()
    keys = {}
    for seed, name in enumerate(names):
        width, height = sizes[name]
        keys[name] = np.flatnonzero(cls_labels[name] > 0)
        save_npy(cam_dir / f"{name}.npy", blob_cams(keys[name], height, width, seed))
    cam_weights = folder / "cpn.pth"
    cam_weights.write_bytes(b"cpn")
    FolderManifest(
        cam_dir,
        weights=cam_weights,
        weights_sha256=hashlib.sha256(b"cpn").hexdigest(),
        settings={"output": "out_cam", "dataset": "voc12"},
        input_list=list_path,
        version=None,
    ).write()
    return {"names": names, "list": list_path, "cam_dir": cam_dir, "keys": keys, "sizes": sizes}


@pytest.fixture()
def tiny_network(monkeypatch):
    monkeypatch.setattr(infer_aff, "load_network", tiny_load_network)


def cli_args(toy_voc, weights, toy, out: Path, *extra: str) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--infer_list",
        str(toy["list"]),
        "--cam_dir",
        str(toy["cam_dir"]),
        "--weights",
        str(weights),
        "--out_rw",
        str(out),
        "--num_workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def run_dir(toy_voc, weights, toy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out_rw")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(infer_aff, "load_network", tiny_load_network)
        infer_aff.main(cli_args(toy_voc, weights, toy, out))
    return out


def file_times(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}


def test_labels_are_single_channel_pngs_of_the_walk(run_dir, toy, toy_voc):
    model = TinyAffinityNet(seed=99).eval()
    for name in toy["names"]:
        with Image.open(run_dir / f"{name}.png") as png:
            assert png.mode == "L" and png.size == toy["sizes"][name] and png.getpalette() is None
            label = np.asarray(png)
        assert set(np.unique(label)) <= {0, *(toy["keys"][name] + 1)}
        image = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        cams = np.load(toy["cam_dir"] / f"{name}.npy", allow_pickle=True).item()
        np.testing.assert_array_equal(label, infer_aff.walk_label(model, normalised(image), cams, 21))


def test_manifest_records_weights_walk_scale_and_cam_provenance(run_dir, weights, toy):
    manifest = json.loads((run_dir / MANIFEST_NAME).read_text())
    assert manifest["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["settings"] == {
        "output": "out_rw",
        "dataset": "voc12",
        "precision": "fp32",
        "width": 1,
        "cam_weights_sha256": hashlib.sha256(b"cpn").hexdigest(),
        "alpha": 6.0,
        "beta": 8.0,
        "logt": 6,
        "double_cams": False,
    }
    assert manifest["provenance"] == {
        "cam_dir": str(toy["cam_dir"].resolve()),
        "cams_made_by": {
            "weights": str((toy["cam_dir"].parent / "cpn.pth").resolve()),
            "settings": {"output": "out_cam", "dataset": "voc12"},
        },
    }


def test_resume_skips_done_images_and_other_settings_are_refused(run_dir, toy_voc, weights, toy, tiny_network, capsys):
    before = file_times(run_dir)
    capsys.readouterr()
    infer_aff.main(cli_args(toy_voc, weights, toy, run_dir))
    out = capsys.readouterr().out
    assert "3 already done, 0 to do; device cpu, fp32, alpha 6, beta 8, logt 6 (64 steps)" in out
    assert "CAMs read as written (made by infer_cam.py --out_cam)" in out and "--double_cams restores" in out
    with pytest.raises(UserError, match="with double_cams false, this run uses double_cams true"):
        infer_aff.main(cli_args(toy_voc, weights, toy, run_dir, "--double_cams"))
    with pytest.raises(UserError, match=r"with alpha 6\.0, this run uses alpha 16\.0"):
        infer_aff.main(cli_args(toy_voc, weights, toy, run_dir, "--psa"))
    assert file_times(run_dir) == before


def test_psa_sets_psa_s_walk_where_not_given():
    required = ["--weights", "w.pth", "--cam_dir", "cam", "--out_rw", "rw"]
    assert (infer_aff.parse_args(required).alpha, infer_aff.parse_args(required).logt) == (6.0, 6)
    psa = infer_aff.parse_args([*required, "--psa"])
    assert (psa.alpha, psa.beta, psa.logt) == (16.0, 8.0, 8)
    assert infer_aff.parse_args([*required, "--psa", "--logt", "2"]).logt == 2


def test_psa_and_double_cams_run(toy_voc, weights, toy, tiny_network, tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text(toy["names"][0] + "\n")
    extra = ("--psa", "--logt", "2", "--double_cams")
    infer_aff.main(cli_args(toy_voc, weights, {**toy, "list": one}, tmp_path / "rw", *extra))
    out = capsys.readouterr().out
    assert "alpha 16, beta 8, logt 2 (4 steps)" in out and "CAMs doubled (--double_cams)" in out
    settings = json.loads((tmp_path / "rw" / MANIFEST_NAME).read_text())["settings"]
    assert (settings["alpha"], settings["logt"], settings["double_cams"]) == (16.0, 2, True)
    name = toy["names"][0]
    image = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    cams = np.load(toy["cam_dir"] / f"{name}.npy", allow_pickle=True).item()
    expected = infer_aff.walk_label(
        TinyAffinityNet(seed=99).eval(), normalised(image), cams, 21, alpha=16, logt=2, cam_scale=2
    )
    np.testing.assert_array_equal(read_label_png(tmp_path / "rw" / f"{name}.png"), expected)


def test_torchrun_rank_takes_its_share(toy_voc, weights, toy, tiny_network, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    infer_aff.main(cli_args(toy_voc, weights, toy, tmp_path))
    assert sorted(path.stem for path in tmp_path.glob("*.png")) == toy["names"][1::2]


def test_evaluation_cam_scores_the_pngs_as_seam_s_evaluation(run_dir, toy, toy_voc, tmp_path):
    """SPEC_AFF §5: SEAM's evaluation.py --type png (P, T, TP over gt < 255, mean IoU over all 21 classes)."""
    result = evaluation_cam.main(
        ["--list", str(toy["list"]), "--predict_dir", str(run_dir), "--gt_dir", str(toy_voc / "SegmentationClass")]
        + ["--type", "png", "--num_workers", "0", "--logfile", str(tmp_path / "eval.txt")]
    )
    predictions = {name: np.asarray(Image.open(run_dir / f"{name}.png")) for name in toy["names"]}
    truths = {name: read_label_png(toy_voc / "SegmentationClass" / f"{name}.png") for name in toy["names"]}
    assert result["best_miou"] == pytest.approx(do_python_eval(predictions, truths), abs=1e-9)


# --- Bad inputs: one line, before any label is written --------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_cams_are_listed(toy_voc, weights, toy, tmp_path):
    cam_dir = tmp_path / "cam"
    cam_dir.mkdir()
    for name in toy["names"][:2]:
        (cam_dir / f"{name}.npy").write_bytes((toy["cam_dir"] / f"{name}.npy").read_bytes())
    with pytest.raises(UserError) as error:
        infer_aff.main(cli_args(toy_voc, weights, {**toy, "cam_dir": cam_dir}, tmp_path / "out"))
    assert f"1 of 3 images to do have no CAM file {cam_dir}/<name>.npy: {toy['names'][2]}" in one_line(error)
    assert "infer_cam.py --out_cam" in one_line(error)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("state", "what"),
    [
        ({"conv1a.weight": (64, 3, 3, 3), "fc8.weight": (21, 4096, 1, 1)}, "weights of a CAM network"),
        ({"backbone.conv1a.weight": (64, 3, 3, 3), "cls_conv.weight": (21, 1024, 3, 3)}, "DeepLab weights"),
        ({"resnet50.conv1.weight": (64, 3, 7, 7), "resnet50.layer1.0.conv1.weight": (64, 64, 1, 1)}, "ResNet-50"),
    ],
    ids=["cpn", "deeplab", "irn"],
)
def test_other_networks_weights_are_refused(toy_voc, toy, tmp_path, state, what):
    path = tmp_path / "other.pth"
    torch.save(constant_state({key: torch.zeros(shape) for key, shape in state.items()}, 0), path)
    with pytest.raises(UserError) as error:
        infer_aff.main(cli_args(toy_voc, path, toy, tmp_path / "out"))
    assert f"weights file {path} holds {what}" in one_line(error) and "not AffinityNet" in one_line(error)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_imagenet_weights_are_refused(toy_voc, toy, tiny_network, tmp_path):
    path = tmp_path / "imagenet.pth"
    torch.save({"conv1a.weight": TinyAffinityNet().conv1a.weight.detach()}, path)
    with pytest.raises(UserError, match=r"has no trained AffinityNet head \(f9\.weight\): an ImageNet ResNet-38"):
        infer_aff.main(cli_args(toy_voc, path, toy, tmp_path / "out"))


def copied_cams(toy, folder: Path) -> Path:
    folder.mkdir()
    for path in toy["cam_dir"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({3: np.zeros((9, 9), np.float32)}, r"class 3 is a float32 map of shape \(9, 9\), but the image is"),
        ({"keys": np.array([3]), "cam": np.zeros((1, 9, 9))}, r"is in IRN's format \(infer_cam.py --out_cam_irn\)"),
        ({25: np.zeros((9, 9), np.float32)}, r"has key 25; expected class indices 0\.\.19"),
    ],
    ids=["other_size", "irn_format", "coco_key"],
)
def test_bad_cam_files_are_refused(toy_voc, weights, toy, tiny_network, tmp_path, content, message):
    cam_dir = copied_cams(toy, tmp_path / "cam")
    name = toy["names"][0]
    save_npy(cam_dir / f"{name}.npy", content)
    with pytest.raises(UserError, match=message) as error:
        infer_aff.main(cli_args(toy_voc, weights, {**toy, "cam_dir": cam_dir}, tmp_path / "out"))
    assert f"{name}.npy" in one_line(error)


# --- The real network, loaded from a file by main -------------------------------------------------


@pytest.mark.slow
def test_the_real_network_walks_through_main(toy_voc, toy, tmp_path):
    torch.manual_seed(0)
    path = save_weights(resnet38_aff.Net(), tmp_path / "resnet38_aff.pth")
    one = tmp_path / "one.txt"
    name = min(toy["names"], key=lambda name: toy["sizes"][name][0] * toy["sizes"][name][1])
    one.write_text(name + "\n")
    infer_aff.main(cli_args(toy_voc, path, {**toy, "list": one}, tmp_path / "rw"))
    model, _ = load_network(infer_aff.AFF_NETWORK, path)
    image = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    cams = np.load(toy["cam_dir"] / f"{name}.npy", allow_pickle=True).item()
    expected = infer_aff.walk_label(model.eval(), normalised(image), cams, 21)
    np.testing.assert_array_equal(read_label_png(tmp_path / "rw" / f"{name}.png"), expected)
