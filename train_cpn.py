"""Train CPN (SPEC §3–4): data → three views → losses → poly-SGD step.

One GPU:   python train_cpn.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth
Several:   torchrun --nproc_per_node=N train_cpn.py ... (--batch_size is per process)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from network import build_network
from network.weights import load_weights
from tool.constants import CROP_SIZE, RESIZE_LONG
from tool.errors import UserError, run_main
from tool.fileio import atomic_path
from tool.losses import cpn_loss
from tool.manifest import git_commit
from tool.runtime import (
    ProcessGroup,
    add_runtime_arguments,
    autocast,
    default_num_workers,
    init_process_group,
    memory_format_for,
    precision_name,
    resolve_amp,
    resolve_device,
    set_fp32_precision,
)
from tool.torchutils import REFERENCE_MOMENTUM, PolyOptimizer, cpn_param_groups, estimate_batchnorm_statistics
from voc12.data import TrainDataset, check_voc_root, load_cls_labels, load_image_list

LOSS_NAMES = ("loss", "loss_cls", "loss_tcp", "loss_cpcr")
CHECKPOINTS_KEPT = 2


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference's flags, with its defaults (SPEC §4).
    parser.add_argument("--batch_size", type=int, default=4, help="images per step and process")
    parser.add_argument("--max_epoches", type=int, default=8)
    parser.add_argument("--network", default="network.resnet38_CPN")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help="loader workers per process (default: the cores shared among the processes)",
    )
    parser.add_argument("--wt_dec", type=float, default=5e-4)
    parser.add_argument(
        "--weights",
        required=True,
        help="ImageNet ResNet-38 (.params or .pth), a CPN .pth, or 'none' for a random start",
    )
    parser.add_argument("--train_list", default=str(here / "voc12" / "train_aug.txt"))
    parser.add_argument(
        "--val_list",
        default=str(here / "voc12" / "val.txt"),
        help="accepted for compatibility; training does not use it (neither does the reference)",
    )
    parser.add_argument("--session_name", default="resnet38_CPN")
    parser.add_argument("--crop_size", type=int, default=CROP_SIZE)
    parser.add_argument("--voc12_root", required=True, help="the VOC2012 folder (holds JPEGImages)")
    # Ours.
    add_runtime_arguments(parser)
    parser.add_argument("--cls_labels", default=str(here / "voc12" / "cls_labels.npy"))
    parser.add_argument(
        "--resize_long",
        type=int,
        nargs=2,
        default=RESIZE_LONG,
        metavar=("LOW", "HIGH"),
        help="range of the random long side before cropping (SPEC §3)",
    )
    parser.add_argument("--patch_strategy", choices=("superpixel", "grid"), default="superpixel")
    parser.add_argument("--no_tcp", action="store_true", help="ablation: drop L_tcp")
    parser.add_argument("--no_cpcr", action="store_true", help="ablation: drop L_cpcr")
    parser.add_argument("--ohem", type=float, default=0.2, help="OHEM ratio of L_cpcr (SPEC §4)")
    parser.add_argument(
        "--momentum",
        type=float,
        default=REFERENCE_MOMENTUM,
        help="SGD momentum; the default 5e-4 is the reference's quirk (SPEC §4), 0.9 is the usual value",
    )
    parser.add_argument(
        "--freeze_backbone",
        action="store_true",
        help="train the CPN head alone (fc8, f8_3, f8_4, f9, f10); not in the reference",
    )
    parser.add_argument(
        "--three_pass",
        action="store_true",
        help="run the three views as three forwards, as the reference does (slower, same result)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many steps in all")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for the newest one")
    parser.add_argument(
        "--save_every", type=int, default=1000, help="also checkpoint every N steps (0: per epoch only)"
    )
    parser.add_argument("--log_every", type=int, default=20, help="write a log line every N steps")
    parser.add_argument("--out_dir", default=str(here / "CPN"))
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write TensorBoard scalars here")
    return parser.parse_args(argv)


class ResumableSampler(Sampler):
    """Reference order (shuffle, drop_last) reproducible from (seed, epoch), sharded over the processes,
    and able to start mid-epoch. Yields (epoch, index) keys so each sample's augmentation is a pure
    function of them (voc12.data.TrainDataset)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, group: ProcessGroup):
        self.batch_size, self.seed, self.group = batch_size, seed, group
        self.batches_per_epoch = num_items // (batch_size * group.world_size)
        self.num_items = num_items
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        used = order[: self.batches_per_epoch * self.batch_size * self.group.world_size]
        mine = used[self.group.rank :: self.group.world_size]
        for index in mine[self.start_batch * self.batch_size :].tolist():
            yield (self.epoch, index)


