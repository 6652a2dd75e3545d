"""`make demo`'s command end to end on a tiny toy set (2 steps a network): every stage runs, CPN's, IRN's (or
AffinityNet's, `--refine aff`) and DeepLab's, the report names every scored stage, and a rerun does no work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import run_pipeline

REPO = Path(__file__).resolve().parents[1]
STEPS = ["--cpn_steps", "2", "--irn_steps", "2", "--seg_steps", "2"]


def run_demo(work_dir: Path, *flags: str, images: tuple[str, str] = ("4", "2")) -> subprocess.CompletedProcess:
    command = [sys.executable, "run_pipeline.py", "--toy", "--toy_images", *images, *STEPS, "--device", "cpu"]
    return subprocess.run(
        [*command, "--work_dir", str(work_dir), *flags], capture_output=True, text=True, cwd=REPO, timeout=1500
    )


@pytest.mark.slow
def test_demo_runs_every_stage_and_a_rerun_skips_them(tmp_path):
    work_dir = tmp_path / "demo"
    first = run_demo(work_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((work_dir / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]] == list(run_pipeline.STAGES)
    scored = {stage["name"]: stage["miou"] for stage in report["stages"] if stage["miou"] is not None}
    assert set(scored) == {"sweep", "sem_seg_score", "seg_score"}
    markdown = (work_dir / "report.md").read_text()
    assert "67.8 %" in markdown and "DeepLab" in markdown
    assert "step 2/2" in (work_dir / "cpn" / "resnet38_CPN.log").read_text().splitlines()[-1]

    again = run_demo(work_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == len(report["stages"])


@pytest.mark.slow
def test_demo_of_the_affinitynet_route_runs_its_stages_and_a_rerun_skips_them(tmp_path):
    """`make demo DEMO_ARGS="--refine aff"`'s command: the CRF label files, AffinityNet, its walk, DeepLab on it."""
    work_dir = tmp_path / "demo_aff"
    first = run_demo(work_dir, "--refine", "aff", "--aff_steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads((work_dir / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]] == list(run_pipeline.ROUTES["aff"])
    scored = {stage["name"]: stage["miou"] for stage in report["stages"] if stage["miou"] is not None}
    assert set(scored) == {"sweep", "aff_rw_score", "seg_score"}
    markdown = (work_dir / "report.md").read_text()
    assert "AffinityNet's random walk" in markdown and "SEAM: 63.61 % train from its own 55.41 % CAMs" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| aff_rw_score |"))
    toy_miou = row.split(" | ")[3]  # the chain's pseudo-mask link is the walk's, over the toy classes
    assert "IRN" not in markdown and f"→ pseudo masks {toy_miou} →" in markdown
    assert "step 2/2" in (work_dir / "aff" / "resnet38_aff.log").read_text().splitlines()[-1]

    again = run_demo(work_dir, "--refine", "aff", "--aff_steps", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == len(report["stages"])


@pytest.mark.slow
def test_demo_coco(tmp_path):
    """`make demo DEMO_COCO=1`'s command on 5 + 1 toy COCO images, up to the pseudo masks' score."""
    work_dir = tmp_path / "coco14"
    result = run_demo(work_dir, "--dataset", "coco14", "--until", "sem_seg_score", images=("5", "1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 with no labelled object left out" in result.stdout
    evaluation = json.loads((work_dir / "sweep" / "cam.json").read_text())
    assert evaluation["protocol"]["dataset"] == "coco14" and len(evaluation["classes"]) == 81
    assert "none published" in (work_dir / "report.md").read_text()
