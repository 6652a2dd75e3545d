"""evaluation_cam.py end to end on tiny synthetic predictions, against the naive SPEC §6 loop."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluation_cam
from test_metrics import naive_counts, naive_prediction, naive_sweep, random_case
from tool.constants import IGNORE_INDEX, NUM_CLASSES, SWEEP_THRESHOLDS, VOC_CLASSES, VOC_PALETTE
from tool.fileio import UserError, save_npy
from tool.metrics import GROUND_TRUTH, PREDICTED, TRUE_POSITIVE

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"img_{index}" for index in range(5)]


def save_label_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    image.save(path)


@pytest.fixture()
def dataset(tmp_path):
    """Five CAM dicts (ties, absent classes, mixed dtypes) with ground truth and a list file."""
    rng = np.random.default_rng(0)
    (tmp_path / "cams").mkdir()
    (tmp_path / "gt").mkdir()
    cases = {}
    for name in NAMES:
        class_maps, ground_truth = random_case(rng, int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        class_maps = class_maps or {4: np.full(ground_truth.shape, 0.33, np.float32)}
        save_npy(tmp_path / "cams" / f"{name}.npy", class_maps)
        save_label_png(tmp_path / "gt" / f"{name}.png", ground_truth)
        cases[name] = (class_maps, ground_truth)
    (tmp_path / "list.txt").write_text("\n".join(NAMES) + "\n")
    return tmp_path, cases


def arguments(root: Path, *extra: str) -> list[str]:
    return ["--list", str(root / "list.txt"), "--predict_dir", str(root / "cams"), "--gt_dir", str(root / "gt"),
            "--logfile", str(root / "eval.txt"), "--num_workers", "0", *extra]


def naive_iou_percent(counts: np.ndarray) -> np.ndarray:
    tp, predicted, truth = counts[..., TRUE_POSITIVE], counts[..., PREDICTED], counts[..., GROUND_TRUTH]
    return tp / (truth + predicted - tp + 1e-10) * 100


def test_sweep_matches_naive_and_writes_json_plot_log(dataset, capsys):
    root, cases = dataset
    evaluation_cam.main(arguments(root, "--json", str(root / "out" / "eval.json"), "--plot",
                                  str(root / "out" / "curve.png"), "--comment", "run-a"))
    expected = sum(naive_sweep(class_maps, ground_truth, SWEEP_THRESHOLDS)
                   for class_maps, ground_truth in cases.values())
    expected_iou = naive_iou_percent(expected)
    expected_miou = expected_iou.mean(axis=1)
    best = int(np.argmax(expected_miou))

    written = json.loads((root / "out" / "eval.json").read_text())
    assert written["thresholds"] == list(SWEEP_THRESHOLDS)
    assert written["classes"] == list(VOC_CLASSES)
    np.testing.assert_allclose(written["miou"], expected_miou, rtol=0, atol=1e-9)
    np.testing.assert_allclose(written["iou"], expected_iou, rtol=0, atol=1e-9)
    assert written["best_threshold"] == SWEEP_THRESHOLDS[best]
    assert written["best_miou"] == pytest.approx(expected_miou[best], abs=1e-9)
    assert written["num_images"] == len(NAMES)

    with Image.open(root / "out" / "curve.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    log = (root / "eval.txt").read_text()
    assert "\trun-a\n" in log and "mIoU:[" in log and f"best_t:{SWEEP_THRESHOLDS[best]}" in log

    printed = capsys.readouterr().out
    assert printed.count("background score:") == len(SWEEP_THRESHOLDS)
    assert f"{'aeroplane':>11s}:{expected_iou[best, 1]:7.3f}%" in printed
    assert f"{expected_miou[best]:7.3f}%" in printed


def test_single_threshold_with_workers_equals_naive(dataset):
    root, cases = dataset
    result = evaluation_cam.main(arguments(root, "--t", "0.3", "--num_workers", "2", "--json", str(root / "t.json")))
    expected = sum(naive_counts(naive_prediction(class_maps, ground_truth.shape, 0.3), ground_truth)
                   for class_maps, ground_truth in cases.values())
    assert result["thresholds"] == [0.3]
    np.testing.assert_allclose(result["iou"][0], naive_iou_percent(expected), rtol=0, atol=1e-9)
    log = (root / "eval.txt").read_text()
    assert "t:0.3  " in log and "aeroplane:" in log and "mIoU:" in log


def test_png_mode_equals_naive(dataset):
    root, cases = dataset
    rng = np.random.default_rng(5)
    (root / "labels").mkdir()
    expected = np.zeros((NUM_CLASSES, 3), np.int64)
    for name, (_, ground_truth) in cases.items():
        labels = np.concatenate([np.arange(NUM_CLASSES), [IGNORE_INDEX]])   # 255 predicts no class
        prediction = rng.choice(labels, size=ground_truth.shape).astype(np.uint8)
        save_label_png(root / "labels" / f"{name}.png", prediction)
        expected += naive_counts(prediction, ground_truth)
    result = evaluation_cam.main(arguments(root, "--type", "png", "--predict_dir", str(root / "labels"),
                                           "--json", str(root / "png.json")))
    assert result["thresholds"] is None
    np.testing.assert_allclose(result["iou"][0], naive_iou_percent(expected), rtol=0, atol=1e-9)
    assert json.loads((root / "png.json").read_text())["best_threshold"] is None


@pytest.mark.parametrize("extra, message", [
    (("--t", "0.3", "--curve", "True"), "give one of them"),
    (("--curve", "False"), "needs --t"),
    (("--type", "png", "--t", "0.3"), "drop them"),
    (("--type", "png", "--plot", "x.png"), "drop --plot"),
    (("--t", "nan"), "not a number"),
])
def test_conflicting_flags_are_user_errors(dataset, extra, message):
    root, _ = dataset
    with pytest.raises(UserError, match=message):
        evaluation_cam.main(arguments(root, *extra))


def test_curve_flag_forms_run_the_sweep(dataset):
    root, _ = dataset
    assert evaluation_cam.main(arguments(root, "--curve"))["thresholds"] == list(SWEEP_THRESHOLDS)
    assert evaluation_cam.main(arguments(root, "--curve", "True"))["thresholds"] == list(SWEEP_THRESHOLDS)
    assert evaluation_cam.main(arguments(root, "--t", "0.25", "--curve", "False"))["thresholds"] == [0.25]


def test_missing_files_are_listed_and_exit_nonzero(dataset):
    root, _ = dataset
    missing = [f"gone_{index}" for index in range(7)]
    (root / "list.txt").write_text("\n".join(NAMES + missing) + "\n")
    (root / "gt" / f"{NAMES[0]}.png").unlink()
    completed = subprocess.run([sys.executable, str(REPO / "evaluation_cam.py"), *arguments(root)],
                               capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode != 0
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 7 of 12 listed images have no prediction")
    assert "gone_0, gone_1, gone_2, gone_3, gone_4 and 2 more" in error
    assert "8 of 12 listed images have no ground truth" in error and NAMES[0] in error
    assert "Traceback" not in completed.stderr


def test_size_mismatch_and_bad_files_name_the_file(dataset):
    root, cases = dataset
    class_maps, ground_truth = cases[NAMES[1]]
    save_label_png(root / "gt" / f"{NAMES[1]}.png", np.zeros((ground_truth.shape[0] + 1, 3), np.uint8))
    with pytest.raises(UserError, match=f"{NAMES[1]}.npy is .* but its ground truth .*{NAMES[1]}.png is"):
        evaluation_cam.main(arguments(root))
    save_label_png(root / "gt" / f"{NAMES[1]}.png", np.full(ground_truth.shape, 40, np.uint8))
    with pytest.raises(UserError, match="label value 40"):
        evaluation_cam.main(arguments(root, "--num_workers", "2"))
    save_npy(root / "cams" / f"{NAMES[1]}.npy", {"cat": np.zeros(ground_truth.shape, np.float32)})
    with pytest.raises(UserError, match="has key 'cat'"):
        evaluation_cam.main(arguments(root))
    save_npy(root / "cams" / f"{NAMES[1]}.npy", np.zeros(ground_truth.shape, np.float32))
    with pytest.raises(UserError, match="is not a CAM dict"):
        evaluation_cam.main(arguments(root))
