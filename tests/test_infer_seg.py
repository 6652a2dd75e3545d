"""infer_seg.py (SPEC_SEG §4, §6): labels against a slow composition of the test-time pieces written from the
SPEC (a forward per scale and flip, mean, softmax, the dense CRF called directly, argmax), the VOC submission
layout and archive, manifests (settings, the training run, refusal of other weights), resume and --overwrite,
--no_flip's forwards, bad inputs (CPN, IRN, ImageNet and COCO files as VOC DeepLab weights, missing or corrupt
images), COCO's 81 classes and the evaluation of the labels. A random DeepLab on 32–48 px images keeps it quick."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluation_cam
import infer_seg
from coco14.toy import make_toy_coco
from engine.datasets import COCO14, IGNORE_INDEX, PALETTE
from engine.errors import UserError
from engine.fileio import save_label_png
from engine.manifest import MANIFEST_NAME
from network import build_network
from tool.constants import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parent.parent
SIZES = ((32, 40), (36, 48))  # H, W
SUBMISSION = Path("results/VOC2012/Segmentation/comp6_test_cls")
needs_pydensecrf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="needs pydensecrf")


# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> dict:
    """A VOC2012 folder of three tiny JPEGs (a bright box on a noisy background) with SegmentationClass
    ground truth (the box class 1 + index, a 255 ring around it), and its list val.txt."""
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"2008_{index:06d}" for index in range(len(SIZES))]
    for index, (name, (height, width)) in enumerate(zip(names, SIZES)):
        pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
        pixels[8:24, 10:30] = (230, 200, 40)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        truth = np.zeros((height, width), np.uint8)
        truth[7:25, 9:31] = IGNORE_INDEX
        truth[8:24, 10:30] = 1 + index
        save_label_png(root / "SegmentationClass" / f"{name}.png", truth)
    (root / "val.txt").write_text("\n".join(names) + "\n")
    return {"root": root, "names": names, "list": root / "val.txt"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_network("network.resnet38_deeplab").eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory) -> Path:
    """The random DeepLab's weights, with a training-run record beside them (engine.training's <stem>.json)."""
    path = tmp_path_factory.mktemp("weights") / "deeplab.pth"
    torch.save(model.state_dict(), path)
    record = {"args": {"pseudo_label_dir": "/runs/sem_seg", "batch_size": 10}, "git_commit": "abc123"}
    path.with_suffix(".json").write_text(json.dumps(record))
    return path


def args_for(voc: dict, weights: Path, *extra: str, names: list[str] | None = None) -> list[str]:
    image_list = voc["list"]
    if names is not None:
        image_list = voc["root"].parent / f"{'_'.join(names)}.txt"
        image_list.write_text("\n".join(names) + "\n")
    common = ["--weights", str(weights), "--voc12_root", str(voc["root"]), "--infer_list", str(image_list)]
    return common + ["--device", "cpu", "--num_workers", "0", "--post_workers", "0", *extra]


@pytest.fixture(scope="module")
def run_dir(voc, weights, tmp_path_factory) -> Path:
    """One run: scales 0.5 and 1 with flips, the CRF (if installed), both outputs."""
    out = tmp_path_factory.mktemp("run")
    crf = [] if importlib.util.find_spec("pydensecrf") else ["--crf_iters", "0"]
    infer_seg.main(
        args_for(voc, weights, "--scales", "0.5", "1.0", "--out_seg", str(out / "seg"), "--out_submission", str(out))
        + crf
    )
    return out


# --- The labels against SPEC_SEG §4, composed slowly -------------------------------------------


def slow_probabilities(model, image: np.ndarray, scales) -> np.ndarray:
    """SPEC_SEG §4: float32 ImageNorm, cv2 cubic resize by fx/fy per scale, a single-image forward of the scaled
    image and of its flip, each bilinear (align_corners) to H×W, the flip undone; mean of the logits, softmax."""
    normalised = ((image.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(
        np.float32
    )
    height, width = image.shape[:2]
    logit_maps = []
    with torch.no_grad():
        for scale in scales:
            scaled = cv2.resize(normalised, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            tensor = torch.from_numpy(scaled.transpose(2, 0, 1).copy())[None]
            for flipped in (False, True):
                logits = model(tensor.flip(-1) if flipped else tensor)
                logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=True)
                logit_maps.append(logits.flip(-1) if flipped else logits)
    return torch.softmax(torch.cat(logit_maps).mean(dim=0), dim=0).numpy()


def slow_crf(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """SPEC_SEG §4's DenseCRF.py and test.py, called directly: the img_denorm image (float32, truncated), unary
    -log(clip(p, 1e-5, 1)), Gaussian sxy 3 compat 3, bilateral sxy 32 srgb 13 compat 10, one iteration."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    normalised = (image.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    denormed = np.clip((normalised * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 255, 0, 255)
    crf_image = np.ascontiguousarray(denormed.astype(np.uint8))
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=32, srgb=13, rgbim=crf_image, compat=10)
    return np.asarray(crf.inference(1)).reshape(num_classes, height, width)


