"""Train IRNet (SPEC-IRN §1–7): confident labels → affinity labels → the edge and displacement heads on a
frozen ResNet-50 → MeanShift calibration → IRN's weights file.

One GPU:   python train_irn.py --voc12_root VOC2012 --ir_label_out_dir ir_label --weights resnet50-19c8e357.pth \
               --irn_weights_name sess/res50_irn.pth
COCO 2014: python train_irn.py --dataset coco14 --data_root COCO ... (the same flags)
Several:   torchrun --nproc_per_node=N train_irn.py ... (--irn_batch_size stays the batch of one step, split
           over the processes)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, run_main
from engine.runtime import ProcessGroup, autocast
from engine.training import (
    RunLog,
    Trainer,
    add_training_arguments,
    sampler_over_processes,
    training_loader,
)
from network import add_width_argument, build_network
from network.resnet50_irn import LR_MULTIPLIERS
from network.weights import load_weights, save_irn_weights
from tool.irn import TRAIN_RADIUS, PathIndex, affinity_labels, irn_loss
from tool.optim import PolyOptimizer
from voc12.data import IRN_CROP_SIZE, IrnCalibrationDataset, IrnTrainDataset, irn_label_grid, load_image_list

TORCHVISION_WEIGHTS = "IMAGENET1K_V1"  # SPEC-IRN §1: resnet50-19c8e357.pth; IMAGENET1K_V2 are other weights


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # IRN's flags, with its defaults (SPEC-IRN §7).
    add_dataset_arguments(parser)  # --dataset, --data_root and IRN's --voc12_root
    parser.add_argument(
        "--infer_list",
        help="images of the MeanShift calibration after training (SPEC-IRN §7); " + list_default_help("infer"),
    )
    parser.add_argument(
        "--ir_label_out_dir", required=True, help="the confident-label PNGs of cam_to_ir_label.py (SPEC-IRN §8)"
    )
    parser.add_argument("--irn_weights_name", required=True, help="the trained weights, a file IRN loads")
    parser.add_argument("--irn_crop_size", type=int, default=IRN_CROP_SIZE)
    parser.add_argument("--irn_batch_size", type=int, default=32, help="images per step, over all processes")
    parser.add_argument("--irn_num_epoches", type=int, default=3)
    parser.add_argument("--irn_learning_rate", type=float, default=0.1)
    parser.add_argument("--irn_weight_decay", type=float, default=1e-4)
    add_width_argument(parser)
    parser.add_argument(
        "--train_backbone",
        action="store_true",
        help="train the ResNet-50 too (its BatchNorms on batch statistics, lr multiplier 1, the weight decay); "
        "not IRN's recipe, whose backbone is frozen (SPEC-IRN §1, §7): for a random start (the CPU demo)",
    )
    # IRN's --train_list, --weights, --num_workers, --session_name; our --momentum, --seed, --resume, ...
    add_training_arguments(
        parser,
        weights_help="a torchvision-layout ResNet-50 state dict (IRN's resnet50-19c8e357.pth or torchvision's "
        f"{TORCHVISION_WEIGHTS} file), 'torchvision' (torchvision's own download) or 'none' (random, for tests)",
        momentum=None,
        momentum_help="SGD momentum; by default the weight decay, IRN's quirk (SPEC-IRN §7); 0.9 is the usual value",
        save_every=200,
        out_dir=here / "IRN",
        session_name="res50_irn",
    )
    return fill_list_defaults(parser.parse_args(argv), here, train_list="train", infer_list="infer")


def momentum_of(args) -> float:
    """SPEC-IRN §7 quirk: IRN's PolyOptimizer hands its weight decay to SGD as the momentum (1e-4)."""
    return args.irn_weight_decay if args.momentum is None else args.momentum


def load_data(args, source: DataSource, group: ProcessGroup, device: torch.device) -> DataLoader:
    """SPEC-IRN §7 augmentation and quarter labels, in a resumable order. Each step holds the same
    images whatever the process count (the sampler shards one global batch)."""
    dataset = IrnTrainDataset(
        source,
        load_image_list(args.train_list),
        args.ir_label_out_dir,
        crop_size=args.irn_crop_size,
        seed=args.seed,
    )
    sampler = sampler_over_processes(
        len(dataset), args.irn_batch_size, "--irn_batch_size", args.seed, group, args.train_list
    )
    return training_loader(dataset, sampler, args.num_workers, device)


