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
from engine.runtime import (
    ProcessGroup,
    add_runtime_arguments,
    apply_precision,
    autocast,
    init_process_group,
    memory_format_for,
    resolve_device,
)
from engine.training import (
    Checkpoints,
    ResumableSampler,
    RunLog,
    StepTimer,
    TrainState,
    distributed_model,
    resume_hint_on_interrupt,
    run_steps,
    training_loader,
    write_run_record,
)
from network import build_network
from network.resnet50_irn import LR_MULTIPLIERS
from network.weights import load_weights, save_irn_weights
from tool.irn import TRAIN_RADIUS, PathIndex, irn_loss
from tool.optim import PolyOptimizer
from voc12.data import IRN_CROP_SIZE, IrnCalibrationDataset, IrnTrainDataset, irn_label_grid, load_image_list

AFFINITY_LABELS = ("bg_pos", "fg_pos", "neg")  # SPEC-IRN §5, the fields of an IrnTrainDataset batch
TORCHVISION_WEIGHTS = "IMAGENET1K_V1"  # SPEC-IRN §1: resnet50-19c8e357.pth; IMAGENET1K_V2 are other weights


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # IRN's flags, with its defaults (SPEC-IRN §7).
    add_dataset_arguments(parser)  # --dataset, --data_root and IRN's --voc12_root
    parser.add_argument("--train_list", help=list_default_help("train"))
    parser.add_argument(
        "--infer_list",
        help="images of the MeanShift calibration after training (SPEC-IRN §7); " + list_default_help("infer"),
    )
    parser.add_argument(
        "--ir_label_out_dir", required=True, help="the confident-label PNGs of cam_to_ir_label.py (SPEC-IRN §8)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="a torchvision-layout ResNet-50 state dict (IRN's resnet50-19c8e357.pth or torchvision's "
        f"{TORCHVISION_WEIGHTS} file), 'torchvision' (torchvision's own download) or 'none' (random, for tests)",
    )
    parser.add_argument("--irn_weights_name", required=True, help="the trained weights, a file IRN loads")
    parser.add_argument("--irn_crop_size", type=int, default=IRN_CROP_SIZE)
    parser.add_argument("--irn_batch_size", type=int, default=32, help="images per step, over all processes")
    parser.add_argument("--irn_num_epoches", type=int, default=3)
    parser.add_argument("--irn_learning_rate", type=float, default=0.1)
    parser.add_argument("--irn_weight_decay", type=float, default=1e-4)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="loader workers per process (default: the cores shared among the processes)",
    )
    # Ours.
    add_runtime_arguments(parser)
    parser.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="SGD momentum; by default the weight decay, IRN's quirk (SPEC-IRN §7); 0.9 is the usual value",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for the newest one")
    parser.add_argument("--save_every", type=int, default=200, help="also checkpoint every N steps (0: per epoch only)")
    parser.add_argument("--log_every", type=int, default=20, help="write a log line every N steps")
    parser.add_argument("--out_dir", default=str(here / "IRN"), help="log, run record and checkpoints")
    parser.add_argument("--session_name", default="res50_irn")
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard scalars here")
    return fill_list_defaults(parser.parse_args(argv), here, train_list="train", infer_list="infer")


def momentum_of(args) -> float:
    """SPEC-IRN §7 quirk: IRN's PolyOptimizer hands its weight decay to SGD as the momentum (1e-4)."""
    return args.irn_weight_decay if args.momentum is None else args.momentum


def per_process_batch(args, group: ProcessGroup) -> int:
    if args.irn_batch_size % group.world_size:
        raise UserError(
            f"--irn_batch_size {args.irn_batch_size} does not split over {group.world_size} processes; "
            "use a multiple of the process count"
        )
    return args.irn_batch_size // group.world_size


def load_data(args, source: DataSource, group: ProcessGroup, device: torch.device) -> DataLoader:
    """SPEC-IRN §7 augmentation and §5 affinity labels, in a resumable order. Each step holds the same
    images whatever the process count (the sampler shards one global batch)."""
    dataset = IrnTrainDataset(
        source,
        load_image_list(args.train_list),
        args.ir_label_out_dir,
        crop_size=args.irn_crop_size,
        seed=args.seed,
    )
    sampler = ResumableSampler(len(dataset), per_process_batch(args, group), args.seed, group)
    if sampler.batches_per_epoch == 0:
        raise UserError(
            f"{args.train_list} has {len(dataset)} images, fewer than one batch of "
            f"{args.irn_batch_size}; lower --irn_batch_size"
        )
    return training_loader(dataset, sampler, args.num_workers, device)


def build_model(args, group: ProcessGroup) -> nn.Module:
    """SPEC-IRN §1–2's IRNet, its backbone from --weights; the heads start from PyTorch's initialisation."""
    model = build_network("network.resnet50_irn")
    if args.weights.lower() == "torchvision":
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
    """SPEC-IRN §7: edge head at lr, displacement head at 10·lr (`LR_MULTIPLIERS`), both with the weight decay."""
    return [
        {"params": params, "lr": LR_MULTIPLIERS[name] * lr, "weight_decay": weight_decay}
        for name, params in model.trainable_parameter_groups().items()
    ]


