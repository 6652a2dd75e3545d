"""train_seg.py (SPEC_SEG §1–3): its flags, optimiser and step against a hand composition on a tiny network, the
step under two gloo processes against one process, a whole resumable run on the toy set, and bad inputs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn

import train_seg
from engine.datasets import COCO14
from engine.errors import run_main
from engine.fileio import read_label_png
from engine.manifest import MANIFEST_NAME
from network import resnet38_deeplab
from tests.test_seg import TinySegNet  # conv → BN → classifier, DeepLab's parameter groups
from voc12.data import load_image_list

REPO = Path(__file__).resolve().parents[1]
TINY = ["--crop_size", "32", "--batch_size", "2", "--num_workers", "0", "--weights", "none", "--log_every", "1"]
TINY += ["--width", "8"]  # the runs check the script's plumbing, not the width-1 network (test_width.py checks width 1)


def random_batch(seed: int, batch: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at differing scales (so that group statistics differ) and labels 0–2 with some 255."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator) * torch.linspace(0.5, 3, batch)[:, None, None, None]
    labels = torch.randint(0, 3, (batch, size, size), generator=generator)
    labels[batch // 2 :, : size // 2] = 255  # the second half has fewer valid pixels, as padded crops do
    return images, labels


def optimizer_args(*extra: str):
    return train_seg.parse_args(["--sem_seg_out_dir", "unused", "--weights", "none", *extra])


# ---------------------------------------------------------------- flags and optimiser (SPEC_SEG §2)


def test_defaults_are_the_reference_s():
    args = optimizer_args()
    assert (args.batch_size, args.crop_size, args.num_iters, args.bn_group) == (10, 448, 20000, 5)
    assert (args.lr, args.weight_decay, args.momentum) == (0.001, 5e-4, 0.9)
    assert args.scale_range == (0.5, 1.5)
    assert args.train_list == str(REPO / "voc12" / "train_aug.txt") and args.out_dir == str(REPO / "SEG")
    assert optimizer_args("--dataset", "coco14").train_list == str(REPO / "coco14" / "train.txt")


def test_optimizer_has_the_reference_s_groups():
    with torch.device("meta"):
        model = resnet38_deeplab.Net()
    optimizer = train_seg.build_optimizer(model, optimizer_args())
    groups = optimizer.param_groups
    assert [group["lr"] for group in groups] == pytest.approx([0.001, 0.01, 0.02])
    assert [group["weight_decay"] for group in groups] == [5e-4, 5e-4, 0.0]
    assert {group["momentum"] for group in groups} == {0.9}
    assert [len(group["params"]) for group in groups] == [1 + 2 * 15 + 4 + 4 * 2, 3, 1]
    assert groups[2]["params"][0] is model.cls_conv.bias
    assert optimizer.max_step == 20001  # SPEC_SEG §2: (1 − t/20001)^0.9


def test_poly_lr_after_a_few_steps():
    model = TinySegNet()
    optimizer = train_seg.build_optimizer(model, optimizer_args("--num_iters", "4", "--lr", "0.1"))
    images, labels = random_batch(0)
    lrs = []
    for _ in range(4):
        train_seg.train_step(model, optimizer, images, labels)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1 * (1 - step / 5) ** 0.9 for step in range(4)])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(10 * lrs[-1])


# ---------------------------------------------------------------- the step (SPEC_SEG §2–3)


def test_train_step_is_grouped_bn_then_one_cross_entropy_then_sgd():
    torch.manual_seed(0)
    model = TinySegNet().train()
    images, labels = random_batch(1)
    lr, weight_decay = 0.1, 5e-4

    # By hand: each group of 2 through its own copy (statistics of its 2 images), running statistics kept from
    # the first; the reference's criterion; SGD's first step (momentum buffer = gradient + wd·weight).
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    logits = torch.cat([first(images[:2]), second(images[2:])])
    expected_loss = F.cross_entropy(logits, labels, ignore_index=255)
    grads = torch.autograd.grad(expected_loss, list(first.parameters()) + list(second.parameters()))
    count = len(list(model.parameters()))
    grad_of = {name: a + b for (name, _), a, b in zip(model.named_parameters(), grads[:count], grads[count:])}
    rates = {"conv.weight": (lr, weight_decay), "cls.weight": (10 * lr, weight_decay), "cls.bias": (20 * lr, 0.0)}
    expected = {
        name: param.detach() - rates[name][0] * (grad_of[name] + rates[name][1] * param.detach())
        for name, param in model.named_parameters()
        if name in rates
    }

    optimizer = train_seg.build_optimizer(model, optimizer_args("--lr", str(lr)))
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    losses = train_seg.train_step(model, optimizer, images, labels, bn_group=2)

    assert list(losses) == ["loss"] and not losses["loss"].requires_grad
    torch.testing.assert_close(losses["loss"], expected_loss.detach())
    for name, param in model.named_parameters():
        if name in rates:
            torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-7, msg=name)
        else:
            assert torch.equal(param, start[name]), f"{name}: BN γ/β are in no group (SPEC_SEG §2)"
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model.bn, buffer), getattr(first.bn, buffer)), f"{buffer}: the first group's"
    assert not torch.equal(model.bn.running_mean, second.bn.running_mean)


def ddp_rank(rank: int, folder: Path) -> None:
    """One of two gloo processes: DDP over TinySegNet, one BN group (half the batch) per rank."""
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinySegNet().train())
    optimizer = train_seg.build_optimizer(model.module, optimizer_args("--lr", "0.1"))
    images, labels = random_batch(2)
    for _ in range(2):
        losses = train_seg.train_step(
            model, optimizer, images[2 * rank : 2 * rank + 2], labels[2 * rank : 2 * rank + 2], world_size=2
        )
        dist.all_reduce(losses["loss"])
    torch.save({"state": model.module.state_dict(), "loss": losses["loss"] / 2}, folder / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_two_processes_step_as_one_process_with_bn_groups(tmp_path):
    torch.multiprocessing.start_processes(ddp_rank, (tmp_path,), nprocs=2, start_method="spawn")
    torch.manual_seed(0)
    model = TinySegNet().train()
    optimizer = train_seg.build_optimizer(model, optimizer_args("--lr", "0.1"))
    images, labels = random_batch(2)
    for _ in range(2):
        losses = train_seg.train_step(model, optimizer, images, labels, bn_group=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    torch.testing.assert_close(ranks[0]["loss"], losses["loss"])
    for key, value in model.state_dict().items():
        # rank 0's buffers are broadcast at each forward (broadcast_buffers), as DataParallel's replica 0 kept them
        torch.testing.assert_close(ranks[0]["state"][key], value, msg=key)
        if not key.startswith("bn.running"):
            torch.testing.assert_close(ranks[1]["state"][key], value, msg=key)


# ---------------------------------------------------------------- whole runs on the toy set


@pytest.fixture(scope="module")
def pseudo_labels(toy_voc, tmp_path_factory) -> Path:
    """make_sem_seg_labels.py's format (single-channel 0–20/255) from the toy ground truth, with a manifest."""
    folder = tmp_path_factory.mktemp("sem_seg")
    for path in (toy_voc / "SegmentationClass").glob("*.png"):
        Image.fromarray(read_label_png(path), mode="L").save(folder / path.name)
    manifest = {"weights": "/runs/res50_irn.pth", "weights_sha256": "ab" * 32, "settings": {"beta": 10}}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def run_args(toy_voc, toy_lists, labels: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--train_list",
        str(toy_lists["train"]),
        "--sem_seg_out_dir",
        str(labels),
        "--out_dir",
        str(out_dir),
        "--session_name",
        "run",
        *TINY,
        *extra,
    ]


