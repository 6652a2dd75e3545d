"""infer_cam.py (SPEC §5): every output format read back by its own reader's rules (IRN's stride-4
`cam` against a direct loop over the 8 inputs, SPEC_IRN §11), manifests, resume, --overwrite,
sharding, and the command line; the CAM maths alone is tests/test_cam.py's.
A randomly initialised CPN on the smallest toy images keeps it quick."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import infer_cam
from engine.datasets import PALETTE as VOC_PALETTE
from engine.errors import UserError
from engine.manifest import MANIFEST_NAME
from network import build_network
from tests.reference_cam import direct_loop_cam
from tool.crf import SEAM_CRF
from voc12.data import load_cls_labels, load_image_list

REPO = Path(__file__).resolve().parent.parent
SCALES = (0.5, 1.0)
HAS_PYDENSECRF = importlib.util.find_spec("pydensecrf") is not None


# --- Reference readers, written from SPEC §6 and IRN's ---------------------------------------


def evaluation_prediction(cam_dict: dict, threshold: float) -> np.ndarray:
    """SPEC §6's npy reader (the reference's evaluation_cam.py)."""
    h, w = list(cam_dict.values())[0].shape
    tensor = np.zeros((21, h, w), np.float32)
    for key in cam_dict:
        tensor[key + 1] = cam_dict[key]
    tensor[0] = threshold
    return np.argmax(tensor, axis=0).astype(np.uint8)


def irn_strided_size(height: int, width: int) -> tuple[int, int]:
    """IRN's get_strided_size(size, 4), the size of make_sem_seg_labels' edge map."""
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


def irn_prediction(cam_dict: dict, threshold: float) -> np.ndarray:
    """IRN's cam_to_ir_label / eval_cam reading of its own format."""
    cams = np.pad(cam_dict["high_res"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold)
    keys = np.pad(cam_dict["keys"] + 1, (1, 0), mode="constant")
    return keys[np.argmax(cams, axis=0)]


# --- Fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(cpn_weights) -> Path:
    return cpn_weights


@pytest.fixture(scope="module")
def model(weights):
    """The network `weights` holds."""
    net = build_network("network.resnet38_CPN")
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.eval()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """Another random CPN: different checksum, different CAMs."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "other_cpn.pth"
    torch.save(build_network("network.resnet38_CPN").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny(toy_voc, toy_lists, tmp_path_factory) -> dict:
    """The three smallest training images of the toy set, as a list file."""
    names = load_image_list(toy_lists["train"])
    sizes = {name: Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").size for name in names}
    chosen = sorted(names, key=lambda name: sizes[name][0] * sizes[name][1])[:3]
    list_path = tmp_path_factory.mktemp("lists") / "tiny.txt"
    list_path.write_text("\n".join(chosen) + "\n")
    return {"names": chosen, "list": list_path, "cls_labels": load_cls_labels(toy_lists["cls_labels"])}


def cli_args(toy_voc, toy_lists, weights, tiny, out: Path, *extra: str, crf: bool = HAS_PYDENSECRF) -> list[str]:
    args = [
        "--weights",
        str(weights),
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(tiny["list"]),
        "--scales",
        ",".join(map(str, SCALES)),
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--post_workers",
        "0",
        "--out_cam",
        str(out / "cam"),
        "--out_cam_irn",
        str(out / "irn"),
        "--out_cam_pred",
        str(out / "pred"),
        "--out_cam_pred_alpha",
        "0.2",
        "--vis_dir",
        str(out / "vis"),
    ]
    if crf:
        args += ["--out_crf", str(out / "crf"), "--crf_alphas", "4,24", "--crf_scores"]
    return args + list(extra)


@pytest.fixture(scope="module")
def run_dir(toy_voc, toy_lists, weights, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("infer")
    infer_cam.main(cli_args(toy_voc, toy_lists, weights, tiny, out))
    return out


# --- Output formats ------------------------------------------------------------------------


def test_reference_npy_format(run_dir, tiny, toy_voc):
    for name in tiny["names"]:
        cam_dict = np.load(run_dir / "cam" / f"{name}.npy", allow_pickle=True).item()
        height, width = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg")).shape[:2]
        assert sorted(cam_dict) == np.flatnonzero(tiny["cls_labels"][name]).tolist()
        for key, cam in cam_dict.items():
            assert type(key) is int and cam.dtype == np.float32 and cam.shape == (height, width)
            assert cam.max() <= 0.5
        assert evaluation_prediction(cam_dict, 0.2).shape == (height, width)


def test_irn_format_reads_like_irn(run_dir, tiny):
    for name in tiny["names"]:
        irn = np.load(run_dir / "irn" / f"{name}.npy", allow_pickle=True).item()
        cam_dict = np.load(run_dir / "cam" / f"{name}.npy", allow_pickle=True).item()
        assert irn["keys"].dtype == np.int64 and irn["keys"].tolist() == sorted(cam_dict)
        high_res = irn["high_res"]
        assert high_res.dtype == np.float32 and high_res.shape == (len(cam_dict), *cam_dict[irn["keys"][0]].shape)
        assert high_res.min() >= 0.0 and high_res.max() <= 1.0
        # high_res is the un-halved map; away from the quirk's clipped negatives they agree.
        halved = np.stack([cam_dict[key] for key in irn["keys"]])
        np.testing.assert_allclose(high_res, np.clip(2 * halved, 0, 1), atol=1e-6)
        # IRN's reader at threshold t = evaluation's reader at t / 2 on the halved maps.
        np.testing.assert_array_equal(irn_prediction(irn, 0.4), evaluation_prediction(cam_dict, 0.2))
        # make_sem_seg_labels: `cams = cam_dict['cam']` (a CPU tensor it moves with .cuda()),
        # `keys = np.pad(cam_dict['keys'] + 1, (1, 0))`, one map per key on the stride-4 grid.
        cams = irn["cam"]
        keys = np.pad(irn["keys"] + 1, (1, 0), mode="constant")
        assert isinstance(cams, torch.Tensor) and cams.dtype == torch.float32 and cams.device.type == "cpu"
        assert cams.shape == (len(keys) - 1, *irn_strided_size(*high_res.shape[1:]))
        assert cams.min() >= 0.0 and cams.max() <= 1.0


@pytest.fixture(scope="module")
def odd_image(toy_voc, tiny, tmp_path_factory) -> dict:
    """A 37×50 image (a toy image resized), where IRN's stride-4 grid is 10×13, not 37/4 × 50/4,
    labelled with every class but two so that `keys` skips some indices."""
    root = tmp_path_factory.mktemp("odd") / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    with Image.open(toy_voc / "JPEGImages" / f"{tiny['names'][0]}.jpg") as image:
        image.convert("RGB").resize((50, 37), Image.BICUBIC).save(root / "JPEGImages" / "odd.jpg", quality=95)
    label = np.ones(20, np.float32)
    label[[1, 7]] = 0
    np.save(root.parent / "labels.npy", {"odd": label})
    (root.parent / "list.txt").write_text("odd\n")
    return {"root": root, "label": label, "labels": root.parent / "labels.npy", "list": root.parent / "list.txt"}


def test_irn_cam_equals_the_stride4_loop(model, weights, odd_image, tmp_path):
    """SPEC_IRN §11: `cam` = each input's second output resized to the stride-4 grid, flipped
    back, summed, times the labels, normalised as SPEC §5 (not halved), clipped, present classes
    only; `high_res` the same at full size, in the same key order."""
    infer_cam.main(
        [
            "--weights",
            str(weights),
            "--voc12_root",
            str(odd_image["root"]),
            "--cls_labels",
            str(odd_image["labels"]),
            "--infer_list",
            str(odd_image["list"]),
            "--scales",
            ",".join(map(str, SCALES)),
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--post_workers",
            "0",
            "--out_cam_irn",
            str(tmp_path),
        ]
    )
    irn = np.load(tmp_path / "odd.npy", allow_pickle=True).item()
    image_path = odd_image["root"] / "JPEGImages" / "odd.jpg"
    keys = np.flatnonzero(odd_image["label"])
    strided = np.clip(direct_loop_cam(model, image_path, odd_image["label"], SCALES, size=(10, 13)), 0, 1)[keys]
    full = np.clip(direct_loop_cam(model, image_path, odd_image["label"], SCALES), 0, 1)[keys]
    assert irn["keys"].tolist() == keys.tolist()
    assert isinstance(irn["cam"], torch.Tensor) and irn["cam"].dtype == torch.float32
    assert irn["cam"].shape == (len(keys), 10, 13) and irn["high_res"].shape == (len(keys), 37, 50)
    assert (np.ptp(strided, axis=(1, 2)) > 0.5).sum() >= 3  # maps that vary, not all-zero ones
    np.testing.assert_allclose(irn["cam"].numpy(), strided, atol=2e-5)
    np.testing.assert_allclose(irn["high_res"], full, atol=2e-5)


def test_cam_pred_png_is_the_evaluation_prediction(run_dir, tiny):
    for name in tiny["names"]:
        with Image.open(run_dir / "pred" / f"{name}.png") as png:
            assert png.mode == "P"
            assert np.array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
            label = np.asarray(png)
        cam_dict = np.load(run_dir / "cam" / f"{name}.npy", allow_pickle=True).item()
        np.testing.assert_array_equal(label, evaluation_prediction(cam_dict, 0.2))


def test_visualization_jpeg(run_dir, tiny):
    for name in tiny["names"]:
        cam_dict = np.load(run_dir / "cam" / f"{name}.npy", allow_pickle=True).item()
        height, width = next(iter(cam_dict.values())).shape
        with Image.open(run_dir / "vis" / f"{name}.jpg") as jpeg:
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
            assert jpeg.width >= (len(cam_dict) + 2) * width and jpeg.height > height


def seam_crf_with_alpha(image: np.ndarray, cam_dict: dict, alpha: float) -> dict:
    """SPEC_AFF §5 written out with pydensecrf: infer_SEAM.py's `_crf_with_alpha` on SEAM's un-halved
    CAM dict, SEAM's crf_inference (Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10, 10
    iterations), Q as {0: bg, key + 1: class key}."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    maps = np.array(list(cam_dict.values()))
    scores = np.concatenate([np.power(1 - maps.max(axis=0, keepdims=True), alpha), maps])
    height, width = image.shape[:2]
    dense = dcrf.DenseCRF2D(width, height, len(scores))
    dense.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    dense.addPairwiseGaussian(sxy=3, compat=3)
    dense.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(np.copy(image)), compat=10)
    marginals = np.array(dense.inference(10)).reshape(len(scores), height, width)
    return {0: marginals[0], **{key + 1: marginals[index + 1] for index, key in enumerate(cam_dict)}}