@dataclass(frozen=True)
class StepOptions:
    """How `train_step` runs: device and precision (decided once per script, STYLE 7) and the training
    path index (SPEC-IRN §3: radius 10 on the crop/4 grid), already on the device."""

    device: torch.device
    path_index: PathIndex
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, options: StepOptions
) -> dict[str, Tensor]:
    """One SPEC-IRN §6–7 step: the crops through the model, the loss against the affinity labels, the
    poly-SGD update. → the loss terms (detached scalars)."""
    device = options.device
    img = batch["img"].to(device, non_blocking=True).contiguous(memory_format=options.memory_format)
    labels = [batch[key].to(device, non_blocking=True).float() for key in AFFINITY_LABELS]
    with autocast(device, options.amp_dtype):
        edge, disp = model(img)
        losses = irn_loss(edge, disp, *labels, options.path_index)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


@torch.no_grad()
def mean_displacement(model: nn.Module, loader: DataLoader, options: StepOptions) -> Tensor:
    """SPEC-IRN §7: the mean over batches of each batch's mean displacement (over N, h, w), the model in
    eval mode with its MeanShift at zero, as IRN measures it. → 2 values (y, x)."""
    model.eval()
    model.displacement_branch.mean_shift.running_mean.zero_()
    batch_means = []
    for batch in loader:
        img = batch["img"].to(options.device, non_blocking=True).contiguous(memory_format=options.memory_format)
        with autocast(options.device, options.amp_dtype):
            _, disp = model(img)
        batch_means.append(disp.float().mean(dim=(0, 2, 3)))
    return torch.stack(batch_means).mean(dim=0)


def calibration_loader(args, source: DataSource, num_workers: int) -> tuple[DataLoader, bool]:
    """SPEC-IRN §7: --infer_list cropped top-left, batches of --irn_batch_size with drop_last. IRN fails
    (an empty stack) when the list is shorter than one batch; we then use all of it as one batch.
    → (loader, whether the list is shorter than a batch)."""
    dataset = IrnCalibrationDataset(source, load_image_list(args.infer_list), args.irn_crop_size)
    short = len(dataset) < args.irn_batch_size
    loader = DataLoader(dataset, batch_size=args.irn_batch_size, drop_last=not short, num_workers=num_workers)
    return loader, short


def main(argv=None) -> None:
    args = parse_args(argv)
    group = init_process_group(args.device)
    device = resolve_device(args.device, group.local_rank)
    amp_dtype, precision = apply_precision(args, device)
    torch.manual_seed(args.seed + group.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
    grid = irn_label_grid(args.irn_crop_size)
    path_index = PathIndex(TRAIN_RADIUS, (grid, grid)).to(device)
    options = StepOptions(device, path_index, amp_dtype, memory_format_for(device))
    out_dir = Path(args.out_dir)

    # ---- data ----
    source = data_source(args)
    loader = load_data(args, source, group, device)
    sampler = loader.sampler
    # read before training, so that a bad --infer_list stops the run now, not after it
    calibration, short_calibration = (None, False)
    if group.is_main:
        calibration, short_calibration = calibration_loader(args, source, loader.num_workers)

    # ---- model and optimiser: poly SGD over the two heads, the backbone frozen (SPEC-IRN §7) ----
    model = build_model(args, group)
    total_steps = sampler.batches_per_epoch * args.irn_num_epoches
    optimizer = PolyOptimizer(
        irn_param_groups(model, args.irn_learning_rate, args.irn_weight_decay),
        lr=args.irn_learning_rate,
        weight_decay=args.irn_weight_decay,
        max_step=total_steps,
        momentum=momentum_of(args),
    )
    model.to(device, memory_format=options.memory_format)

    # ---- resume ----
    checkpoints = Checkpoints(out_dir / f"{args.session_name}_checkpoints", every=args.save_every)
    resume_path = checkpoints.find(args.resume)
    state = checkpoints.load(resume_path, model, optimizer) if resume_path else TrainState()
    # Only the heads require gradients, so DDP averages theirs; every head parameter is used by the loss.
    trained = distributed_model(model, device, group)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # ---- loop ----
    log = RunLog(
        out_dir, args.session_name, enabled=group.is_main, log_every=args.log_every, tensorboard_dir=args.tensorboard
    )
    if group.is_main:
        write_run_record(out_dir / f"{args.session_name}.json", vars(args), device, group)
    log.line(
        f"{args.train_list}: {len(loader.dataset)} images, {sampler.batches_per_epoch} steps/epoch × "
        f"{args.irn_num_epoches} epochs = {total_steps} steps, batch {sampler.batch_size}×{group.world_size}, "
        f"crop {args.irn_crop_size}, {device}, {precision}, "
        f"{loader.num_workers} loader workers, {source.spec.title}"
        + (f"; resumed from {resume_path} at step {state.step}" if resume_path else "")
    )
    last_step = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    timer = StepTimer(state.step, last_step, args.irn_batch_size)
    with log, resume_hint_on_interrupt(log, state, checkpoints):
        run_steps(
            lambda batch: train_step(trained, optimizer, scaler, batch, options),
            loader,
            state,
            last_step,
            args.irn_num_epoches,
            model=model,
            optimizer=optimizer,
            group=group,
            log=log,
            checkpoints=checkpoints,
            timer=timer,
            run_args=vars(args),
        )

        # ---- MeanShift calibration and save (SPEC-IRN §7), by the main process ----
        if group.is_main:
            if short_calibration:
                log.line(
                    f"{args.infer_list} has {len(calibration.dataset)} images, fewer than one batch of "
                    f"{args.irn_batch_size}: the displacement mean uses them all as one batch (IRN would fail)"
                )
            running_mean = mean_displacement(model, calibration, options)
            model.displacement_branch.mean_shift.running_mean.copy_(running_mean)
            save_irn_weights(model, args.irn_weights_name)
            log.line(f"displacement mean {running_mean.tolist()}; weights: {args.irn_weights_name}")
    if group.distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
