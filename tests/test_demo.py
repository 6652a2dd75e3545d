"""`make demo`'s script end to end on a tiny toy set (2 steps): every stage runs, CPN's and IRN's, every
output the demo lists exists, and a rerun with other steps rewrites the CAMs and retrains IRNet instead of
refusing them or resuming the old run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_demo(out: Path, steps: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEMO_TOY_TRAIN": "4", "DEMO_TOY_VAL": "2", "DEMO_IRN_STEPS": "2"}
    return subprocess.run(
        ["bash", str(REPO / "tool" / "demo.sh"), sys.executable, str(out), steps, "cpu"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )


@pytest.mark.slow
def test_demo_runs_every_stage_and_reruns(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out, "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 steps of the CPN head alone (--freeze_backbone)" in first.stdout
    assert "trained / untrained:" in first.stdout and "demo time" in first.stdout
    for run in ("untrained", "toy"):
        result = json.loads((out / run / "eval.json").read_text())
        assert result["protocol"]["num_images"] == 2
        for folder in ("cam", "cam_irn", "cam_pred", "crf/alpha_4", "crf/alpha_24", "vis"):
            assert (out / run / folder / "manifest.json").is_file(), folder
    trained_log = (out / "CPN" / "toy.log").read_text().splitlines()
    assert trained_log[0].endswith("backbone frozen") and "step 2/2" in trained_log[-1]
    check_irn_outputs(out, first.stdout)

    again = run_demo(out, "3")  # other weights into the same folders: --overwrite, not an error
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = json.loads((out / "toy" / "cam" / "manifest.json").read_text())
    assert "step 3/3" in (out / "CPN" / "toy.log").read_text().splitlines()[-1]
    assert (
        manifest["weights_sha256"]
        != json.loads((out / "untrained" / "cam" / "manifest.json").read_text())["weights_sha256"]
    )
    check_irn_outputs(out, again.stdout)
    assert "resumed" not in (out / "IRN" / "res50_irn.log").read_text()  # new CPN weights: IRNet afresh


def check_irn_outputs(out: Path, stdout: str) -> None:
    """IRN's stage: train CAMs, confident labels, IRNet's weights, val pseudo labels and their score."""
    assert "pseudo-label mIoU (IRN random walk)" in stdout and "pseudo labels / CAMs:" in stdout
    names = (out / "lists" / "val.txt").read_text().split()
    assert len(names) == 2
    for name in names:
        assert (out / "toy" / "sem_seg" / f"{name}.png").is_file(), name
    assert len(list((out / "toy" / "ir_label").glob("*.png"))) == 4
    assert len(list((out / "toy" / "cam_irn_train").glob("*.npy"))) == 4
    assert (out / "IRN" / "res50_irn.pth").is_file()
    result = json.loads((out / "toy" / "sem_seg_eval.json").read_text())
    assert result["protocol"]["num_images"] == 2
    assert 0 <= result["best_miou"] <= 100


@pytest.mark.slow
def test_demo_coco_leg(tmp_path):
    """`make demo DEMO_COCO=1`'s leg (scripts/demo_coco.sh) on 5 + 1 toy COCO images, 2 steps."""
    out = tmp_path / "coco14"
    env = {**os.environ, "DEMO_TOY_TRAIN": "5", "DEMO_TOY_VAL": "1"}
    command = ["bash", str(REPO / "tool" / "demo_coco.sh"), sys.executable, str(out), "cpu", "2"]
    result = subprocess.run(
        [*command, "--freeze_backbone", "--lr", "0.01"], capture_output=True, text=True, cwd=REPO, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for run in ("untrained", "toy"):
        assert f"COCO toy CAM mIoU, {run} network:" in result.stdout
        evaluation = json.loads((out / run / "eval.json").read_text())
        assert evaluation["protocol"]["dataset"] == "coco14" and len(evaluation["classes"]) == 81
    assert "1 with no labelled object left out" in result.stdout