def read_png(path: Path) -> tuple[np.ndarray, Image.Image]:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image), image


@needs_pydensecrf
def test_labels_are_the_slow_composition(run_dir, voc, model):
    crf_changed_labels = False
    for name in voc["names"]:
        image = np.asarray(Image.open(voc["root"] / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        probs = slow_probabilities(model, image, (0.5, 1.0))
        scores = slow_crf(image, probs)
        expected = scores.argmax(axis=0)
        label, _ = read_png(run_dir / "seg" / f"{name}.png")
        differ = label != expected
        # A batch of two and a single forward may differ in the last bits: only near-ties may flip.
        top2 = np.sort(scores, axis=0)[-2:]
        assert differ.mean() < 0.01 and np.all((top2[1] - top2[0])[differ] < 1e-4), name
        crf_changed_labels |= bool((probs.argmax(axis=0) != expected).any())
    assert crf_changed_labels  # the comparison sees the CRF, not only the probabilities


def test_submission_layout_and_archive(run_dir, voc):
    for name in voc["names"]:
        label, image = read_png(run_dir / SUBMISSION / f"{name}.png")
        assert image.mode == "P" and np.array_equal(np.asarray(image.getpalette()[:63]), PALETTE[:21].reshape(-1))
        with Image.open(voc["root"] / "JPEGImages" / f"{name}.jpg") as jpeg:
            assert image.size == jpeg.size
        assert label.max() <= 20
        assert np.array_equal(label, read_png(run_dir / "seg" / f"{name}.png")[0])
    with tarfile.open(run_dir / "results.tar.gz") as archive:
        members = archive.getmembers()
        assert sorted(member.name for member in members) == sorted(f"{SUBMISSION}/{name}.png" for name in voc["names"])
        for member in members:
            assert archive.extractfile(member).read() == (run_dir / member.name).read_bytes()


def test_manifest_records_settings_and_the_training_run(run_dir, weights):
    manifest = json.loads((run_dir / "seg" / MANIFEST_NAME).read_text())
    settings = manifest["settings"]
    assert settings["output"] == "out_seg" and settings["scales"] == [0.5, 1.0] and settings["flip"] is True
    if settings["crf"] is not None:
        assert settings["crf"] == {
            "gaussian_sxy": 3,
            "gaussian_compat": 3,
            "bilateral_sxy": 32,
            "bilateral_srgb": 13,
            "bilateral_compat": 10,
            "iterations": 1,
        }
    assert settings["dataset"] == "voc12" and settings["network"] == "network.resnet38_deeplab"
    run = manifest["provenance"]["training_run"]
    assert run["args"]["pseudo_label_dir"] == "/runs/sem_seg" and run["git_commit"] == "abc123"
    assert run["record"] == str(weights.with_suffix(".json").resolve())
    assert json.loads((run_dir / SUBMISSION / MANIFEST_NAME).read_text())["settings"]["output"] == "out_submission"


def test_labels_score_as_segmentation(run_dir, voc, capsys):
    result = evaluation_cam.main(
        ["--list", str(voc["list"]), "--predict_dir", str(run_dir / "seg"), "--type", "png"]
        + ["--gt_dir", str(voc["root"] / "SegmentationClass"), "--logfile", "", "--num_workers", "0"]
    )
    assert result["protocol"]["stage"] == "segmentation"
    assert "stage: segmentation (infer_seg.py's labels), VOC2012 val, SegmentationClass" in capsys.readouterr().out


# --- Resume, manifests, --overwrite, --no_flip -------------------------------------------------


def test_resume_skips_done_images(run_dir, voc, weights, capsys):
    arguments = args_for(voc, weights, "--scales", "0.5", "1.0", "--out_seg", str(run_dir / "seg"))
    arguments += [] if importlib.util.find_spec("pydensecrf") else ["--crf_iters", "0"]
    times = {path: path.stat().st_mtime_ns for path in (run_dir / "seg").glob("*.png")}
    capsys.readouterr()
    infer_seg.main(arguments)
    assert f"{len(times)} already done, 0 to do" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in times} == times


def write_first_conv(path: Path, value: float) -> Path:
    """A file that holds a width-1 DeepLab's first convolution alone: its width is read before the manifests are
    checked, the network (stubbed) never loads it."""
    torch.save({"backbone.conv1a.weight": torch.full((64, 3, 3, 3), value)}, path)
    return path


@pytest.fixture
def stub_network(monkeypatch) -> list[int]:
    """infer_seg's network replaced by a 1×1 convolution to 21 classes (the weights file is still checked by
    its checksum, not loaded); → the batch size of each of its forwards."""
    batches = []

    def load_stub(weights, dataset, device, group):
        stub = torch.nn.Conv2d(3, dataset.num_classes, 1).eval()
        stub.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
        return stub

    monkeypatch.setattr(infer_seg, "load_model", load_stub)
    return batches


def test_other_weights_or_settings_are_refused_and_overwrite_redoes(voc, tmp_path, stub_network):
    name = voc["names"][0]
    out = ["--out_seg", str(tmp_path / "seg"), "--crf_iters", "0"]
    weights, other = tmp_path / "a.pth", tmp_path / "b.pth"
    write_first_conv(weights, 0.0)
    write_first_conv(other, 1.0)
    infer_seg.main(args_for(voc, weights, "--scales", "1.0", *out, names=[name]))
    assert stub_network == [2]  # the image and its flip
    with pytest.raises(UserError, match="was written by weights .*a.pth .* this run uses .*b.pth"):
        infer_seg.main(args_for(voc, other, "--scales", "1.0", *out, names=[name]))
    with pytest.raises(UserError, match="with flip true, this run uses flip false"):
        infer_seg.main(args_for(voc, weights, "--scales", "1.0", "--no_flip", *out, names=[name]))
    before = (tmp_path / "seg" / f"{name}.png").stat().st_mtime_ns
    stub_network.clear()
    infer_seg.main(args_for(voc, weights, "--no_flip", "--overwrite", *out, names=[name]))
    assert stub_network == [1] * 6  # SPEC_SEG §4's six scales, no flips
    assert (tmp_path / "seg" / f"{name}.png").stat().st_mtime_ns != before
    settings = json.loads((tmp_path / "seg" / MANIFEST_NAME).read_text())["settings"]
    assert settings["flip"] is False and settings["crf"] is None and len(settings["scales"]) == 6


# --- Bad inputs: one line, nothing written ---------------------------------------------------


def tiny_state_dict(network: str) -> dict:
    """A network's key names with 1-element tensors: what a file of that family is refused by."""
    with torch.device("meta"):  # only the names matter
        names = list(build_network(network).state_dict())
    return {key: torch.zeros(1) for key in names}


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda model: tiny_state_dict("network.resnet38_CPN"), "holds weights of a CAM network"),
        (lambda model: tiny_state_dict("network.resnet50_irn"), "holds ResNet-50 weights"),
        pytest.param(
            lambda model: {
                **model.state_dict(),
                "cls_conv.weight": torch.zeros(81, 512, 1, 1),
                "cls_conv.bias": torch.zeros(81),
            },
            "cls_conv has 81 outputs: these weights are for COCO 2014; pass --dataset coco14",
            marks=pytest.mark.slow,  # a whole network's file; test_resnet38_deeplab.py refuses it in the loader
        ),
        (
            lambda model: {
                key.removeprefix("backbone."): value
                for key, value in model.state_dict().items()
                if key.startswith("backbone.")
            },
            "has no trained DeepLab head",
        ),
    ],
    ids=["cpn", "irn", "coco", "imagenet"],
)
def test_wrong_weights_are_refused(voc, model, tmp_path, content, message):
    path = tmp_path / "wrong.pth"
    torch.save(content(model), path)
    with pytest.raises(UserError, match=message):
        infer_seg.main(
            args_for(voc, path, "--scales", "0.5", "--out_seg", str(tmp_path / "seg"), names=voc["names"][:1])
        )
    assert not (tmp_path / "seg").exists()


