"""train_cpn.py end to end on the toy set at a tiny crop (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_cpn
from network import build_network
from tests.tiny import TINY_TRAIN_ARGS
from tool.losses import cpn_loss

REPO = Path(__file__).resolve().parents[1]
WIDTH = 8  # the runs check the script's plumbing, not the width-1 network (test_width.py checks width 1)


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
        *TINY_TRAIN_ARGS,
        *("--width", str(WIDTH)),
        *extra,
    ]


def logged(out_dir: Path) -> list[dict]:
    """The run's JSON lines, one per logged step."""
    return [json.loads(line) for line in (out_dir / "run.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    """Step, epoch, losses and lr: what a resumed run must reproduce exactly."""
    return [{key: value for key, value in record.items() if key != "images_per_s"} for record in records]


def logged_losses(out_dir: Path, name: str = "loss") -> list[float]:
    return [record[name] for record in logged(out_dir)]


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
    [  # one run of the script each: the first three are slow; the last uses the default superpixel patches
        pytest.param(("--patch_strategy", "grid"), marks=pytest.mark.slow),
        pytest.param(("--no_tcp",), marks=pytest.mark.slow),
        pytest.param(("--no_cpcr",), marks=pytest.mark.slow),
        ("--ohem", "0.5", "--three_pass"),
    ],
)
def test_few_steps_write_every_output(toy_voc, toy_lists, tmp_path, extra):
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "2", *extra))
    records = logged(tmp_path)
    assert [(record["step"], record["epoch"]) for record in records] == [(1, 1), (2, 1)]
    assert set(records[0]) == {"step", "epoch", "loss", "loss_cls", "loss_tcp", "loss_cpcr", "lr", "images_per_s"}
    assert all(torch.isfinite(torch.tensor(logged_losses(tmp_path))))
    assert records[0]["lr"] == pytest.approx(0.01) and records[1]["lr"] < records[0]["lr"]  # poly decay
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["args"]["max_steps"] == 2 and record["versions"]["torch"] == torch.__version__
    state = torch.load(tmp_path / "run.pth", weights_only=True)
    assert set(state) == set(build_network("resnet38_CPN", width=WIDTH).state_dict())
    assert [p.name for p in (tmp_path / "run_checkpoints").iterdir()] == ["step_0000002.pt"]
    if "--no_tcp" in extra or "--no_cpcr" in extra:
        dropped, kept = ("loss_tcp", "loss_cpcr") if "--no_tcp" in extra else ("loss_cpcr", "loss_tcp")
        assert logged_losses(tmp_path, dropped) == [0.0, 0.0] and all(logged_losses(tmp_path, kept))
    assert (tmp_path / "run.log").read_text().splitlines()[-1].startswith("step 2/2 epoch 1 loss ")


@pytest.mark.slow  # a run of the script
def test_freeze_backbone_trains_the_head_alone(toy_voc, toy_lists, tmp_path):
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path / "untrained", "--max_steps", "0"))
    train_cpn.main(run_args(toy_voc, toy_lists, tmp_path / "frozen", "--max_steps", "2", "--freeze_backbone"))
    before = torch.load(tmp_path / "untrained" / "run.pth", weights_only=True)
    after = torch.load(tmp_path / "frozen" / "run.pth", weights_only=True)
    head = build_network("resnet38_CPN", width=WIDTH).new_layers
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and {key.split(".")[0] for key in changed} <= set(head)
    assert "fc8.weight" in changed
    first_line = (tmp_path / "frozen" / "run.log").read_text().splitlines()[0]
    assert first_line.startswith(f"{toy_lists['train']}: 48 images, 24 steps/epoch")
    assert first_line.endswith("backbone frozen")


@pytest.mark.slow  # three whole runs of the script
def test_resumed_run_crosses_an_epoch_boundary_as_an_uninterrupted_run(toy_voc, toy_lists, tmp_path):
    """CPN's own state (poly schedule, patch RNG) survives a resume at the end of an epoch (2 steps an
    epoch); a resume within an epoch is tested on a toy model in test_training.py."""
    four_images = tmp_path / "four.txt"
    four_images.write_text("\n".join(toy_lists["train"].read_text().split()[:4]) + "\n")
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ("--max_epoches", "2", "--save_every", "0")
    train_cpn.main(run_args(toy_voc, toy_lists, straight, *common, train_list=four_images))
    train_cpn.main(run_args(toy_voc, toy_lists, split, *common, "--max_steps", "2", train_list=four_images))
    train_cpn.main(run_args(toy_voc, toy_lists, split, *common, "--resume", "auto", train_list=four_images))
    assert without_timing(logged(split)) == without_timing(logged(straight))
    assert [record["epoch"] for record in logged(straight)] == [1, 1, 2, 2]
    expected = torch.load(straight / "run.pth", weights_only=True)
    resumed = torch.load(split / "run.pth", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    assert sorted(p.name for p in (split / "run_checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]


@pytest.mark.slow  # 15 steps of the whole network
def test_overfitting_two_images_lowers_the_loss(toy_voc, toy_lists, tmp_path):
    two_images = tmp_path / "two.txt"
    two_images.write_text("\n".join(toy_lists["train"].read_text().split()[:2]) + "\n")
    train_cpn.main(
        run_args(toy_voc, toy_lists, tmp_path, "--max_epoches", "15", "--lr", "0.005", train_list=two_images)
    )
    for name, factor in (("loss", 0.8), ("loss_cls", 0.7)):
        losses = logged_losses(tmp_path, name)
        assert len(losses) == 15
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < factor * first, (name, first, last)


@pytest.mark.slow  # two processes
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


def views_of(seed: int, size: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(2, 3, size, size, generator=generator)
    mask = (torch.rand(2, 1, size, size, generator=generator) > 0.5).float()
    return [img, img * mask, img * (1 - mask)]


def test_batched_views_equal_separate_forwards_for_the_real_network():
    torch.manual_seed(0)
    net = build_network("resnet38_CPN", width=WIDTH).eval()  # every layer of the network, narrower
    views = views_of(3)
    with torch.no_grad():
        batched = train_cpn.forward_views(net, views, three_pass=False)
        separate = train_cpn.forward_views(net, views, three_pass=True)
        assert all(torch.equal(a, b) for pair, view in zip(separate, views) for a, b in zip(pair, net(view)))
    for batched_pair, separate_pair in zip(batched, separate):
        for batched_map, separate_map in zip(batched_pair, separate_pair):
            assert batched_map.shape == (2, 21, 32, 32)
            torch.testing.assert_close(batched_map, separate_map, rtol=1e-4, atol=1e-6)


class TinyCPN(torch.nn.Module):
    """Two convolutions giving (cam, cam_rv), 21 channels each; no dropout, so the three views
    give the same outputs in one forward or three."""

    def __init__(self):
        super().__init__()
        self.conv_cam = torch.nn.Conv2d(3, 21, 3, padding=1)
        self.conv_rv = torch.nn.Conv2d(21, 21, 1)

    def forward(self, x):
        cam = self.conv_cam(x)
        return cam, cam + self.conv_rv(torch.relu(cam))


def tiny_batch() -> dict:
    img, img_kept, img_hidden = views_of(5, size=8)
    kept_fraction = (img_kept != 0).float().mean(dim=(1, 2, 3))
    label = torch.zeros(2, 20)
    label[0, [0, 4]] = label[1, 2] = 1
    return dict(
        img=img,
        img_kept=img_kept,
        img_hidden=img_hidden,
        label=label,
        kept_fraction=kept_fraction,
        hidden_fraction=1 - kept_fraction,
    )


@pytest.mark.parametrize("three_pass", [False, True])
def test_train_step_is_one_sgd_step_on_cpn_loss(three_pass):
    torch.manual_seed(0)
    model, batch, lr = TinyCPN(), tiny_batch(), 0.1
    before = [parameter.detach().clone() for parameter in model.parameters()]
    outputs = [model(batch[key]) for key in train_cpn.VIEWS]
    expected = cpn_loss(outputs, batch["label"], batch["kept_fraction"], batch["hidden_fraction"], ohem_ratio=0.5)
    gradients = torch.autograd.grad(expected["loss"], list(model.parameters()))

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    options = train_cpn.StepOptions(torch.device("cpu"), three_pass=three_pass, ohem_ratio=0.5)
    losses = train_cpn.train_step(model, optimizer, scaler, batch, options)

    assert set(losses) == set(expected) and not any(value.requires_grad for value in losses.values())
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value.detach(), rtol=1e-6, atol=0)
    for parameter, start, gradient in zip(model.parameters(), before, gradients):
        torch.testing.assert_close(parameter.detach(), start - lr * gradient, rtol=1e-5, atol=1e-7)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow  # the script in a new process
def test_missing_weights_file_fails_with_one_line(toy_voc, toy_lists, tmp_path):
    args = run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "1")
    args[args.index("--weights") + 1] = str(tmp_path / "absent.pth")
    assert "absent.pth" in one_line_error(run_cli(*args))


@pytest.mark.slow  # the script in a new process
def test_weights_of_another_network_fail_with_one_line(toy_voc, toy_lists, tmp_path):
    baseline = tmp_path / "baseline.pth"
    torch.save(build_network("resnet38_cls").state_dict(), baseline)
    args = run_args(toy_voc, toy_lists, tmp_path, "--max_steps", "1")
    args[args.index("--weights") + 1] = str(baseline)
    assert "baseline.pth" in one_line_error(run_cli(*args))


@pytest.mark.slow  # the script in a new process
def test_voc_root_without_images_fails_with_one_line(toy_lists, tmp_path):
    empty_root = tmp_path / "VOC2012"
    empty_root.mkdir()
    message = one_line_error(run_cli(*run_args(empty_root, toy_lists, tmp_path / "out", "--max_steps", "1")))
    assert "VOC2012" in message
