"""Train DeepLab-v1 on ResNet-38 (SPEC_SEG §1–3) on the pseudo masks of make_sem_seg_labels.py: crops of
train_aug and their masks → BatchNorm statistics per group of 5 images → cross-entropy → poly-SGD step.

One GPU:   python train_seg.py --voc12_root VOC2012 --sem_seg_out_dir sem_seg \
               --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth
Several:   torchrun --nproc_per_node=2 train_seg.py ... (--batch_size stays the batch of one step, split over the
           processes; with 2 processes each is one BatchNorm group of 5, as the reference's 2 GPUs were)
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from engine.datasets import DatasetSpec, add_dataset_arguments, data_source, fill_list_defaults
from engine.errors import and_more, run_main
from engine.manifest import InputManifest
from engine.runtime import ProcessGroup, autocast
from engine.training import (
    RunLog,
    Trainer,
    add_training_arguments,
    sampler_over_processes,
    save_weights,
    training_loader,
)
from network import add_width_argument, build_network
from network.weights import load_weights
from tool.constants import SEG_CROP_SIZE
from tool.optim import PolyOptimizer
from tool.seg import (
    SEG_BATCH_SIZE,
    SEG_BN_GROUP,
    SEG_LR,
    SEG_MOMENTUM,
    SEG_STEPS,
    SEG_WEIGHT_DECAY,
    forward_in_bn_groups,
    parameters_left_out,
    seg_loss,
    seg_optimizer,
    valid_pixel_count,
)
from voc12.data import load_image_list
from voc12.seg_data import PSEUDO_LABELS, SEG_SCALE_RANGE, SegTrainDataset

NETWORK = "network.resnet38_deeplab"
CPU = torch.device("cpu")


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference's recipe (SPEC_SEG §2, config.py), with its defaults.
    add_dataset_arguments(parser)  # --dataset, --data_root and --voc12_root
    parser.add_argument(
        "--sem_seg_out_dir", required=True, help="the pseudo-label PNGs of make_sem_seg_labels.py (SPEC-IRN §9)"
    )
    parser.add_argument("--batch_size", type=int, default=SEG_BATCH_SIZE, help="images per step, over all processes")
    parser.add_argument("--crop_size", type=int, default=SEG_CROP_SIZE)
    parser.add_argument(
        "--scale_range",
        type=float,
        nargs=2,
        default=SEG_SCALE_RANGE,
        metavar=("LOW", "HIGH"),
        help="range of the random rescale before cropping (SPEC_SEG §2 step 3; HSV ±10 and flip 0.5 are fixed)",
    )
    parser.add_argument("--num_iters", type=int, default=SEG_STEPS, help="the poly schedule's length in steps")
    parser.add_argument("--lr", type=float, default=SEG_LR)
    parser.add_argument("--weight_decay", type=float, default=SEG_WEIGHT_DECAY)
    parser.add_argument(
        "--bn_group",
        type=int,
        default=SEG_BN_GROUP,
        help="images per BatchNorm statistics group; running statistics from the first group (SPEC_SEG §3)",
    )
    add_width_argument(parser)
    parser.add_argument(
        "--backbone_from",
        help="start the backbone from this ResNet-38 of the same width, e.g. train_cpn.py's weights (their head "
        "is ignored; DeepLab's starts from its initialisation); with --weights none. Not in the reference, which "
        "starts from ImageNet: the toy demo's start, a network that saw image labels only",
    )
    # Our shared training flags: --train_list, --weights, --momentum, --seed, --resume, ...
    add_training_arguments(
        parser,
        weights_help="ImageNet ResNet-38 (.params or .pth), a DeepLab .pth of this network, or 'none' (random)",
        momentum=SEG_MOMENTUM,
        momentum_help="SGD momentum (SPEC_SEG §2: a real 0.9, not CPN's quirk)",
        save_every=1000,
        out_dir=here / "SEG",
        session_name="deeplabv1_resnet38",
    )
    args = fill_list_defaults(parser.parse_args(argv), here, train_list="train")
    if args.bn_group < 1 or args.num_iters < 0:
        parser.error("--bn_group must be at least 1 and --num_iters not negative")
    if args.backbone_from and args.weights.lower() != "none":
        parser.error("--backbone_from gives the backbone's weights: pass --weights none with it")
    return args


def one_opencv_thread(_worker_id: int) -> None:
    """Each loader worker runs OpenCV sequentially, as PyTorch runs torch: the workers share the cores."""
    cv2.setNumThreads(0)


def load_data(args, group: ProcessGroup, device: torch.device) -> DataLoader:
    """SPEC_SEG §2's crops of the listed images and their pseudo masks, in a resumable order (drop_last). Each
    step holds the same images whatever the process count (the sampler shards one global batch)."""
    dataset = SegTrainDataset(
        data_source(args),
        load_image_list(args.train_list),
        args.sem_seg_out_dir,
        crop_size=args.crop_size,
        scale_range=tuple(args.scale_range),
        seed=args.seed,
    )
    sampler = sampler_over_processes(len(dataset), args.batch_size, "--batch_size", args.seed, group, args.train_list)
    return training_loader(dataset, sampler, args.num_workers, device, worker_init_fn=one_opencv_thread)


def build_model(args, spec: DatasetSpec, group: ProcessGroup) -> nn.Module:
    """SPEC_SEG §1's network, its backbone from --weights (the head then starts from its initialisation), in
    the reference's training mode: BN on batch statistics, dropouts on, every convolution trainable (§3)."""
    model = build_network(NETWORK, spec, args.width)
    if args.weights.lower() != "none":
        report = load_weights(model, args.weights)
        if group.is_main:
            print(report.summary())
    if args.backbone_from:
        report = load_weights(model.backbone, args.backbone_from)
        if group.is_main:
            print(report.summary())
    return model.train()