def logged(out_dir: Path) -> list[dict]:
    return [
        {key: value for key, value in json.loads(line).items() if key != "images_per_s"}
        for line in (out_dir / "run.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow  # 18–50 s on the 2-core dev box: three 1 GB checkpoints
def test_two_steps_write_every_output_and_resume_as_uninterrupted(toy_voc, toy_lists, pseudo_labels, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = (toy_voc, toy_lists, pseudo_labels)
    # bn_group 1: the script's two images normalised alone, as the reference's two GPUs did with five each
    train_seg.main(run_args(*common, straight, "--max_steps", "2", "--bn_group", "1"))
    train_seg.main(run_args(*common, split, "--max_steps", "1", "--bn_group", "1"))
    train_seg.main(run_args(*common, split, "--max_steps", "2", "--bn_group", "1", "--resume", "auto"))

    records = logged(straight)
    assert [(record["step"], record["epoch"]) for record in records] == [(1, 1), (2, 1)]
    assert all(np.isfinite(record["loss"]) for record in records) and records[0]["lr"] == pytest.approx(0.001)
    assert logged(split) == records
    first_line = (straight / "run.log").read_text().splitlines()[0]
    # SPEC_SEG §2: max_epoch = 20000·2//48 + 1 = 834 epochs of 24 steps, cut at step 20000
    assert first_line.startswith(f"{toy_lists['train']}: 48 images, 24 steps/epoch × 834 epochs = 20016 steps, ")
    assert "stopping at 20000, batch 2×1" in first_line and "BatchNorm statistics per 1 images" in first_line
    assert f"pseudo labels {pseudo_labels} (IRNet weights /runs/res50_irn.pth, sha256 abababababab…)" in first_line
    assert "78 parameters in no SGD group, never updated (SPEC_SEG §2): backbone.b2.bn_branch2a.weight" in first_line
    record = json.loads((straight / "run.json").read_text())
    assert record["args"]["bn_group"] == 1
    assert record["inputs"]["pseudo_labels"]["manifest"]["weights_sha256"] == "ab" * 32
    assert len(record["inputs"]["parameters_left_out"]) == 78

    # The unwrapped state dict with the reference's keys (BN buffers included), the same after a resume.
    expected = torch.load(straight / "run.pth", weights_only=True)
    with torch.device("meta"):
        assert list(expected) == list(resnet38_deeplab.Net().state_dict())
    resumed = torch.load(split / "run.pth", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    checkpoint = torch.load(split / "run_checkpoints" / "step_0000002.pt", weights_only=True)
    assert torch.equal(checkpoint["model"]["cls_conv.bias"], expected["cls_conv.bias"])
    assert expected["backbone.b2.bn_branch2a.running_mean"].abs().sum() > 0, "BN statistics follow the batches"


# ---------------------------------------------------------------- bad inputs: one line, exit status 1


def error_line(args: list[str]) -> str:
    """run_main's one line (exit status 1) for train_seg.main(args)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_seg.main(args))
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def label_folder(toy_voc, folder: Path, change) -> Path:
    """The toy ground truth as pseudo labels, each passed through `change` (uint8 array → uint8 array)."""
    folder.mkdir()
    for path in (toy_voc / "SegmentationClass").glob("*.png"):
        Image.fromarray(change(read_label_png(path)), mode="L").save(folder / path.name)
    return folder


@pytest.mark.slow  # the script in a new process
def test_a_pseudo_label_folder_missing_images_fails_with_one_line(toy_voc, toy_lists, tmp_path):
    partial = label_folder(toy_voc, tmp_path / "partial", lambda label: label)
    (partial / f"{load_image_list(toy_lists['train'])[0]}.png").unlink()
    result = subprocess.run(
        [sys.executable, str(REPO / "train_seg.py"), *run_args(toy_voc, toy_lists, partial, tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: pseudo label toy_") and "make_sem_seg_labels.py" in result.stderr


def test_bad_labels_fail_with_one_line(toy_voc, toy_lists, tmp_path):
    out_of_range = label_folder(toy_voc, tmp_path / "range", lambda label: np.where(label == 0, 21, label))
    message = error_line(run_args(toy_voc, toy_lists, out_of_range, tmp_path / "out", "--max_steps", "1"))
    assert "holds values outside 0–20/255 (21)" in message
    resized = label_folder(toy_voc, tmp_path / "size", lambda label: np.ascontiguousarray(label[:-1]))
    message = error_line(run_args(toy_voc, toy_lists, resized, tmp_path / "out", "--max_steps", "1"))
    assert "its image" in message and str(resized) in message


def test_weights_of_another_stage_or_data_set_fail_with_one_line(toy_voc, toy_lists, pseudo_labels, tmp_path):
    weight = torch.zeros(())
    files = {
        "cpn.pth": {"conv1a.weight": weight, "fc8.weight": weight},
        "irn.pth": {"stage2.0.0.conv1.weight": weight},
    }
    with torch.device("meta"):
        coco_shapes = {key: value.shape for key, value in resnet38_deeplab.Net(COCO14.num_classes).state_dict().items()}
    files["coco.pth"] = {key: weight.expand(shape) for key, shape in coco_shapes.items()}  # shapes without storage
    for name, state in files.items():
        torch.save(state, tmp_path / name)

    def weights_error(name: str) -> str:
        weights = ("--weights", str(tmp_path / name), "--width", "1")  # the files are width 1
        args = run_args(toy_voc, toy_lists, pseudo_labels, tmp_path / "out", *weights)
        return error_line(args)

    assert "holds weights of a CAM network" in weights_error("cpn.pth")
    assert "holds ResNet-50 weights" in weights_error("irn.pth")
    message = weights_error("coco.pth")
    assert f"({COCO14.num_classes}, 512, 1, 1)" in message and "pass --dataset coco14" in message
    assert not (tmp_path / "out" / "run_checkpoints").exists()