def build_model(args, group: ProcessGroup) -> nn.Module:
    """SPEC-IRN §1–2's IRNet, its backbone from --weights (frozen unless --train_backbone); the heads start
    from PyTorch's initialisation."""
    model = build_network("network.resnet50_irn", width=args.width, train_backbone=args.train_backbone)
    if args.weights.lower() == "torchvision":
        if args.width != 1:
            raise UserError(
                f"--weights torchvision is a width-1 ResNet-50; start --width {args.width} from --weights none"
            )
        # Needs a machine that is online: torchvision downloads its V1 file (resnet50-0676ba61.pth today).
        import torchvision

        try:
            state = torchvision.models.resnet50(weights=TORCHVISION_WEIGHTS).state_dict()
        except OSError as error:  # offline: URLError is an OSError
            raise UserError(
                f"cannot download torchvision's ResNet-50 {TORCHVISION_WEIGHTS} weights ({error}); "
                "pass the file itself with --weights PATH (resnet50-19c8e357.pth)"
            ) from None
        model.resnet50.load_state_dict({key: value for key, value in state.items() if not key.startswith("fc.")})
    elif args.weights.lower() != "none":
        report = load_weights(model, args.weights)
        if group.is_main:
            print(report.summary())
    model.train()
    return model


def irn_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """SPEC-IRN §7: edge head at lr, displacement head at 10·lr (`LR_MULTIPLIERS`), both with the weight decay;
    a backbone that trains (--train_backbone, not in IRN) at lr with the weight decay."""
    return [
        {"params": params, "lr": LR_MULTIPLIERS[name] * lr, "weight_decay": weight_decay}
        for name, params in model.trainable_parameter_groups().items()
    ]


@dataclass(frozen=True)
class StepOptions:
    """How `train_step` runs: device and precision (decided once per script, STYLE 7), the training
    path index (SPEC-IRN §3: radius 10 on the crop/4 grid), already on the device, and the data set's class
    count (SPEC-IRN §5: a label below it is valid)."""

    device: torch.device
    path_index: PathIndex
    num_classes: int
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, options: StepOptions
) -> dict[str, Tensor]:
    """One SPEC-IRN §5–7 step: the affinity labels from the batch's quarter labels (N×D×M, made here on the
    device, not shipped by the loader), the crops through the model, the loss, the poly-SGD update.
    → the loss terms (detached scalars)."""
    device = options.device
    img = batch["img"].to(device, non_blocking=True).contiguous(memory_format=options.memory_format)
    quarter = batch["label"].to(device, non_blocking=True)
    labels = affinity_labels(quarter, options.path_index, options.num_classes)
    with autocast(device, options.amp_dtype):
        edge, disp = model(img)
        losses = irn_loss(edge, disp, labels["bg_pos"], labels["fg_pos"], labels["neg"], options.path_index)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


def calibration_batches(num_images: int, batch_size: int) -> list[list[int]]:
    """SPEC-IRN §7: the calibration's batches in list order, with drop_last. IRN fails (an empty stack)
    when the list is shorter than one batch; we then use all of it as one batch."""
    if num_images < batch_size:
        return [list(range(num_images))]
    return [list(range(start, start + batch_size)) for start in range(0, num_images - batch_size + 1, batch_size)]


def calibration_loader(args, source: DataSource, num_workers: int, group: ProcessGroup) -> tuple[DataLoader, int]:
    """SPEC-IRN §7: --infer_list cropped top-left, in `calibration_batches` of --irn_batch_size; this
    process's share of them, batches rank, rank + world size, ... (so no process waits long for another's).
    → (the loader of this share, the number of batches over all processes)."""
    dataset = IrnCalibrationDataset(source, load_image_list(args.infer_list), args.irn_crop_size)
    batches = calibration_batches(len(dataset), args.irn_batch_size)
    loader = DataLoader(dataset, batch_sampler=batches[group.rank :: group.world_size], num_workers=num_workers)
    return loader, len(batches)


