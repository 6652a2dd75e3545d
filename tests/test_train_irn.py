"""train_irn.py (SPEC-IRN §1–7): its step, and whole runs on the toy set at a tiny crop (CPU)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_irn
from engine.datasets import VOC12
from engine.runtime import ProcessGroup
from network.resnet50_irn import Net, irn_state_dict
from network.weights import load_weights
from tool.irn import TRAIN_RADIUS, PathIndex, affinity_labels, irn_loss
from voc12.data import IrnCalibrationDataset, as_source, load_image_list

REPO = Path(__file__).resolve().parents[1]
CROP = 96  # the smallest IRN crops are 76 px: the radius-10 path index needs a 19-cell grid
WIDTH = 8  # the runs check the script's plumbing, not the width-1 network (test_width.py checks width 1)
TINY = ["--irn_crop_size", str(CROP), "--irn_batch_size", "2", "--num_workers", "0", "--weights", "none"]
TINY += ["--width", str(WIDTH)]
LOSS_NAMES = ("loss", "pos_aff", "neg_aff", "dp_fg", "dp_bg")


@pytest.fixture(scope="module")
def ir_labels(toy_label_pngs) -> Path:
    """Confident labels in cam_to_ir_label.py's format: the toy ground truth."""
    return toy_label_pngs


@pytest.fixture(scope="module")
def infer_list(toy_lists, tmp_path_factory) -> Path:
    """Five images: two batches of two for the MeanShift calibration, the fifth dropped (drop_last)."""
    path = tmp_path_factory.mktemp("lists") / "infer.txt"
    path.write_text("\n".join(load_image_list(toy_lists["val"])[:5]) + "\n")
    return path


def run_args(toy_voc, toy_lists, ir_labels, infer_list, out_dir, *extra) -> list[str]:
    return [
        "--voc12_root",
        str(toy_voc),
        "--train_list",
        str(toy_lists["train"]),
        "--infer_list",
        str(infer_list),
        "--ir_label_out_dir",
        str(ir_labels),
        "--irn_weights_name",
        str(out_dir / "res50_irn.pth"),
        "--out_dir",
        str(out_dir),
        "--session_name",
        "run",
        "--log_every",
        "1",
        *TINY,
        *extra,
    ]