class RunLog:
    """Console lines (rank 0 only) mirrored into <session>.log, plus optional TensorBoard scalars."""

    def __init__(self, path: Path, tensorboard_dir: str | None, enabled: bool):
        self.enabled = enabled
        self.file = None
        if enabled:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(path, "a", encoding="utf-8")
            except OSError as error:
                raise UserError(f"cannot write {path}: {error.strerror}; choose a writable --out_dir") from None
        self.board = None
        if enabled and tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.board = SummaryWriter(tensorboard_dir)

    def line(self, text: str, console: bool = True) -> None:
        if self.enabled:
            if console:
                tqdm.write(text)
            self.file.write(text + "\n")
            self.file.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


def checkpoint_dir(args) -> Path:
    return Path(args.out_dir) / f"{args.session_name}_checkpoints"


def find_checkpoint(args) -> Path | None:
    if args.resume is None:
        return None
    if args.resume != "auto":
        path = Path(args.resume)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path}; pass an existing file or --resume auto")
        return path
    candidates = sorted(checkpoint_dir(args).glob("step_*.pt"))
    return candidates[-1] if candidates else None


def save_checkpoint(args, model, optimizer, step: int, epoch: int, batch_in_epoch: int) -> Path:
    path = checkpoint_dir(args) / f"step_{step:07d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "args": vars(args),
    }
    with atomic_path(path) as tmp_path:
        torch.save(state, tmp_path)
    for old in sorted(checkpoint_dir(args).glob("step_*.pt"))[:-CHECKPOINTS_KEPT]:
        old.unlink()
    return path


def load_checkpoint(path: Path, model, optimizer) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, EOFError, OSError) as error:
        raise UserError(
            f"cannot resume from {path}: {str(error).splitlines()[0]}; "
            "delete it to fall back to the previous checkpoint"
        ) from None
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def run_record(args, device: torch.device, group: ProcessGroup) -> dict:
    return {
        "args": vars(args),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "world_size": group.world_size,
        "command": " ".join(sys.argv),
    }


def seed_worker(_worker_id: int) -> None:
    # Each loader worker runs SLIC and PIL on one core; torch threads would oversubscribe them.
    torch.set_num_threads(1)


