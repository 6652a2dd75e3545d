"""train_cpn.py end to end on the toy set at a tiny crop (CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_cpn
from network import build_network

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--crop_size",
    "32",
    "--resize_long",
    "32",
    "48",
    "--batch_size",
    "2",
    "--num_workers",
    "0",
    "--weights",
    "none",
    "--log_every",
    "1",
]


def run_args(toy_voc, toy_lists, out_dir, *extra, train_list=None) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--train_list",
        str(train_list or toy_lists["train"]),
        "--cls_labels",
        str(toy_lists["cls_labels"]),
        "--out_dir",
        str(out_dir),
        "--session_name",
        "run",
        *TINY,
        *extra,
    ]


def logged_losses(out_dir: Path, name: str = "loss") -> list[float]:
    lines = (out_dir / "run.log").read_text().splitlines()
    return [float(m.group(1)) for line in lines if (m := re.search(rf" {name} (\S+) ", line))]


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train_cpn.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize(
    "extra",
    [
        ("--patch_strategy", "superpixel"),
        ("--patch_strategy", "grid"),
        ("--no_tcp",),
        ("--no_cpcr",),
        ("--ohem", "0.5", "--three_pass"),
    ],
)
def test_few_steps_write_every_output(toy_voc, toy_lists, tmp_path, extra):
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "2", *extra))
    losses = logged_losses(tmp_path)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["args"]["max_steps"] == 2 and record["versions"]["torch"] == torch.__version__
    state = torch.load(tmp_path / "run.pth", weights_only=True)
    assert set(state) == set(build_network("resnet38_CPN").state_dict())
    assert [p.name for p in (tmp_path / "run_checkpoints").iterdir()] == ["step_0000002.pt"]
    if "--no_tcp" in extra or "--no_cpcr" in extra:
        line = (tmp_path / "run.log").read_text().splitlines()[-1]
        dropped = "loss_tcp" if "--no_tcp" in extra else "loss_cpcr"
        assert re.search(rf"{dropped} 0\.0000 ", line)


def test_freeze_backbone_trains_the_head_alone(toy_voc, toy_lists, tmp_path):
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path / "untrained", "--max_steps", "0"))
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path / "frozen", "--max_steps", "2", "--freeze_backbone"))
    before = torch.load(tmp_path / "untrained" / "run.pth", weights_only=True)
    after = torch.load(tmp_path / "frozen" / "run.pth", weights_only=True)
    head = build_network("resnet38_CPN").new_layers
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and {key.split(".")[0] for key in changed} <= set(head)
    assert "fc8.weight" in changed
    first_line = (tmp_path / "frozen" / "run.log").read_text().splitlines()[0]
    assert first_line.startswith(f"{toy_lists['train']}: 48 images, 24 steps/epoch")
    assert first_line.endswith("backbone frozen")


def test_resumed_run_matches_uninterrupted_run(toy_voc, toy_lists, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_cpn.main(run_args(toy_voc, toy_lists, straight, "--max_steps", "4", "--save_every", "0"))
    train_cpn.main(run_args(toy_voc, toy_lists, split, "--max_steps", "2"))
    train_cpn.main(run_args(toy_voc, toy_lists, split, "--max_steps", "4", "--resume", "auto"))
    assert logged_losses(split) == pytest.approx(logged_losses(straight), rel=1e-5)
    expected = torch.load(straight / "run.pth", weights_only=True)
    resumed = torch.load(split / "run.pth", weights_only=True)
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert sorted(p.name for p in (split / "run_checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]


def test_resume_crosses_an_epoch_boundary(toy_voc, toy_lists, tmp_path):
    two_images = tmp_path / "two.txt"
    two_images.write_text("\n".join(toy_lists["train"].read_text().split()[:4]) + "\n")
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("--max_epoches", "2", "--save_every", "0")
    train_cpn.main(run_args(toy_voc, toy_lists, straight, *common, train_list=two_images))
    train_cpn.main(run_args(toy_voc, toy_lists, split, *common, "--max_steps", "1", train_list=two_images))
    train_cpn.main(run_args(toy_voc, toy_lists, split, *common, "--resume", "auto", train_list=two_images))
    assert logged_losses(split) == pytest.approx(logged_losses(straight), rel=1e-5)
    assert len(logged_losses(straight)) == 4


def test_overfitting_two_images_lowers_the_loss(toy_voc, toy_lists, tmp_path):
    two_images = tmp_path / "two.txt"
    two_images.write_text("\n".join(toy_lists["train"].read_text().split()[:2]) + "\n")
    train_cpn.main(
        run_args(toy_voc, toy_lists, tmp_path, "--max_epoches", "30", "--lr", "0.005", train_list=two_images)
    )
    for name, factor in (("loss", 0.8), ("loss_cls", 0.7)):
        losses = logged_losses(tmp_path, name)
        assert len(losses) == 30
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < factor * first, (name, first, last)


def test_two_gloo_processes_under_torchrun(toy_voc, toy_lists, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29531",
            str(REPO / "train_cpn.py"),
            *run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "2", "--device", "cpu"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = logged_losses(tmp_path)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert [p.name for p in (tmp_path / "run_checkpoints").iterdir()] == ["step_0000002.pt"]
    assert "batch 2×2" in (tmp_path / "run.log").read_text()


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_weights_file_fails_with_one_line(toy_voc, toy_lists, tmp_path):
    args = run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "1")
    args[args.index("--weights") + 1] = str(tmp_path / "absent.pth")
    assert "absent.pth" in one_line_error(run_cli(*args))


def test_weights_of_another_network_fail_with_one_line(toy_voc, toy_lists, tmp_path):
    baseline = tmp_path / "baseline.pth"
    torch.save(build_network("resnet38_cls").state_dict(), baseline)
    args = run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "1")
    args[args.index("--weights") + 1] = str(baseline)
    assert "baseline.pth" in one_line_error(run_cli(*args))


def test_voc_root_without_images_fails_with_one_line(toy_lists, tmp_path):
    empty_root = tmp_path / "VOC2012"
    empty_root.mkdir()
    message = one_line_error(run_cli(*run_args(empty_root, toy_lists, tmp_path / "out", "--max_steps", "1")))
    assert "VOC2012" in message