def build_optimizer(model: nn.Module, args) -> PolyOptimizer:
    """SPEC_SEG §2: SGD over the convolutions (backbone weights at lr, head weights 10·lr, cls_conv.bias 20·lr
    without weight decay), lr·(1 − t/(num_iters + 1))^0.9 set at each step."""
    return seg_optimizer(model, args.lr, args.num_iters, args.weight_decay, args.momentum)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    bn_group: int = SEG_BN_GROUP,
    *,
    device: torch.device = CPU,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    world_size: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Tensor]:
    """One SPEC_SEG §2–3 step on N×3×H×W normalised images and N×H×W int64 labels (255 ignored): the forward
    with BatchNorm statistics per `bn_group` images (running statistics from the first group), one
    cross-entropy over the batch divided by its valid pixels (under torchrun, `world_size` > 1: all processes'
    pixels), backward, the poly-SGD update. → {"loss": the detached scalar}."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    valid_pixels = valid_pixel_count(labels)
    if world_size > 1:
        dist.all_reduce(valid_pixels)  # SPEC_SEG §3: DDP's averaged gradient is then the global mean's
    with autocast(device, amp_dtype):
        logits = forward_in_bn_groups(model, images, bn_group)
    loss = seg_loss(logits, labels, valid_pixels, world_size)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.detach()}


@dataclass(frozen=True)
class StepOptions:
    """`train_step`'s settings for the training floor: the BN group, device and precision (decided once per
    script, STYLE 7) and the process count."""

    device: torch.device
    bn_group: int = SEG_BN_GROUP
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    world_size: int = 1


def train_batch(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, options: StepOptions
) -> dict[str, Tensor]:
    """`train_step` on a SegTrainDataset batch, in the training floor's step form (engine.training.Trainer.run)."""
    return train_step(
        model,
        optimizer,
        batch["img"],
        batch["label"],
        options.bn_group,
        device=options.device,
        amp_dtype=options.amp_dtype,
        memory_format=options.memory_format,
        world_size=options.world_size,
        scaler=scaler,
    )


def pseudo_label_note(folder: str, manifest: InputManifest | None) -> str:
    """The first log line's account of the pseudo masks: their folder and, from its manifest, what made them."""
    if manifest is None:
        return f"pseudo labels {folder} (no manifest)"
    return f"pseudo labels {folder} (IRNet weights {manifest.weights}, sha256 {manifest.weights_sha256[:12]}…)"


def main(argv=None) -> None:
    args = parse_args(argv)
    trainer = Trainer.start(args)
    group = trainer.group

    # ---- data: the crops and pseudo masks; the reference's epochs, cut at --num_iters (SPEC_SEG §2) ----
    loader = load_data(args, group, trainer.device)
    manifest = InputManifest.read(args.sem_seg_out_dir, PSEUDO_LABELS.hint, warn=group.is_main)
    num_epochs = args.num_iters * args.batch_size // len(loader.dataset) + 1

    # ---- model and optimiser: poly SGD over the convolutions; no group holds a BN's γ/β (SPEC_SEG §2) ----
    model = build_model(args, loader.dataset.source.spec, group)
    optimizer = build_optimizer(model, args)
    left_out = parameters_left_out(model, optimizer.param_groups)
    options = StepOptions(
        trainer.device, args.bn_group, trainer.amp_dtype, trainer.memory_format, world_size=group.world_size
    )

    # ---- loop, then the weights: the unwrapped state dict, the reference's keys ----
    def save_the_weights(log: RunLog) -> None:
        if trainer.group.is_main:
            log.line(f"weights: {save_weights(model, trainer.out_dir / f'{args.session_name}.pth')}")

    bn_images = min(args.bn_group, loader.sampler.batch_size)
    trainer.run(
        loader,
        num_epochs,
        model,
        optimizer,
        train_batch,
        options,
        total_steps=args.num_iters,
        notes=[
            loader.dataset.source.spec.title,
            f"crop {args.crop_size}",
            f"BatchNorm statistics per {bn_images} images",
            pseudo_label_note(args.sem_seg_out_dir, manifest),
            *([f"backbone from {args.backbone_from}"] if args.backbone_from else []),
            f"{len(left_out)} parameters in no SGD group, never updated (SPEC_SEG §2): {and_more(left_out, 2)}",
        ],
        inputs={
            "pseudo_labels": {
                "folder": str(Path(args.sem_seg_out_dir).resolve()),
                "manifest": manifest and asdict(manifest),
            },
            "parameters_left_out": left_out,
        },
        after_training=save_the_weights,
    )


if __name__ == "__main__":
    run_main(main)