def logged(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "run.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "images_per_s"} for record in records]


def saved(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "res50_irn.pth", weights_only=True)


def random_batch(seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with random quarter labels (0, a class, 255), as IrnTrainDataset batches them."""
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, 3, CROP, CROP, generator=generator)
    quarter = torch.tensor([0, 3, 255], dtype=torch.uint8)[
        torch.randint(0, 3, (batch, CROP // 4, CROP // 4), generator=generator)
    ]
    return img, quarter


def test_train_step_is_one_sgd_step_on_irn_loss():
    torch.manual_seed(0)
    model, lr = Net(width=WIDTH), 0.1
    img, quarter = random_batch(2)
    path_index = PathIndex(TRAIN_RADIUS, (CROP // 4, CROP // 4))
    heads = [parameter for parameter in model.parameters() if parameter.requires_grad]
    before = [parameter.detach().clone() for parameter in model.parameters()]
    backbone_before = {key: value.clone() for key, value in model.resnet50.state_dict().items()}
    edge, disp = model(img)
    assert edge.shape == (2, 1, CROP // 4, CROP // 4) and disp.shape == (2, 2, CROP // 4, CROP // 4)
    # the labels as the loader used to ship them: per sample, as bytes, stacked, made float by the step
    per_sample = [affinity_labels(label, path_index, VOC12.num_classes) for label in quarter]
    shipped = {key: torch.stack([one[key].to(torch.uint8) for one in per_sample]).float() for key in per_sample[0]}
    expected = irn_loss(edge, disp, shipped["bg_pos"], shipped["fg_pos"], shipped["neg"], path_index)
    gradients = dict(zip(map(id, heads), torch.autograd.grad(expected["loss"], heads)))

    optimizer = torch.optim.SGD(heads, lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    options = train_irn.StepOptions(torch.device("cpu"), path_index, VOC12.num_classes)
    losses = train_irn.train_step(model, optimizer, scaler, {"img": img, "label": quarter}, options)

    assert tuple(losses) == LOSS_NAMES and not any(value.requires_grad for value in losses.values())
    for name, value in expected.items():
        assert torch.equal(losses[name], value.detach()), name  # the step's own labels: bit for bit
    for parameter, start in zip(model.parameters(), before):
        if id(parameter) in gradients:
            assert torch.equal(parameter.grad, gradients[id(parameter)])
            torch.testing.assert_close(parameter.detach(), start - lr * gradients[id(parameter)], rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(parameter, start), "the backbone is frozen"
    for key, value in model.resnet50.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, backbone_before[key]), f"the backbone is frozen: {key}"


@pytest.mark.parametrize("train_backbone", [False, True])
def test_train_backbone_flag_trains_the_backbone_in_its_own_group(train_backbone, tmp_path):
    flags = ["--train_backbone"] if train_backbone else []
    args = train_irn.parse_args(
        ["--ir_label_out_dir", "x", "--irn_weights_name", "w.pth", "--weights", "none", "--width", "8", *flags]
    )
    assert args.train_backbone is train_backbone  # in the run record with the other arguments
    torch.manual_seed(0)
    model = train_irn.build_model(args, ProcessGroup())
    groups = train_irn.irn_param_groups(model, 0.1, 1e-4)
    assert [(group["lr"], group["weight_decay"]) for group in groups] == [(0.1, 1e-4), (1.0, 1e-4)] + [
        (0.1, 1e-4)
    ] * train_backbone
    backbone_before = {key: value.clone() for key, value in model.resnet50.state_dict().items()}
    path_index = PathIndex(TRAIN_RADIUS, (CROP // 4, CROP // 4))
    img, quarter = random_batch(2)
    optimizer, scaler = torch.optim.SGD(groups, lr=0.1), torch.amp.GradScaler("cpu", enabled=False)
    options = train_irn.StepOptions(torch.device("cpu"), path_index, VOC12.num_classes)
    train_irn.train_step(model, optimizer, scaler, {"img": img, "label": quarter}, options)
    after = model.resnet50.state_dict()
    changed = {key for key, value in backbone_before.items() if not torch.equal(value, after[key])}
    learned = {key for key in backbone_before if key.endswith(("weight", "bias", "running_mean", "running_var"))}
    # frozen: nothing changes; trained: every weight and every BatchNorm's running statistics
    assert changed >= learned if train_backbone else changed == set()


def test_few_steps_write_every_output(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    untrained, trained = tmp_path / "untrained", tmp_path / "trained"
    train_irn.main(run_args(toy_voc, toy_lists, ir_labels, infer_list, untrained, "--max_steps", "0"))
    train_irn.main(run_args(toy_voc, toy_lists, ir_labels, infer_list, trained, "--max_steps", "2"))
    records = logged(trained)
    assert [(record["step"], record["epoch"]) for record in records] == [(1, 1), (2, 1)]
    assert set(records[0]) == {*LOSS_NAMES, "step", "epoch", "lr", "images_per_s"}
    assert all(torch.isfinite(torch.tensor([record[name] for name in LOSS_NAMES])).all() for record in records)
    assert records[0]["lr"] == pytest.approx(0.1) and records[1]["lr"] < records[0]["lr"]  # poly decay
    first_line = (trained / "run.log").read_text().splitlines()[0]
    assert first_line.startswith(f"{toy_lists['train']}: 48 images, 24 steps/epoch × 3 epochs = 72 steps, batch 2×1")
    assert json.loads((trained / "run.json").read_text())["args"]["irn_crop_size"] == CROP

    # SPEC-IRN §7's optimiser: edge head 0.1, displacement head 1.0, weight decay 1e-4, momentum = weight decay
    checkpoint = torch.load(trained / "run_checkpoints" / "step_0000002.pt", weights_only=True)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [group["initial_lr"] for group in groups] == pytest.approx([0.1, 1.0])
    assert [(group["weight_decay"], group["momentum"]) for group in groups] == [(1e-4, 1e-4)] * 2
    assert checkpoint["optimizer"]["max_step"] == 72

    # IRN's file: IRN's key names, loads into our Net; only the heads moved
    before, after = saved(untrained), saved(trained)
    assert set(after) == set(irn_state_dict(Net(width=WIDTH)))
    assert {"fc_edge6.weight", "fc_dp7.3.weight", "mean_shift.running_mean", "stage2.0.0.conv1.weight"} <= set(after)
    report = load_weights(Net(width=WIDTH), trained / "res50_irn.pth")
    assert not report.from_scratch and not report.unexpected
    changed = {key for key in after if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith(("fc_", "edge_layers.", "dp_layers.", "mean_shift")) for key in changed)
    assert "fc_edge1.0.weight" in changed and "fc_dp7.3.weight" in changed


def expected_mean_shift(toy_voc, infer_list: Path, out_dir: Path) -> torch.Tensor:
    """IRN's calibration with the trained weights in `out_dir`: the mean of the two batches' means."""
    model = Net(width=WIDTH)
    load_weights(model, out_dir / "res50_irn.pth")
    model.displacement_branch.mean_shift.running_mean.zero_()
    model.eval()
    dataset = IrnCalibrationDataset(toy_voc, load_image_list(infer_list), CROP)
    with torch.no_grad():
        batch_means = [
            model(torch.stack([dataset[index]["img"] for index in batch]))[1].mean(dim=(0, 2, 3))
            for batch in ((0, 1), (2, 3))  # the fifth image is dropped, as IRN's drop_last does
        ]
    return (batch_means[0] + batch_means[1]) / 2


def test_mean_shift_is_the_mean_of_the_batch_means(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    train_irn.main(run_args(toy_voc, toy_lists, ir_labels, infer_list, tmp_path, "--max_steps", "1"))
    weights = saved(tmp_path)
    expected = expected_mean_shift(toy_voc, infer_list, tmp_path)
    torch.testing.assert_close(weights["mean_shift.running_mean"], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(weights["fc_dp7.4.running_mean"], weights["mean_shift.running_mean"])
    assert f"displacement mean {expected.tolist()}"[:30] in (tmp_path / "run.log").read_text()


def test_an_infer_list_shorter_than_a_batch_is_one_batch(toy_voc, toy_lists, ir_labels, tmp_path):
    one_image = tmp_path / "one.txt"
    one_image.write_text(load_image_list(toy_lists["val"])[0] + "\n")
    train_irn.main(run_args(toy_voc, toy_lists, ir_labels, one_image, tmp_path, "--max_steps", "0"))
    model = Net(width=WIDTH)
    load_weights(model, tmp_path / "res50_irn.pth")
    model.displacement_branch.mean_shift.running_mean.zero_()
    with torch.no_grad():
        expected = model.eval()(IrnCalibrationDataset(toy_voc, [one_image.read_text().strip()], CROP)[0]["img"][None])
    torch.testing.assert_close(saved(tmp_path)["mean_shift.running_mean"], expected[1].mean(dim=(0, 2, 3)))
    assert "fewer than one batch of 2: the displacement mean uses them all" in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize(
    ("num_images", "batches"),
    [(7, [[0, 1], [2, 3], [4, 5]]), (5, [[0, 1], [2, 3]]), (1, [[0]])],  # drop_last; a list under one batch
)
def test_calibration_shared_by_two_processes_is_the_one_process_mean(toy_voc, toy_lists, num_images, batches, tmp_path):
    list_path = tmp_path / "infer.txt"
    list_path.write_text("\n".join(load_image_list(toy_lists["val"])[:num_images]) + "\n")
    args = argparse.Namespace(infer_list=str(list_path), irn_crop_size=CROP, irn_batch_size=2)
    torch.manual_seed(0)
    model = Net(width=WIDTH)
    options = train_irn.StepOptions(torch.device("cpu"), PathIndex(TRAIN_RADIUS, (CROP // 4,) * 2), VOC12.num_classes)
    alone, num_batches = train_irn.calibration_loader(args, as_source(toy_voc), 0, ProcessGroup())
    assert list(alone.batch_sampler) == batches and num_batches == len(batches)
    expected = train_irn.mean_displacement(model, alone, num_batches, options, ProcessGroup())
    model.eval()
    with torch.no_grad():  # IRN's formula: the mean of the batch means
        images = [torch.stack([alone.dataset[index]["img"] for index in batch]) for batch in batches]
        formula = torch.stack([model(batch)[1].mean(dim=(0, 2, 3)) for batch in images])
    torch.testing.assert_close(expected, formula.mean(dim=0), rtol=1e-5, atol=1e-7)

    def share(rank: int, all_reduce) -> torch.Tensor:
        """Rank `rank` of 2 with `all_reduce` in place of the collective."""
        group = ProcessGroup(rank=rank, world_size=2, local_rank=rank)
        loader, count = train_irn.calibration_loader(args, as_source(toy_voc), 0, group)
        assert list(loader.batch_sampler) == batches[rank::2] and count == num_batches
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_irn.dist, "all_reduce", all_reduce)
            return train_irn.mean_displacement(model, loader, count, options, group)

    tables = []  # rank 1's table of batch means, as the collective would receive it
    share(1, lambda table: tables.append(table.clone()))
    # rank 0's all_reduce adds rank 1's table: the result is the one-process mean, bit for bit
    assert torch.equal(share(0, lambda table: table.add_(tables[0])), expected)


@pytest.mark.slow  # three runs of the script
def test_resumed_run_matches_uninterrupted_run(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = (toy_voc, toy_lists, ir_labels, infer_list)
    train_irn.main(run_args(*common, straight, "--max_steps", "4", "--save_every", "0"))
    train_irn.main(run_args(*common, split, "--max_steps", "2"))
    train_irn.main(run_args(*common, split, "--max_steps", "4", "--resume", "auto"))
    assert without_timing(logged(split)) == without_timing(logged(straight))
    expected, resumed = saved(straight), saved(split)
    assert set(resumed) == set(expected)
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    assert sorted(p.name for p in (split / "run_checkpoints").iterdir()) == ["step_0000002.pt", "step_0000004.pt"]


def test_momentum_flag_corrects_the_quirk(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    extra = ("--max_steps", "1", "--momentum", "0.9")
    train_irn.main(run_args(toy_voc, toy_lists, ir_labels, infer_list, tmp_path, *extra))
    checkpoint = torch.load(tmp_path / "run_checkpoints" / "step_0000001.pt", weights_only=True)
    assert [group["momentum"] for group in checkpoint["optimizer"]["param_groups"]] == [0.9, 0.9]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train_irn.py"), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow  # the script in a new process, three times
def test_bad_inputs_fail_with_one_line(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    common = (toy_voc, toy_lists)
    no_labels = run_args(*common, tmp_path / "absent", infer_list, tmp_path / "out", "--max_steps", "1")
    message = one_line_error(run_cli(*no_labels))
    assert str(tmp_path / "absent") in message and "cam_to_ir_label.py" in message
    small_crop = run_args(*common, ir_labels, infer_list, tmp_path / "out", "--irn_crop_size", "64")
    assert "--irn_crop_size 64" in one_line_error(run_cli(*small_crop))
    missing_weights = run_args(*common, ir_labels, infer_list, tmp_path / "out", "--weights", str(tmp_path / "w.pth"))
    assert "w.pth" in one_line_error(run_cli(*missing_weights))


@pytest.mark.slow  # two processes
def test_two_gloo_processes_under_torchrun(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29541",
            str(REPO / "train_irn.py"),
            *run_args(toy_voc, toy_lists, ir_labels, infer_list, tmp_path, "--max_steps", "2", "--device", "cpu"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [record["step"] for record in logged(tmp_path)] == [1, 2]
    assert "24 steps/epoch × 3 epochs = 72 steps, batch 1×2" in (tmp_path / "run.log").read_text()
    weights = saved(tmp_path)
    assert set(weights) == set(irn_state_dict(Net(width=WIDTH)))
    # each process measured one of the two batches: the mean is still the mean of both
    expected = expected_mean_shift(toy_voc, infer_list, tmp_path)
    torch.testing.assert_close(weights["mean_shift.running_mean"], expected, rtol=1e-5, atol=1e-6)


def test_torchvision_layout_weights_start_the_backbone(toy_voc, toy_lists, ir_labels, infer_list, tmp_path):
    import torchvision

    torch.manual_seed(1)
    imagenet = torchvision.models.resnet50(weights=None).state_dict()  # the layout of resnet50-19c8e357.pth
    torch.save(imagenet, tmp_path / "resnet50.pth")
    args = run_args(toy_voc, toy_lists, ir_labels, infer_list, tmp_path, "--max_steps", "1", "--width", "1")
    args[args.index("--weights") + 1] = str(tmp_path / "resnet50.pth")  # ImageNet's file is width 1
    train_irn.main(args)
    weights = saved(tmp_path)
    for key, value in imagenet.items():
        if not key.startswith("fc."):
            assert torch.equal(weights[f"resnet50.{key}"], value), key


@pytest.mark.slow  # the script in a new process
def test_a_bad_infer_list_stops_before_training(toy_voc, toy_lists, ir_labels, tmp_path):
    ghost = tmp_path / "ghost.txt"
    ghost.write_text("ghost_image\n")
    message = one_line_error(run_cli(*run_args(toy_voc, toy_lists, ir_labels, ghost, tmp_path, "--max_steps", "1")))
    assert "ghost_image.jpg" in message
    assert not (tmp_path / "run_checkpoints").exists()