@torch.no_grad()
def mean_displacement(
    model: nn.Module, loader: DataLoader, num_batches: int, options: StepOptions, group: ProcessGroup
) -> Tensor:
    """SPEC-IRN §7: the mean over batches of each batch's mean displacement (over N, h, w), the model in
    eval mode with its MeanShift at zero, as IRN measures it. Each process measures the batches of its
    `calibration_loader` share into their rows of one table of `num_batches` batch means, the other rows
    zero; the processes' tables summed are the one-process table, exactly, and its mean IRN's.
    → 2 values (y, x)."""
    model.eval()
    model.displacement_branch.mean_shift.running_mean.zero_()
    batch_means = torch.zeros(num_batches, 2, device=options.device)
    for row, batch in zip(range(group.rank, num_batches, group.world_size), loader, strict=True):
        img = batch["img"].to(options.device, non_blocking=True).contiguous(memory_format=options.memory_format)
        with autocast(options.device, options.amp_dtype):
            _, disp = model(img)
        batch_means[row] = disp.float().mean(dim=(0, 2, 3))
    if group.distributed:
        dist.all_reduce(batch_means)  # each row holds one process's value, x + 0 = x
    return batch_means.mean(dim=0)


def calibrate_and_save(
    args,
    model: nn.Module,
    calibration: DataLoader,
    num_batches: int,
    options: StepOptions,
    group: ProcessGroup,
    log: RunLog,
) -> None:
    """SPEC-IRN §7 after training, on every process (each its share of the batches): the displacement
    mean into the MeanShift, then IRN's weights file, written by the main process."""
    if group.distributed and args.train_backbone:  # each process's BatchNorms took their own last statistics
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)  # the saved weights' (the main process's)
    num_images = len(calibration.dataset)
    if num_images < args.irn_batch_size:
        log.line(
            f"{args.infer_list} has {num_images} images, fewer than one batch of "
            f"{args.irn_batch_size}: the displacement mean uses them all as one batch (IRN would fail)"
        )
    running_mean = mean_displacement(model, calibration, num_batches, options, group)
    model.displacement_branch.mean_shift.running_mean.copy_(running_mean)
    if group.is_main:
        save_irn_weights(model, args.irn_weights_name)
    log.line(f"displacement mean {running_mean.tolist()}; weights: {args.irn_weights_name}")


def main(argv=None) -> None:
    args = parse_args(argv)
    trainer = Trainer.start(args)
    grid = irn_label_grid(args.irn_crop_size)
    path_index = PathIndex(TRAIN_RADIUS, (grid, grid), trainer.device)

    # ---- data ----
    source = data_source(args)
    options = StepOptions(trainer.device, path_index, source.spec.num_classes, trainer.amp_dtype, trainer.memory_format)
    loader = load_data(args, source, trainer.group, trainer.device)
    # read before training, so that a bad --infer_list stops the run now, not after it
    calibration, calibration_batch_count = calibration_loader(args, source, loader.num_workers, trainer.group)

    # ---- model and optimiser: poly SGD over the two heads, the backbone frozen (SPEC-IRN §7) or not ----
    model = build_model(args, trainer.group)
    optimizer = PolyOptimizer(
        irn_param_groups(model, args.irn_learning_rate, args.irn_weight_decay),
        lr=args.irn_learning_rate,
        weight_decay=args.irn_weight_decay,
        max_step=loader.sampler.batches_per_epoch * args.irn_num_epoches,
        momentum=momentum_of(args),
    )

    # ---- loop, then the MeanShift calibration by every process and the save by the main one ----
    # Only the heads (and a backbone that trains) require gradients, so DDP averages theirs; the loss uses them all.
    trainer.run(
        loader,
        args.irn_num_epoches,
        model,
        optimizer,
        train_step,
        options,
        notes=[f"crop {args.irn_crop_size}", source.spec.title],
        after_training=lambda log: calibrate_and_save(
            args, model, calibration, calibration_batch_count, options, trainer.group, log
        ),
    )


if __name__ == "__main__":
    run_main(main)