def main(argv=None) -> None:
    args = parse_args(argv)
    group = init_process_group(args.device)
    device = resolve_device(args.device, group.local_rank)
    amp_dtype = resolve_amp(args.amp, device)
    set_fp32_precision(allow_tf32=not args.no_tf32)
    torch.manual_seed(args.seed + group.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
    memory_format = memory_format_for(device)

    # Data: SPEC §3 augmentation, then the complementary patch pair.
    check_voc_root(args.voc12_root)
    names = load_image_list(args.train_list)
    dataset = TrainDataset(
        args.voc12_root,
        names,
        load_cls_labels(args.cls_labels),
        crop_size=args.crop_size,
        resize_long=tuple(args.resize_long),
        patch_strategy=args.patch_strategy,
        seed=args.seed,
    )
    sampler = ResumableSampler(len(dataset), args.batch_size, args.seed, group)
    if sampler.batches_per_epoch == 0:
        raise UserError(
            f"{args.train_list} has {len(dataset)} images, fewer than one batch of "
            f"{args.batch_size}×{group.world_size}; lower --batch_size"
        )
    num_workers = (
        default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if args.num_workers is None
        else args.num_workers
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator(),
    )  # keep the loader off the global RNG (dropout's)

    # Model and optimiser: frozen BN and early layers (SPEC §1), poly SGD (SPEC §4).
    if args.network.rsplit(".", 1)[-1] != "resnet38_CPN":
        raise UserError(f"train_cpn.py trains network.resnet38_CPN, not {args.network!r}")
    model = build_network(args.network)
    if args.weights.lower() != "none":
        report = load_weights(model, args.weights)
        if group.is_main:
            print(report.summary())
    else:
        calibration = torch.stack([dataset.augmented_image(0, index) for index in range(min(len(dataset), 16))])
        estimate_batchnorm_statistics(model, calibration)
    if args.freeze_backbone:
        model.freeze_backbone()
    total_steps = sampler.batches_per_epoch * args.max_epoches
    optimizer = PolyOptimizer(
        cpn_param_groups(model.get_parameter_groups(), args.lr, args.wt_dec),
        lr=args.lr,
        weight_decay=args.wt_dec,
        max_step=total_steps,
        momentum=args.momentum,
    )

    model.train()
    model.to(device, memory_format=memory_format)

    start_step, start_epoch, start_batch = 0, 0, 0
    resume_path = find_checkpoint(args)
    if resume_path is not None:
        state = load_checkpoint(resume_path, model, optimizer)
        start_step, start_epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
        if start_batch >= sampler.batches_per_epoch:
            start_epoch, start_batch = start_epoch + 1, 0
    trained = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if group.distributed
        else model
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    out_dir = Path(args.out_dir)
    log = RunLog(out_dir / f"{args.session_name}.log", args.tensorboard, group.is_main)
    if group.is_main:
        with atomic_path(out_dir / f"{args.session_name}.json") as tmp_path:
            tmp_path.write_text(json.dumps(run_record(args, device, group), indent=2, default=str))
    log.line(
        f"{args.train_list}: {len(dataset)} images, {sampler.batches_per_epoch} steps/epoch × "
        f"{args.max_epoches} epochs = {total_steps} steps, batch {args.batch_size}×{group.world_size}, {device}, "
        f"{precision_name(device, amp_dtype, not args.no_tf32)}, {num_workers} loader workers"
        + (", backbone frozen" if args.freeze_backbone else "")
        + (f"; resumed from {resume_path} at step {start_step}" if resume_path else "")
    )

    last_step = total_steps if args.max_steps is None else min(total_steps, args.max_steps)
    step, last_checkpoint = start_step, resume_path
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, args.max_epoches):
            if step >= last_step:
                break
            sampler.set_epoch(epoch, start_batch)
            bar = tqdm(
                loader,
                total=sampler.batches_per_epoch,
                initial=start_batch,
                disable=not group.is_main,
                desc=f"epoch {epoch + 1}/{args.max_epoches}",
                dynamic_ncols=True,
            )
            batch_in_epoch = start_batch
            for batch in bar:
                # The three views: the image, its kept patches, its hidden patches.
                views = [
                    batch[key].to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    for key in ("img", "img_kept", "img_hidden")
                ]
                label = batch["label"].to(device, non_blocking=True)
                kept = batch["kept_fraction"].to(device, non_blocking=True)
                hidden = batch["hidden_fraction"].to(device, non_blocking=True)

                with autocast(device, amp_dtype):
                    losses = cpn_loss(
                        trained,
                        *views,
                        label,
                        kept,
                        hidden,
                        use_tcp=not args.no_tcp,
                        use_cpcr=not args.no_cpcr,
                        ohem_ratio=args.ohem,
                        batched=not args.three_pass,
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()

                step += 1
                batch_in_epoch += 1
                loss_values = torch.stack([losses[name].detach().float() for name in LOSS_NAMES])
                if group.distributed:
                    dist.all_reduce(loss_values)
                    loss_values /= group.world_size
                loss_values = dict(zip(LOSS_NAMES, loss_values.tolist()))
                if not all(math.isfinite(value) for value in loss_values.values()):
                    hint = f"resume from {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
                    raise UserError(
                        f"non-finite loss at step {step} ({loss_values}); {hint} with a lower --lr or --amp off"
                    )
                images_per_s = (
                    (step - start_step) * args.batch_size * group.world_size / (time.perf_counter() - started)
                )
                bar.set_postfix(
                    {
                        **{k: f"{v:.3f}" for k, v in loss_values.items()},
                        "lr": f"{optimizer.param_groups[0]['lr']:.2e}",
                        "img/s": f"{images_per_s:.1f}",
                    }
                )
                if step % args.log_every == 0 or step == last_step:
                    eta_s = (last_step - step) * args.batch_size * group.world_size / max(images_per_s, 1e-9)
                    log.line(
                        f"step {step}/{last_step} epoch {epoch + 1} "
                        + " ".join(f"{k} {v:.4f}" for k, v in loss_values.items())
                        + f" lr {optimizer.param_groups[0]['lr']:.3e} {images_per_s:.1f} img/s "
                        f"eta {eta_s / 60:.1f} min"
                    )
                    log.scalars({**loss_values, "lr": optimizer.param_groups[0]["lr"]}, step)
                at_epoch_end = batch_in_epoch == sampler.batches_per_epoch
                if group.is_main and (
                    at_epoch_end or step == last_step or (args.save_every and step % args.save_every == 0)
                ):
                    last_checkpoint = save_checkpoint(args, model, optimizer, step, epoch, batch_in_epoch)
                if step >= last_step:
                    break
            bar.close()
            start_batch = 0
    except KeyboardInterrupt:
        message = f"interrupted at step {step}; resume with --resume auto" + (
            f" (from {last_checkpoint})" if last_checkpoint else " (no checkpoint yet)"
        )
        log.line(message, console=False)
        raise KeyboardInterrupt(message) from None  # run_main prints it as the last line
    finally:
        log.close()

    if group.is_main:
        weights_path = out_dir / f"{args.session_name}.pth"
        with atomic_path(weights_path) as tmp_path:
            torch.save(model.state_dict(), tmp_path)
        print(f"weights: {weights_path}")
    if group.distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_main(main)
