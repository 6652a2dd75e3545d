"""Bad inputs through the scripts' entry points: each ends in one line on stderr naming the
file and the fix, with a non-zero exit; Ctrl-C leaves only whole files behind.

Cases covered elsewhere are not repeated here: missing/empty lists and the devkit folder
(test_data.py), weights of another network (test_weights.py, test_train_cpn.py), truncated
.params (test_mxnet_params.py), missing predictions (test_evaluation_cam.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation_cam
import infer_cam
import train_cpn
from engine.errors import UserError, run_main
from engine.fileio import check_writable_dir, read_rgb, save_npy
from engine.manifest import MANIFEST_NAME
from tests.tiny import TINY_TRAIN_ARGS
from voc12 import make_cls_labels
from voc12.data import load_cls_labels, load_image_list

REPO = Path(__file__).resolve().parents[1]


def one_line_error(main, args: list[str], capsys) -> str:
    """Run `main(args)` as the script's `__main__` does; return the one line the
    interpreter prints for the SystemExit (its message; exit status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(args))
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.fixture(scope="module")
def weights(cpn_weights) -> Path:
    return cpn_weights


@pytest.fixture(scope="module")
def truncated_weights(weights, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "cut.pth"
    path.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A folder path no one can create, root included: its parent is a plain file."""
    plain_file = tmp_path / "plain_file"
    plain_file.write_text("not a folder")
    return plain_file / "out"


def train_args(toy_voc, toy_lists, out_dir, *extra) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--train_list",
        str(toy_lists["train"]),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--out_dir",
        str(out_dir),
        *TINY_TRAIN_ARGS,
        "--session_name",
        "run",
        *extra,
    ]


def infer_args(toy_voc, toy_lists, weights, *extra) -> list[str]:
    return [
        "--weights",
        str(weights),
        "--voc12_root",
        str(toy_voc),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--infer_list",
        str(toy_lists["val"]),
        "--scales",
        "0.5",
        "--num_workers",
        "0",
        "--post_workers",
        "0",
        "--device",
        "cpu",
        *extra,
    ]


# --- Output folder that cannot be written ---------------------------------------------------


def test_unwritable_out_dir_train(toy_voc, toy_lists, blocked, capsys):
    message = one_line_error(train_cpn.main, train_args(toy_voc, toy_lists, blocked, "--max_steps", "1"), capsys)
    assert message.startswith(f"error: cannot write {blocked}") and "writable --out_dir" in message


def test_unwritable_out_dir_infer(toy_voc, toy_lists, weights, blocked, capsys, monkeypatch):
    monkeypatch.setattr(
        infer_cam, "load_model", lambda *args: pytest.fail("output folders must be checked before the model is loaded")
    )
    message = one_line_error(infer_cam.main, infer_args(toy_voc, toy_lists, weights, "--out_cam", str(blocked)), capsys)
    assert message.startswith(f"error: cannot write {blocked}") and "writable output folder" in message


def test_unwritable_out_dir_make_cls_labels(toy_voc, blocked, capsys):
    message = one_line_error(make_cls_labels.main, ["--voc12_root", str(toy_voc), "--out_dir", str(blocked)], capsys)
    assert message.startswith(f"error: cannot write {blocked}") and "writable output folder" in message


def test_unwritable_logfile_evaluation(toy_voc, toy_lists, blocked, tmp_path, capsys):
    name = load_image_list(toy_lists["val"])[0]
    width, height = Image.open(toy_voc / "SegmentationClass" / f"{name}.png").size
    save_npy(tmp_path / "cam" / f"{name}.npy", {0: np.zeros((height, width), np.float32)})
    (tmp_path / "one.txt").write_text(name + "\n")
    args = [
        "--list",
        str(tmp_path / "one.txt"),
        "--predict_dir",
        str(tmp_path / "cam"),
        "--gt_dir",
        str(toy_voc / "SegmentationClass"),
        "--t",
        "0.2",
        "--num_workers",
        "0",
        "--logfile",
        str(blocked / "eval.txt"),
    ]
    message = one_line_error(evaluation_cam.main, args, capsys)
    assert message.startswith(f"error: cannot write {blocked / 'eval.txt'}")


# --- Inputs that do not match -----------------------------------------------------------------


def test_list_names_absent_from_the_root(toy_voc, toy_lists, weights, tmp_path, capsys):
    """Labelled names whose images are not in the root: the error names the file and the root,
    before anything is written."""
    labels = dict(load_cls_labels(toy_lists["cls_labels"]))
    labels["ghost"] = next(iter(labels.values()))
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "list.txt").write_text(toy_lists["val"].read_text() + "ghost\n")
    args = infer_args(toy_voc, toy_lists, weights, "--out_cam", str(tmp_path / "cam"))
    args[args.index("--cls_labels") + 1] = str(tmp_path / "labels.npy")
    args[args.index("--infer_list") + 1] = str(tmp_path / "list.txt")
    message = one_line_error(infer_cam.main, args, capsys)
    assert str(toy_voc / "JPEGImages" / "ghost.jpg") in message and f"does not match {toy_voc}" in message
    assert not (tmp_path / "cam").exists()


@pytest.mark.parametrize("script", ["train", "infer"])
def test_truncated_pth(script, toy_voc, toy_lists, truncated_weights, tmp_path, capsys):
    if script == "train":
        args = train_args(toy_voc, toy_lists, tmp_path / "out", "--max_steps", "1")
        args[args.index("--weights") + 1] = str(truncated_weights)
        message = one_line_error(train_cpn.main, args, capsys)
    else:
        args = infer_args(toy_voc, toy_lists, truncated_weights, "--out_cam", str(tmp_path / "cam"))
        message = one_line_error(infer_cam.main, args, capsys)
    assert f"cannot read weights file {truncated_weights}" in message and "truncated" in message
    assert not (tmp_path / "cam").exists()


# --- Image formats and sizes ------------------------------------------------------------------


def test_cmyk_and_16_bit_images_read_as_8_bit_rgb(tmp_path):
    cmyk = Image.new("CMYK", (6, 4), (0, 255, 255, 0))  # pure red in ink
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    rgb = np.asarray(read_rgb(tmp_path / "cmyk.jpg"))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].min() > 200 and rgb[..., 1:].max() < 60

    deep = np.linspace(0, 65535, 24).round().astype(np.uint16).reshape(4, 6)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(read_rgb(tmp_path / "deep.png"))
    expected = np.round(deep / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.slow  # a run of the training script
def test_training_on_odd_images_smaller_than_the_crop(tmp_path):
    """CMYK, 16-bit, RGBA, grayscale images and ones smaller than the crop train without error."""
    rng = np.random.default_rng(0)
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    rgb = lambda w, h: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    images = {
        "small": Image.fromarray(rgb(20, 14)),
        "cmyk": Image.fromarray(rgb(40, 30)).convert("CMYK"),
        "deep": Image.fromarray(rng.integers(0, 65536, (28, 36), dtype=np.uint16)),
        "rgba": Image.fromarray(rgb(30, 30)).convert("RGBA"),
        "gray": Image.fromarray(rgb(26, 18)).convert("L"),
    }
    for name, image in images.items():  # VOC names every file .jpg; PIL reads by content
        image.save(root / "JPEGImages" / f"{name}.jpg", format="JPEG" if image.mode in ("CMYK", "L") else "PNG")
    labels = {name: np.eye(20, dtype=np.float32)[index] for index, name in enumerate(images)}
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "list.txt").write_text("\n".join(images) + "\n")
    out = tmp_path / "out"
    args = [
        "--voc12_root",
        str(root),
        "--train_list",
        str(tmp_path / "list.txt"),
        "--cls_labels",
        str(tmp_path / "labels.npy"),
        "--out_dir",
        str(out),
        *TINY_TRAIN_ARGS,
        "--session_name",
        "run",
        "--resize_long",
        "16",
        "24",
        "--max_steps",
        "1",
    ]
    train_cpn.main(args)
    assert (out / "run.pth").is_file() and (out / "run_checkpoints" / "step_0000001.pt").is_file()


# --- Ctrl-C -----------------------------------------------------------------------------------


def restore_default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_when(command: list[str], ready, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """Start a script in its own process group, wait until `ready()`, then press Ctrl-C
    (SIGINT to the whole group, DataLoader and writer workers included, as a terminal does)."""
    process = subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A terminal's Ctrl-C reaches a script whose SIGINT is the default: a test run started in
        # the background (`make test &`) would otherwise hand its ignored SIGINT down to the script.
        preexec_fn=restore_default_sigint,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the script never became ready"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_interrupted(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # a training process, interrupted
def test_ctrl_c_during_training_keeps_a_valid_checkpoint(toy_voc, toy_lists, tmp_path):
    out = tmp_path / "out"
    checkpoints = out / "run_checkpoints"
    args = train_args(toy_voc, toy_lists, out, "--save_every", "1", "--max_steps", "1000")
    result = interrupt_when([str(REPO / "train_cpn.py"), *args], lambda: any(checkpoints.glob("step_*.pt")))
    last_line = assert_interrupted(result)
    saved = sorted(checkpoints.glob("step_*.pt"))
    assert last_line.startswith("interrupted at step ") and f"resume with --resume auto (from {saved[-1]})" in last_line
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]
    for path in saved:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["train_state"]["step"] == int(path.stem.split("_")[1])
    assert last_line in (out / "run.log").read_text()  # the log file records it too


@pytest.mark.slow  # an inference process, interrupted
def test_ctrl_c_during_inference_leaves_whole_files(toy_voc, toy_lists, weights, tmp_path):
    cam_dir, pred_dir = tmp_path / "cam", tmp_path / "pred"
    args = infer_args(toy_voc, toy_lists, weights, "--out_cam", str(cam_dir), "--out_cam_pred", str(pred_dir))
    args[args.index("--infer_list") + 1] = str(toy_lists["train"])
    args[args.index("--num_workers") + 1] = "1"
    args[args.index("--post_workers") + 1] = "1"
    result = interrupt_when([str(REPO / "infer_cam.py"), *args], lambda: any(cam_dir.glob("*.npy")))
    assert assert_interrupted(result) == "interrupted"
    assert (cam_dir / MANIFEST_NAME).is_file()  # written before the folder's first CAM
    cams = [path for path in cam_dir.iterdir() if path.name != MANIFEST_NAME]
    preds = [path for path in pred_dir.iterdir() if path.name != MANIFEST_NAME] if pred_dir.exists() else []
    assert {path.suffix for path in cams} == {".npy"} and {path.suffix for path in preds} <= {".png"}
    assert len(cams) < len(load_image_list(toy_lists["train"]))
    for path in cams:
        cam_dict = np.load(path, allow_pickle=True).item()
        assert cam_dict and all(value.ndim == 2 for value in cam_dict.values())
    for path in preds:
        Image.open(path).load()


def test_writable_check_creates_nothing(tmp_path, blocked):
    check_writable_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable_dir(blocked / "deeper")