@pytest.mark.skipif(not HAS_PYDENSECRF, reason="pydensecrf is not installed")
def test_crf_outputs_are_seams_crf_label_files_and_palette_pngs(run_dir, toy_voc, tiny):
    for alpha in ("4", "24"):
        for name in tiny["names"]:
            with Image.open(run_dir / "crf" / f"alpha_{alpha}" / f"{name}.png") as png:
                assert png.mode == "P"
                assert np.array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
                label = np.asarray(png)
            present = set((np.flatnonzero(tiny["cls_labels"][name]) + 1).tolist())
            assert set(np.unique(label).tolist()) <= present | {0}
            scores = np.load(run_dir / "crf" / f"alpha_{alpha}" / f"{name}.npy", allow_pickle=True).item()
            assert list(scores) == sorted(present | {0})  # SEAM's order: background, then the CAM dict's
            assert all(score.dtype == np.float32 and score.shape == label.shape for score in scores.values())
            stacked = np.stack(list(scores.values()))
            np.testing.assert_allclose(stacked.sum(axis=0), 1.0, atol=1e-4)
            np.testing.assert_array_equal(label, np.array(list(scores))[stacked.argmax(axis=0)])
            # What SEAM's infer_SEAM.py writes from the un-halved maps (our --out_cam halves them: ×2 is exact).
            halved = np.load(run_dir / "cam" / f"{name}.npy", allow_pickle=True).item()
            unhalved = {key: np.clip(cam * 2, 0, 1) for key, cam in halved.items()}
            image = np.asarray(Image.open(toy_voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
            expected = seam_crf_with_alpha(image, unhalved, float(alpha))
            for key in scores:
                np.testing.assert_allclose(scores[key], expected[key], atol=1e-5)


# --- Long runs: resume and sharding ---------------------------------------------------------


def test_resume_skips_done_images(run_dir, toy_voc, toy_lists, weights, tiny, capsys):
    files = sorted(path for path in run_dir.rglob("*") if path.is_file())
    before = {path: path.stat().st_mtime_ns for path in files}
    capsys.readouterr()
    infer_cam.main(cli_args(toy_voc, toy_lists, weights, tiny, run_dir))
    assert "3 already done, 0 to do" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in files} == before
    assert sorted(path for path in run_dir.rglob("*") if path.is_file()) == files

    redone = run_dir / "pred" / f"{tiny['names'][1]}.png"
    redone.unlink()
    infer_cam.main(cli_args(toy_voc, toy_lists, weights, tiny, run_dir))
    assert "2 already done, 1 to do" in capsys.readouterr().out
    assert redone.is_file()
    changed = {path for path in files if path.stat().st_mtime_ns != before[path]}
    assert changed and all(tiny["names"][1] in path.name for path in changed)


@pytest.mark.slow  # two runs of the script (make_sem_seg_labels' twin test stays in the inner loop)
def test_torchrun_rank_takes_its_share(toy_voc, toy_lists, weights, tiny, tmp_path, monkeypatch):
    args = [
        "--weights",
        str(weights),
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(tiny["list"]),
        "--scales",
        "0.5",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--post_workers",
        "0",
        "--out_cam",
        str(tmp_path),
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    infer_cam.main(args)
    assert sorted(path.stem for path in tmp_path.glob("*.npy")) == tiny["names"][1::2]
    # Rank 0 finds rank 1's manifest, computed alike, and shares the folder.
    manifest = (tmp_path / MANIFEST_NAME).read_bytes()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    infer_cam.main(args)
    assert sorted(path.stem for path in tmp_path.glob("*.npy")) == sorted(tiny["names"])
    assert (tmp_path / MANIFEST_NAME).read_bytes() == manifest


# --- Manifests: one network per folder ------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_times(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_each_folder_has_the_manifest_of_its_run(run_dir, weights, tiny):
    formats = {
        "cam": ("out_cam", {}),
        "irn": ("out_cam_irn", {}),
        "pred": ("out_cam_pred", {"out_cam_pred_alpha": 0.2}),
        "vis": ("vis_dir", {"out_cam_pred_alpha": 0.2}),
    }
    if HAS_PYDENSECRF:
        seam = {"crf": "seam", "crf_settings": dataclasses.asdict(SEAM_CRF)}
        formats.update({f"crf/alpha_{alpha}": ("out_crf", {"crf_alpha": alpha, **seam}) for alpha in (4, 24)})
    checksum = sha256_of(weights)
    for folder, (flag, format_settings) in formats.items():
        manifest = json.loads((run_dir / folder / MANIFEST_NAME).read_text())
        assert manifest["weights_sha256"] == checksum and manifest["weights"] == str(weights.resolve())
        assert manifest["settings"] == {
            "output": flag,
            "dataset": "voc12",
            "network": "network.resnet38_CPN",
            "width": 1,
            "scales": [0.5, 1.0],
            "precision": "fp32",
            **format_settings,
        }
        assert manifest["lists"] == [str(tiny["list"].resolve())]
        assert manifest["version"] is None or re.fullmatch("[0-9a-f]{40}", manifest["version"])


@pytest.mark.slow  # the script in a new process
def test_other_weights_stop_before_any_work(run_dir, toy_voc, toy_lists, weights, other_weights, tiny):
    before = file_times(run_dir)
    result = run_cli(*cli_args(toy_voc, toy_lists, other_weights, tiny, run_dir))
    assert result.returncode == 1 and result.stdout == ""  # no weights loaded, no images counted
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        f"{run_dir / 'cam' / MANIFEST_NAME} was written by weights {weights.resolve()} "
        f"(sha256 {sha256_of(weights)[:12]}…), this run uses {other_weights.resolve()} "
        f"(sha256 {sha256_of(other_weights)[:12]}…)"
    ) in lines[0]
    assert "new folder" in lines[0] and "--overwrite" in lines[0]
    assert file_times(run_dir) == before


@pytest.mark.parametrize(
    "flag, value, difference",
    [
        ("--out_cam_pred_alpha", "0.3", "out_cam_pred_alpha 0.2, this run uses out_cam_pred_alpha 0.3"),
        ("--scales", "1.0,0.5,1.5", "scales [0.5, 1.0], this run uses scales [0.5, 1.0, 1.5]"),
    ],
)
def test_other_settings_stop_before_any_work(
    flag, value, difference, run_dir, toy_voc, toy_lists, weights, tiny, monkeypatch
):
    monkeypatch.setattr(infer_cam, "load_model", lambda *args: pytest.fail("the manifests are checked first"))
    before = file_times(run_dir)
    with pytest.raises(UserError, match=re.escape(f"was written with {difference}; use a new folder")):
        infer_cam.main(cli_args(toy_voc, toy_lists, weights, tiny, run_dir, flag, value))
    assert file_times(run_dir) == before


@pytest.mark.slow  # three runs of the script, two weights files
def test_overwrite_rewrites_outputs_and_manifest(toy_voc, toy_lists, weights, other_weights, tiny, tmp_path, capsys):
    name = tiny["names"][0]
    (tmp_path / "one.txt").write_text(name + "\n")
    cam_path = tmp_path / "cam" / f"{name}.npy"

    def run(weights_path: Path, *extra: str) -> None:
        infer_cam.main(
            [
                "--weights",
                str(weights_path),
                "--voc12_root",
                str(toy_voc),
                "--cls_labels",
                str(toy_lists["cls_labels"]),
                "--infer_list",
                str(tmp_path / "one.txt"),
                "--scales",
                "0.5",
                "--num_workers",
                "0",
                "--device",
                "cpu",
                "--post_workers",
                "0",
                "--out_cam",
                str(tmp_path / "cam"),
                *extra,
            ]
        )

    run(weights)
    first = np.load(cam_path, allow_pickle=True).item()
    with pytest.raises(UserError, match="--overwrite"):
        run(other_weights)
    run(other_weights, "--overwrite")
    second = np.load(cam_path, allow_pickle=True).item()
    assert sorted(first) == sorted(second) and any(not np.allclose(first[key], second[key]) for key in first)
    manifest = json.loads((tmp_path / "cam" / MANIFEST_NAME).read_text())
    assert manifest["weights_sha256"] == sha256_of(other_weights)
    assert manifest["weights"] == str(other_weights.resolve())
    capsys.readouterr()
    run(other_weights)  # the rewritten folder resumes
    assert "1 already done, 0 to do" in capsys.readouterr().out


def test_unreadable_manifest_is_a_one_line_error(toy_voc, toy_lists, weights, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(infer_cam, "load_model", lambda *args: pytest.fail("the manifests are checked first"))
    manifest = tmp_path / "cam" / MANIFEST_NAME
    manifest.parent.mkdir()
    manifest.write_text('{"weights_sha256": ')  # cut short
    with pytest.raises(UserError) as error:
        infer_cam.main(cli_args(toy_voc, toy_lists, weights, tiny, tmp_path, crf=False))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot read {manifest}") and "--overwrite" in message
    assert [path.name for path in tmp_path.rglob("*")] == ["cam", MANIFEST_NAME]


def test_two_outputs_in_one_folder_is_a_user_error(toy_voc, weights, tmp_path):
    with pytest.raises(UserError, match=f"--out_cam_pred and --vis_dir both write to {tmp_path}"):
        infer_cam.main(
            [
                "--weights",
                str(weights),
                "--voc12_root",
                str(toy_voc),
                "--out_cam_pred",
                str(tmp_path),
                "--vis_dir",
                str(tmp_path),
            ]
        )


def test_no_output_requested_is_a_user_error(toy_voc, weights):
    with pytest.raises(UserError, match="nothing to write"):
        infer_cam.main(["--weights", str(weights), "--voc12_root", str(toy_voc)])


def test_network_must_be_the_cpn(capsys):
    """SPEC §5 reads the CPN's second output: a classifier is refused by the parser."""
    with pytest.raises(SystemExit):
        infer_cam.parse_args(["--weights", "w.pth", "--voc12_root", "v", "--network", "network.resnet38_cls"])
    assert "invalid choice: 'network.resnet38_cls'" in capsys.readouterr().err


# --- Command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "infer_cam.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # the script in a new process, with a worker pool
def test_cli_writes_cams_with_a_worker_pool(toy_voc, toy_lists, weights, tiny, tmp_path):
    result = run_cli(
        "--weights",
        str(weights),
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(tiny["list"]),
        "--scales",
        "0.5",
        "--num_workers",
        "1",
        "--post_workers",
        "1",
        "--out_cam",
        str(tmp_path / "cam"),
        "--out_cam_pred",
        str(tmp_path / "pred"),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.stem for path in (tmp_path / "cam").glob("*.npy")) == sorted(tiny["names"])
    assert sorted(path.stem for path in (tmp_path / "pred").glob("*.png")) == sorted(tiny["names"])


@pytest.mark.slow  # the script in a new process
def test_cli_image_missing_from_labels(toy_voc, toy_lists, weights, tiny, tmp_path):
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text(tiny["list"].read_text() + "not_an_image\n")
    result = run_cli(
        "--weights",
        str(weights),
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(bad_list),
        "--out_cam",
        str(tmp_path / "cam"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not_an_image" in lines[0] and "class label" in lines[0]
    assert not (tmp_path / "cam").exists()