def test_corrupt_image_is_a_user_error(voc, weights, tmp_path, stub_network):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    (tmp_path / "list.txt").write_text("broken\n")
    arguments = args_for(voc, weights, "--voc12_root", str(root), "--infer_list", str(tmp_path / "list.txt"))
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        infer_seg.main(arguments + ["--scales", "0.5", "--out_seg", str(tmp_path / "seg")])
    assert not (tmp_path / "seg").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "infer_seg.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # the script in a new process
def test_cli_missing_image_is_one_line_and_nonzero(voc, tmp_path):
    (tmp_path / "list.txt").write_text(voc["names"][0] + "\n2008_999999\n")
    weights = write_first_conv(tmp_path / "unloaded.pth", 0.0)  # the images are checked before the network loads
    result = run_cli(
        *args_for(voc, weights, "--infer_list", str(tmp_path / "list.txt"), "--out_seg", str(tmp_path / "seg"))
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image not found") and "2008_999999.jpg" in lines[0]
    assert not (tmp_path / "seg").exists()


# --- COCO 2014 ---------------------------------------------------------------------------------


@pytest.mark.slow  # a COCO set, network and run of the script
def test_coco_labels_have_81_classes_and_no_submission(tmp_path):
    root = make_toy_coco(tmp_path / "coco", num_train=3, num_val=1, seed=0)
    name = next(path.stem for path in (root / "val2014").glob("*.jpg"))
    (tmp_path / "list.txt").write_text(name + "\n")
    torch.manual_seed(0)
    coco_weights = tmp_path / "coco.pth"
    torch.save(build_network("network.resnet38_deeplab", COCO14).state_dict(), coco_weights)
    common = ["--dataset", "coco14", "--data_root", str(root), "--weights", str(coco_weights)]
    common += ["--infer_list", str(tmp_path / "list.txt"), "--device", "cpu", "--num_workers", "0", "--scales", "0.5"]
    with pytest.raises(UserError, match="--out_submission writes the VOC 2012 server's layout"):
        infer_seg.main([*common, "--out_submission", str(tmp_path / "sub")])
    infer_seg.main([*common, "--post_workers", "0", "--out_seg", str(tmp_path / "seg")])
    label, image = read_png(tmp_path / "seg" / f"{name}.png")
    with Image.open(root / "val2014" / f"{name}.jpg") as jpeg:
        assert image.size == jpeg.size
    assert label.max() <= 80
    manifest = json.loads((tmp_path / "seg" / MANIFEST_NAME).read_text())
    assert manifest["settings"]["dataset"] == "coco14"
    assert manifest["provenance"] == {"training_run": None}  # no run record beside these weights


# --- End to end, with loader and CRF workers -----------------------------------------------------


@pytest.mark.slow
def test_cli_end_to_end_with_workers(voc, weights, tmp_path):
    """The reference's defaults (six scales with flips, the CRF), loader and CRF processes, then the score."""
    names = voc["names"][:2]
    (tmp_path / "val.txt").write_text("\n".join(names) + "\n")
    outputs = ("--out_seg", str(tmp_path / "seg"), "--out_submission", str(tmp_path / "sub"))
    workers = ("--num_workers", "1", "--post_workers", "1", "--infer_list", str(tmp_path / "val.txt"))
    result = run_cli(*args_for(voc, weights, *outputs, *workers))
    assert result.returncode == 0, result.stderr
    assert "submission: " in result.stdout
    assert sorted(path.stem for path in (tmp_path / "seg").glob("*.png")) == sorted(names)
    with tarfile.open(tmp_path / "sub" / "results.tar.gz") as archive:
        assert sorted(archive.getnames()) == sorted(f"{SUBMISSION}/{name}.png" for name in names)
    scored = subprocess.run(
        [sys.executable, str(REPO / "evaluation_cam.py"), "--type", "png", "--list", str(tmp_path / "val.txt")]
        + ["--predict_dir", str(tmp_path / "seg"), "--gt_dir", str(voc["root"] / "SegmentationClass")]
        + ["--logfile", ""],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0 and "stage: segmentation" in scored.stdout, scored.stderr
