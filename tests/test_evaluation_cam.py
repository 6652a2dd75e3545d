"""evaluation_cam.py end to end on tiny synthetic predictions (VOC's 21 classes and COCO's 81),
against the naive SPEC §6 loop; its protocol statement and warnings; --dataset and --sweep; and
that it stays a numpy job (no torch import)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_metrics import naive_counts, naive_prediction, naive_sweep, random_case

import evaluation_cam
from engine.datasets import COCO14, IGNORE_INDEX, PALETTE, VOC12, VOC_TRAIN_IMAGES, VOC_VAL_IMAGES
from engine.errors import UserError
from engine.fileio import save_npy
from engine.manifest import FolderManifest
from tool.metrics import GROUND_TRUTH, PREDICTED, TRUE_POSITIVE

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"img_{index}" for index in range(5)]
HEAVY_MODULES = ("torch", "torchvision", "skimage", "matplotlib")  # a numpy job imports none of them
NUM_CLASSES = VOC12.num_classes
SWEEP_THRESHOLDS = VOC12.sweep
VOC_CLASSES = VOC12.class_names
VOC_SWEEP_PROTOCOL = {"start": 0.2, "stop": 0.59, "step": 0.01}  # SPEC §6


def save_label_png(path: Path, labels: np.ndarray) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.reshape(-1).tolist())
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
    return [
        "--list",
        str(root / "list.txt"),
        "--predict_dir",
        str(root / "cams"),
        "--gt_dir",
        str(root / "gt"),
        "--logfile",
        str(root / "eval.txt"),
        "--num_workers",
        "0",
        *extra,
    ]


def naive_iou_percent(counts: np.ndarray) -> np.ndarray:
    tp, predicted, truth = counts[..., TRUE_POSITIVE], counts[..., PREDICTED], counts[..., GROUND_TRUTH]
    return tp / (truth + predicted - tp + 1e-10) * 100


def naive_per_class(counts: np.ndarray, class_names: tuple[str, ...] = VOC_CLASSES) -> list[dict]:
    """{name, iou, precision, recall} in percent from one [num_classes, 3] counts array, None where undefined."""
    rows = []
    for name, (tp, predicted, truth) in zip(class_names, counts[:, [TRUE_POSITIVE, PREDICTED, GROUND_TRUTH]]):
        rows.append(
            {
                "name": name,
                "iou": tp / (truth + predicted - tp + 1e-10) * 100,
                "precision": tp / predicted * 100 if predicted else None,
                "recall": tp / truth * 100 if truth else None,
            }
        )
    return rows


def assert_per_class_equal(actual: list[dict], expected: list[dict]) -> None:
    assert [row["name"] for row in actual] == [row["name"] for row in expected]
    for got, want in zip(actual, expected):
        for key in ("iou", "precision", "recall"):
            assert got[key] == (None if want[key] is None else pytest.approx(want[key], abs=1e-9)), (got, key)


def strict_json(path: Path):
    """JSON as other languages read it: NaN or Infinity would be an error."""

    def reject(constant: str):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def test_sweep_matches_naive_and_writes_json_plot_log(dataset, capsys):
    root, cases = dataset
    evaluation_cam.main(
        arguments(
            root,
            "--json",
            str(root / "out" / "eval.json"),
            "--plot",
            str(root / "out" / "curve.png"),
            "--comment",
            "run-a",
        )
    )
    expected = sum(
        naive_sweep(class_maps, ground_truth, SWEEP_THRESHOLDS) for class_maps, ground_truth in cases.values()
    )
    expected_iou = naive_iou_percent(expected)
    expected_miou = expected_iou.mean(axis=1)
    best = int(np.argmax(expected_miou))

    written = strict_json(root / "out" / "eval.json")
    assert written["thresholds"] == list(SWEEP_THRESHOLDS)
    assert written["classes"] == list(VOC_CLASSES)
    np.testing.assert_allclose(written["miou"], expected_miou, rtol=0, atol=1e-9)
    np.testing.assert_allclose(written["iou"], expected_iou, rtol=0, atol=1e-9)
    assert written["best_threshold"] == SWEEP_THRESHOLDS[best]
    assert written["best_miou"] == pytest.approx(expected_miou[best], abs=1e-9)
    assert written["protocol"] == {
        "list": str(root / "list.txt"),
        "num_images": len(NAMES),
        "gt_dir": str(root / "gt"),
        "predict_dir": str(root / "cams"),
        "type": "npy",
        "threshold_choice": "best on these ground-truth labels (the paper's protocol)",
        "dataset": "voc12",
        "sweep": VOC_SWEEP_PROTOCOL,
    }
    assert written["warnings"] == []
    assert_per_class_equal(written["per_class"], naive_per_class(expected[best]))

    with Image.open(root / "out" / "curve.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    log = (root / "eval.txt").read_text()
    assert "\trun-a\n" in log
    fields = log.splitlines()[1].split("  ")
    # the reference's fields first, the protocol's after them
    assert fields[0].startswith("mIoU:[") and fields[1] == f"best_t:{SWEEP_THRESHOLDS[best]}"
    assert fields[2].startswith("best_mIoU:")
    assert fields[3:] == [
        f"list:{root / 'list.txt'}",
        f"num_images:{len(NAMES)}",
        f"gt_dir:{root / 'gt'}",
        f"predict_dir:{root / 'cams'}",
        "type:npy",
        "threshold_choice:best on these ground-truth labels (the paper's protocol)",
        "dataset:voc12",
        f"sweep:{VOC_SWEEP_PROTOCOL}",
        "",
    ]

    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert sum(line.startswith("background score: 0.") for line in lines) == len(SWEEP_THRESHOLDS)
    aeroplane = naive_per_class(expected[best])[1]
    assert (
        f"{'aeroplane':>11s}{aeroplane['iou']:10.3f}%{aeroplane['precision']:10.3f}%{aeroplane['recall']:10.3f}%"
    ) in lines
    assert lines[-7:-1] == [
        "dataset: voc12 (VOC2012, 21 classes)",
        f"list: {root / 'list.txt'} ({len(NAMES)} images)",
        f"ground truth: {root / 'gt'}",
        f"predictions: {root / 'cams'} (npy CAMs)",
        "background score: best on these ground-truth labels (the paper's protocol)",
        "sweep: 0.2 to 0.59 in steps of 0.01",
    ]
    assert lines[-1] == (
        f"{'mIoU':>11s}:{expected_miou[best]:7.3f}% at background score "
        f"{SWEEP_THRESHOLDS[best]:.3f} over {len(NAMES)} images"
    )
    assert "warning" not in printed.err


def test_single_threshold_with_workers_equals_naive(dataset, capsys):
    root, cases = dataset
    result = evaluation_cam.main(arguments(root, "--t", "0.3", "--num_workers", "2", "--json", str(root / "t.json")))
    expected = sum(
        naive_counts(naive_prediction(class_maps, ground_truth.shape, 0.3), ground_truth)
        for class_maps, ground_truth in cases.values()
    )
    assert result["thresholds"] == [0.3]
    np.testing.assert_allclose(result["iou"][0], naive_iou_percent(expected), rtol=0, atol=1e-9)
    assert_per_class_equal(result["per_class"], naive_per_class(expected))
    protocol = strict_json(root / "t.json")["protocol"]
    assert protocol["threshold_choice"] == "fixed --t" and protocol["dataset"] == "voc12" and "sweep" not in protocol
    fields = (root / "eval.txt").read_text().splitlines()[1].split("  ")
    assert [field.split(":")[0] for field in fields[: NUM_CLASSES + 2]] == [*VOC_CLASSES, "t", "mIoU"]
    assert fields[NUM_CLASSES] == "t:0.3" and "threshold_choice:fixed --t" in fields
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "background score: fixed --t",
        f"{'mIoU':>11s}:{result['best_miou']:7.3f}% at background score 0.300 over {len(NAMES)} images",
    ]


def test_png_mode_equals_naive(dataset):
    root, cases = dataset
    rng = np.random.default_rng(5)
    (root / "labels").mkdir()
    expected = np.zeros((NUM_CLASSES, 3), np.int64)
    for name, (_, ground_truth) in cases.items():
        labels = np.concatenate([np.arange(NUM_CLASSES), [IGNORE_INDEX]])  # 255 predicts no class
        prediction = rng.choice(labels, size=ground_truth.shape).astype(np.uint8)
        save_label_png(root / "labels" / f"{name}.png", prediction)
        expected += naive_counts(prediction, ground_truth)
    result = evaluation_cam.main(
        arguments(root, "--type", "png", "--predict_dir", str(root / "labels"), "--json", str(root / "png.json"))
    )
    assert result["thresholds"] is None
    np.testing.assert_allclose(result["iou"][0], naive_iou_percent(expected), rtol=0, atol=1e-9)
    assert_per_class_equal(result["per_class"], naive_per_class(expected))
    written = strict_json(root / "png.json")
    assert written["best_threshold"] is None
    assert written["protocol"]["type"] == "png" and written["protocol"]["threshold_choice"] == "none (png labels)"


def test_png_void_as_background_is_irns_rule(dataset, capsys):
    """SPEC-IRN §10: with --prediction_void background a 255 in a prediction scores as background."""
    root, cases = dataset
    rng = np.random.default_rng(6)
    (root / "labels").mkdir()
    expected = {"no_class": np.zeros((NUM_CLASSES, 3), np.int64), "background": np.zeros((NUM_CLASSES, 3), np.int64)}
    for name, (_, ground_truth) in cases.items():
        prediction = rng.choice([0, 3, 7, IGNORE_INDEX], size=ground_truth.shape).astype(np.uint8)
        save_label_png(root / "labels" / f"{name}.png", prediction)
        expected["no_class"] += naive_counts(prediction, ground_truth)
        expected["background"] += naive_counts(np.where(prediction == IGNORE_INDEX, 0, prediction), ground_truth)
    for void, counts in expected.items():
        extra = ("--type", "png", "--predict_dir", str(root / "labels"), "--prediction_void", void)
        result = evaluation_cam.main(arguments(root, *extra, "--json", str(root / f"{void}.json")))
        np.testing.assert_allclose(result["iou"][0], naive_iou_percent(counts), rtol=0, atol=1e-9)
        assert strict_json(root / f"{void}.json")["protocol"]["prediction_void"] == void
    assert "(png labels, 255 counts as background)" in capsys.readouterr().out


def do_python_eval(predictions: dict, ground_truths: dict, num_classes: int = NUM_CLASSES) -> float:
    """SPEC_SEG §4: the segmentation reference's VOCDataset.do_python_eval, retyped: per class P, T, TP over the
    pixels whose ground truth is not 255, IoU = TP / (T + P - TP + 1e-10), the mean over all classes × 100."""
    P, T, TP = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for name, predict in predictions.items():
        gt = ground_truths[name]
        cal = gt < 255
        mask = (predict == gt) * cal
        for i in range(num_classes):
            P[i] += np.sum((predict == i) * cal)
            T[i] += np.sum((gt == i) * cal)
            TP[i] += np.sum((gt == i) * mask)
    return float(np.mean(TP / (T + P - TP + 1e-10)) * 100)


def segmentation_folder(root: Path, cases: dict, output: str = "out_seg") -> Path:
    """Random label PNGs 0..20 in a folder whose manifest names `output` (infer_seg.py's --out_seg); the
    ground truth renamed SegmentationClass and the list val.txt, as VOC's."""
    rng = np.random.default_rng(7)
    folder = root / "out_seg"
    FolderManifest(
        folder,
        weights=root / "deeplab.pth",
        weights_sha256="0" * 64,
        settings={"output": output},
        input_list=root / "val.txt",
        version=None,
    ).write()
    predictions = {}
    for name, (_, ground_truth) in cases.items():
        predictions[name] = rng.integers(0, NUM_CLASSES, ground_truth.shape).astype(np.uint8)
        save_label_png(folder / f"{name}.png", predictions[name])
    (root / "gt").rename(root / "SegmentationClass")
    (root / "list.txt").rename(root / "val.txt")
    return folder


def test_segmentation_labels_score_as_do_python_eval_and_say_so(dataset, capsys):
    root, cases = dataset
    folder = segmentation_folder(root, cases)
    extra = ("--list", str(root / "val.txt"), "--gt_dir", str(root / "SegmentationClass"), "--type", "png")
    result = evaluation_cam.main(arguments(root, *extra, "--predict_dir", str(folder)))
    expected = do_python_eval(
        {name: read_png(folder / f"{name}.png") for name in cases}, {name: gt for name, (_, gt) in cases.items()}
    )
    assert result["best_miou"] == pytest.approx(expected, abs=1e-9)
    assert result["protocol"]["stage"] == "segmentation" and result["warnings"] == []
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "stage: segmentation (infer_seg.py's labels), VOC2012 val, SegmentationClass"


def test_other_label_folders_are_not_the_segmentation_stage(dataset):
    root, cases = dataset
    folder = segmentation_folder(root, cases, output="sem_seg_out_dir")  # make_sem_seg_labels.py's pseudo labels
    extra = ("--list", str(root / "val.txt"), "--gt_dir", str(root / "SegmentationClass"), "--type", "png")
    assert "stage" not in evaluation_cam.main(arguments(root, *extra, "--predict_dir", str(folder)))["protocol"]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_undefined_precision_and_recall_are_null_and_n_a(tmp_path, capsys):
    # ground truth holds background and aeroplane only; the prediction adds bicycle, never cat
    (tmp_path / "gt").mkdir()
    (tmp_path / "labels").mkdir()
    save_label_png(tmp_path / "gt" / "a.png", np.array([[0, 0, 1, 1]], np.uint8))
    save_label_png(tmp_path / "labels" / "a.png", np.array([[0, 2, 1, 0]], np.uint8))
    (tmp_path / "list.txt").write_text("a\n")
    evaluation_cam.main(
        [
            "--list",
            str(tmp_path / "list.txt"),
            "--predict_dir",
            str(tmp_path / "labels"),
            "--gt_dir",
            str(tmp_path / "gt"),
            "--type",
            "png",
            "--logfile",
            "",
            "--num_workers",
            "0",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    per_class = {row["name"]: row for row in strict_json(tmp_path / "eval.json")["per_class"]}
    assert per_class["background"] == {
        "name": "background",
        "iou": pytest.approx(100 / 3),
        "precision": 50.0,
        "recall": 50.0,
    }
    assert per_class["aeroplane"] == {
        "name": "aeroplane",
        "iou": pytest.approx(50.0),
        "precision": 100.0,
        "recall": 50.0,
    }
    assert per_class["bicycle"] == {"name": "bicycle", "iou": 0.0, "precision": 0.0, "recall": None}
    assert per_class["cat"] == {"name": "cat", "iou": 0.0, "precision": None, "recall": None}
    lines = capsys.readouterr().out.splitlines()
    assert f"{'bicycle':>11s}{0:10.3f}%{0:10.3f}%{'n/a':>11s}" in lines
    assert f"{'cat':>11s}{0:10.3f}%{'n/a':>11s}{'n/a':>11s}" in lines


def protocol_of(num_images: int, gt_dir: str, dataset: str = "voc12") -> dict:
    args = argparse.Namespace(list="train.txt", gt_dir=gt_dir, predict_dir="out_cam", type="npy", dataset=dataset)
    return evaluation_cam.evaluation_protocol(args, num_images, SWEEP_THRESHOLDS)


@pytest.mark.parametrize(
    "num_images, gt_dir, expected",
    [
        (VOC_TRAIN_IMAGES, "VOCdevkit/VOC2012/SegmentationClass", []),
        (VOC_TRAIN_IMAGES, "VOCdevkit/VOC2012/SegmentationClassAug", ["SegmentationClassAug"]),
        (VOC_TRAIN_IMAGES, "VOCdevkit/VOC2012/SegmentationClassAug/", ["SegmentationClassAug"]),
        (VOC_TRAIN_IMAGES, "SegmentationClassAug/../SegmentationClass", []),
        (VOC_VAL_IMAGES, "VOCdevkit/VOC2012/SegmentationClass", ["1,449 images"]),
        (VOC_VAL_IMAGES, "SegmentationClassAug", ["SegmentationClassAug", "1,449 images"]),
        (VOC_VAL_IMAGES - 1, "SegmentationClass", []),
    ],
)
def test_protocol_warnings(num_images, gt_dir, expected):
    warnings = evaluation_cam.protocol_warnings(protocol_of(num_images, gt_dir))
    assert len(warnings) == len(expected)
    for warning, phrase in zip(warnings, expected):
        assert phrase in warning and "\n" not in warning
    if expected[:1] == ["SegmentationClassAug"]:
        assert warnings[0].startswith(f"--gt_dir {os.path.abspath(gt_dir)} holds SBD's")
        assert "VOC2012/SegmentationClass," in warnings[0]
    if "1,449 images" in expected:
        assert "57.4 %" in warnings[-1] and "train (1,464 images)" in warnings[-1]


def test_protocol_warnings_are_the_vocs_word_for_word():
    warnings = evaluation_cam.protocol_warnings(protocol_of(VOC_VAL_IMAGES, "/data/VOC2012/SegmentationClassAug"))
    assert warnings == [
        "--gt_dir /data/VOC2012/SegmentationClassAug holds SBD's SegmentationClassAug masks, coarser than "
        "VOC's; the paper scores CAMs against VOC2012/SegmentationClass, so this mIoU is not comparable "
        "with its figures",
        "the list has 1,449 images, as VOC2012 val does; the paper's CAM mIoU (57.4 %) is on train "
        "(1,464 images): pass --list .../ImageSets/Segmentation/train.txt to compare with it",
    ]


@pytest.mark.parametrize(
    "gt_dir, expected",
    [("VOCdevkit/VOC2012/SegmentationClass", []), ("VOCdevkit/VOC2012/SegmentationClassAug", ["SegmentationClassAug"])],
)
def test_segmentation_on_val_has_no_cam_list_warning(gt_dir, expected):
    """SPEC_SEG §4: the segmentation network is scored on val (the paper's 67.8 %), so its 1,449 images are
    the protocol, not the CAM figure's departure; coarse ground truth still warns."""
    protocol = {**protocol_of(VOC_VAL_IMAGES, gt_dir), "stage": "segmentation"}
    warnings = evaluation_cam.protocol_warnings(protocol)
    assert len(warnings) == len(expected)
    assert all("the paper scores segmentation against VOC2012/SegmentationClass" in warning for warning in warnings)


def test_coco_has_no_protocol_warnings():
    assert evaluation_cam.protocol_warnings(protocol_of(VOC_VAL_IMAGES, "SegmentationClassAug", "coco14")) == []


def test_protocol_states_how_the_background_score_is_chosen():
    args = argparse.Namespace(list="l.txt", gt_dir="gt", predict_dir="p", type="npy", dataset="voc12")
    choices = [
        evaluation_cam.evaluation_protocol(args, 3, thresholds)["threshold_choice"]
        for thresholds in (SWEEP_THRESHOLDS, (0.3,), None)
    ]
    assert choices == ["best on these ground-truth labels (the paper's protocol)", "fixed --t", "none (png labels)"]


def test_segmentation_class_aug_ground_truth_warns_on_stderr_and_in_json(dataset, capsys):
    root, _ = dataset
    aug = root / "SegmentationClassAug"
    (root / "gt").rename(aug)
    result = evaluation_cam.main(arguments(root, "--gt_dir", str(aug), "--json", str(root / "aug.json")))
    printed = capsys.readouterr()
    err_lines = printed.err.splitlines()
    warning_lines = [line for line in err_lines if line.startswith("warning:")]
    assert warning_lines == [f"warning: {warning}" for warning in result["warnings"]]
    assert len(warning_lines) == 1 and "SegmentationClassAug masks, coarser" in warning_lines[0]
    assert "warning" not in printed.out
    assert strict_json(root / "aug.json")["warnings"] == result["warnings"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--t", "0.3", "--curve", "True"), "give one of them"),
        (("--curve", "False"), "needs --t"),
        (("--type", "png", "--t", "0.3"), "drop them"),
        (("--type", "png", "--plot", "x.png"), "drop --plot"),
        (("--t", "nan"), "not a number"),
        (("--prediction_void", "background"), "needs --type png"),
        (("--t", "0.3", "--sweep", "0.1", "0.5", "0.1"), "--t evaluates one threshold and --sweep a range"),
        (("--type", "png", "--sweep", "0.1", "0.5", "0.1"), "drop them"),
        (("--sweep", "0.5", "0.1", "0.1"), "use START <= STOP and a positive STEP"),
        (("--sweep", "0.1", "0.5", "0"), "use START <= STOP and a positive STEP"),
        (("--sweep", "0.1", "inf", "0.01"), "give three numbers such as 0.2 0.59 0.01"),
        (("--sweep", "0.3", "0.35", "0.1"), "holds one threshold; evaluate it with --t 0.3"),
        (("--sweep", "0.1", "0.5", "0.1", "--curve", "False"), "needs --t"),
    ],
)
def test_conflicting_flags_are_user_errors(dataset, extra, message):
    root, _ = dataset
    with pytest.raises(UserError, match=message):
        evaluation_cam.main(arguments(root, *extra))


def test_curve_flag_forms_run_the_sweep(dataset):
    root, _ = dataset
    assert evaluation_cam.main(arguments(root, "--curve"))["thresholds"] == list(SWEEP_THRESHOLDS)
    assert evaluation_cam.main(arguments(root, "--curve", "True"))["thresholds"] == list(SWEEP_THRESHOLDS)
    assert evaluation_cam.main(arguments(root, "--t", "0.25", "--curve", "False"))["thresholds"] == [0.25]


def test_import_and_run_load_no_torch_skimage_or_matplotlib(dataset):
    root, _ = dataset
    script = (
        "import sys, evaluation_cam\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "print(sorted(set(heavy) & set(sys.modules)))\n"
        f"evaluation_cam.main({arguments(root, '--json', str(root / 'e.json'))!r})\n"
        "print(sorted(set(heavy) & set(sys.modules)))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "[]", "importing evaluation_cam loaded " + lines[0]
    assert lines[-1] == "[]", "running evaluation_cam loaded " + lines[-1]
    assert (root / "e.json").is_file()


def test_help_runs_as_a_script():
    completed = subprocess.run(
        [sys.executable, str(REPO / "evaluation_cam.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: evaluation_cam.py") and "--gt_dir" in completed.stdout


def test_missing_files_are_listed_and_exit_nonzero(dataset):
    root, _ = dataset
    missing = [f"gone_{index}" for index in range(7)]
    (root / "list.txt").write_text("\n".join(NAMES + missing) + "\n")
    (root / "gt" / f"{NAMES[0]}.png").unlink()
    completed = subprocess.run(
        [sys.executable, str(REPO / "evaluation_cam.py"), *arguments(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert completed.returncode != 0
    error = completed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 7 of 12 listed images have no prediction")
    assert "gone_0, gone_1, gone_2, gone_3, gone_4 (and 2 more)" in error
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


# --- COCO: --dataset coco14, 81 classes -------------------------------------------------------------


@pytest.fixture()
def coco_dataset(tmp_path):
    """Four 81-class CAM dicts (keys up to 79, ties, absent classes) with ground truth up to 80."""
    rng = np.random.default_rng(1)
    (tmp_path / "cams").mkdir()
    (tmp_path / "gt").mkdir()
    cases = {}
    for index, name in enumerate(NAMES[:4]):
        class_maps, ground_truth = random_case(rng, int(rng.integers(15, 30)), int(rng.integers(15, 30)), COCO14)
        if index == 0:  # the last class, predicted and in the ground truth
            class_maps[79] = rng.uniform(0, 0.7, ground_truth.shape).astype(np.float32)
            ground_truth[: ground_truth.shape[0] // 2] = 80
        class_maps = class_maps or {41: np.full(ground_truth.shape, 0.33, np.float32)}
        save_npy(tmp_path / "cams" / f"{name}.npy", class_maps)
        save_label_png(tmp_path / "gt" / f"{name}.png", ground_truth)
        cases[name] = (class_maps, ground_truth)
    (tmp_path / "list.txt").write_text("\n".join(NAMES[:4]) + "\n")
    return tmp_path, cases


def coco_expected(cases: dict, thresholds) -> np.ndarray:
    return sum(
        naive_sweep(class_maps, ground_truth, thresholds, COCO14.num_classes)
        for class_maps, ground_truth in cases.values()
    )


def test_coco_sweep_with_workers_matches_naive(coco_dataset, capsys):
    root, cases = coco_dataset
    evaluation_cam.main(arguments(root, "--dataset", "coco14", "--num_workers", "2", "--json", str(root / "coco.json")))
    expected = coco_expected(cases, COCO14.sweep)
    expected_iou = naive_iou_percent(expected)
    best = int(np.argmax(expected_iou.mean(axis=1)))
    written = strict_json(root / "coco.json")
    assert written["classes"] == list(COCO14.class_names) and len(written["classes"]) == 81
    assert written["thresholds"] == list(COCO14.sweep) == [round(0.05 + 0.01 * i, 2) for i in range(55)]
    np.testing.assert_allclose(written["iou"], expected_iou, rtol=0, atol=1e-9)
    np.testing.assert_allclose(written["miou"], expected_iou.mean(axis=1), rtol=0, atol=1e-9)
    assert written["best_threshold"] == COCO14.sweep[best]
    assert_per_class_equal(written["per_class"], naive_per_class(expected[best], COCO14.class_names))
    assert expected[:, 80, GROUND_TRUTH].min() > 0 and expected[:, 80, PREDICTED].max() > 0
    assert written["protocol"]["dataset"] == "coco14"
    assert written["protocol"]["sweep"] == {"start": 0.05, "stop": 0.59, "step": 0.01}
    assert written["warnings"] == []

    lines = capsys.readouterr().out.splitlines()
    assert "dataset: coco14 (COCO 2014, 81 classes)" in lines and "sweep: 0.05 to 0.59 in steps of 0.01" in lines
    header = next(line for line in lines if line.lstrip().startswith("class"))
    assert header == f"{'class':>14s}{'IoU':>11s}{'precision':>11s}{'recall':>11s}"  # "baseball glove" sets the width
    assert any(line.startswith(f"{'toothbrush':>14s}") for line in lines)


def test_sweep_range_is_honoured(coco_dataset, capsys):
    root, cases = coco_dataset
    result = evaluation_cam.main(arguments(root, "--dataset", "coco14", "--sweep", "0.1", "0.3", "0.05"))
    assert result["thresholds"] == [0.1, 0.15, 0.2, 0.25, 0.3]
    np.testing.assert_allclose(
        result["iou"], naive_iou_percent(coco_expected(cases, result["thresholds"])), rtol=0, atol=1e-9
    )
    assert result["protocol"]["sweep"] == {"start": 0.1, "stop": 0.3, "step": 0.05}
    assert "sweep: 0.1 to 0.3 in steps of 0.05" in capsys.readouterr().out.splitlines()


def test_sweep_stops_at_the_last_step_within_stop():
    args = evaluation_cam.parse_args(["--list", "l.txt", "--gt_dir", "gt", "--sweep", "0.3", "0.345", "0.02"])
    thresholds = evaluation_cam.chosen_thresholds(args, VOC12)
    assert thresholds == (0.3, 0.32, 0.34)
    assert evaluation_cam.sweep_range(thresholds) == {"start": 0.3, "stop": 0.34, "step": 0.02}


def test_default_sweep_is_the_data_sets():
    for spec, first, count in ((VOC12, 0.2, 40), (COCO14, 0.05, 55)):
        args = evaluation_cam.parse_args(["--list", "l.txt", "--gt_dir", "gt", "--dataset", spec.name])
        thresholds = evaluation_cam.chosen_thresholds(args, spec)
        assert thresholds == spec.sweep and (thresholds[0], thresholds[-1], len(thresholds)) == (first, 0.59, count)
    assert VOC12.sweep == tuple(round(0.20 + 0.01 * i, 2) for i in range(40))  # SPEC §6
    assert evaluation_cam.parse_args(["--list", "l.txt", "--gt_dir", "gt"]).dataset == "voc12"


def test_class_79_is_coco_only(tmp_path):
    """Key 79 (toothbrush) and label 80 are COCO's; under the default voc12 they are errors that
    name the data set."""
    (tmp_path / "cams").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "list.txt").write_text("a\n")
    save_label_png(tmp_path / "gt" / "a.png", np.zeros((4, 5), np.uint8))
    save_npy(tmp_path / "cams" / "a.npy", {79: np.full((4, 5), 0.4, np.float32)})
    with pytest.raises(UserError, match=r"has key 79; expected class indices 0..19 \(--dataset voc12\)"):
        evaluation_cam.main(arguments(tmp_path))
    result = evaluation_cam.main(arguments(tmp_path, "--dataset", "coco14"))
    assert result["best_threshold"] == 0.4  # toothbrush everywhere below, background from 0.4 on
    assert result["iou"][0][80] == 0.0 and result["iou"][0][0] == 0.0 and result["best_miou"] == pytest.approx(100 / 81)

    save_label_png(tmp_path / "gt" / "a.png", np.full((4, 5), 80, np.uint8))
    save_npy(tmp_path / "cams" / "a.npy", {3: np.full((4, 5), 0.4, np.float32)})
    with pytest.raises(UserError, match=r"label value 80 .*outside 0..20.*--dataset voc12"):
        evaluation_cam.main(arguments(tmp_path))
    save_npy(tmp_path / "cams" / "a.npy", {80: np.full((4, 5), 0.4, np.float32)})
    with pytest.raises(UserError, match=r"has key 80; expected class indices 0..79 \(--dataset coco14\)"):
        evaluation_cam.main(arguments(tmp_path, "--dataset", "coco14"))


def test_coco_png_mode_equals_naive(coco_dataset):
    root, cases = coco_dataset
    rng = np.random.default_rng(9)
    (root / "labels").mkdir()
    expected = np.zeros((81, 3), np.int64)
    for name, (_, ground_truth) in cases.items():
        prediction = rng.choice([0, 1, 37, 80, IGNORE_INDEX], size=ground_truth.shape).astype(np.uint8)
        save_label_png(root / "labels" / f"{name}.png", prediction)
        expected += naive_counts(prediction, ground_truth, 81)
    extra = ("--dataset", "coco14", "--type", "png", "--predict_dir", str(root / "labels"))
    result = evaluation_cam.main(arguments(root, *extra))
    np.testing.assert_allclose(result["iou"][0], naive_iou_percent(expected), rtol=0, atol=1e-9)
    assert result["protocol"]["dataset"] == "coco14" and "sweep" not in result["protocol"]
